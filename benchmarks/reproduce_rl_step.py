"""The reproduction's RL step (`python -m launch.reproduce`) by micro-batch size.

  python -m benchmarks.reproduce_rl_step --reproduce_workdir=runs/corea [--runs=rlvr,rlcc]
      [--micro_batches=16,128] [--steps=40] [--out=benchmarks/results/reproduce_rl_step.json]

Each RL run of the default config (configs/reproduce.py, its reward per `rl_runs`) trains
--steps steps from the workdir's SFT SLM on its task, once per micro-batch size, in a fresh
temporary workdir; the table gives the trainer's own per-step times (metrics.jsonl) averaged
over the steps after the fifth (the first compile). The update skips micro-batches that hold
no kept group (`corea_jax.rl.update`), so a smaller micro-batch trains only the groups whose
rewards differ; one micro-batch of all 128 rows computes the tied ones too. Both sizes make
the same updates up to float summation order.
"""

from __future__ import annotations

import json
import statistics
import tempfile
from pathlib import Path

from absl import app, flags, logging

_WORKDIR = flags.DEFINE_string("reproduce_workdir", None, "a launch.reproduce workdir (its task and slm_sft)")
_RUNS = flags.DEFINE_list("runs", ["rlvr", "rlcc"], "RL runs of configs/reproduce.py's rl_runs")
_MICRO = flags.DEFINE_list("micro_batches", ["16", "128"], "micro-batch sizes (rows) to compare")
_STEPS = flags.DEFINE_integer("steps", 40, "RL steps per measurement")
_OUT = flags.DEFINE_string("out", None, "write the result as JSON here")
flags.mark_flag_as_required("reproduce_workdir")

FIELDS = ("time_generation", "time_update", "time_step", "groups_trained")


def measure(config, run: str, micro_batch: int, workdir: Path, steps: int) -> dict:
    from corea_jax.reproduction.pipeline import rl_overrides
    from corea_jax.reproduction.toy_models import trainer_config
    from corea_jax.rl import trainer

    overrides = rl_overrides(config, run)
    overrides["total_steps"] = steps
    overrides["grpo"]["micro_batch_size"] = micro_batch
    tc = trainer_config(config, overrides, model_dir=workdir / "slm_sft" / "hf",
                        train_file=workdir / "task" / "train.jsonl")
    with tempfile.TemporaryDirectory() as out:
        trainer.train(tc, out, log=lambda _: None)
        rows = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()][5:]
    return {field: statistics.mean(r[field] for r in rows) for field in FIELDS}


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # orbax's per-save lines
    from benchmarks.peaks import machine_header
    from configs import reproduce

    config = reproduce.get_config()
    workdir = Path(_WORKDIR.value)
    header = {"cpu": machine_header()["cpu"], "steps": _STEPS.value}
    results = []
    print(f"cpu: {header['cpu']}; {_STEPS.value} steps each, means after the fifth")
    print("| run | micro-batch | generation s | update s | step s | groups trained |")
    print("|---|---|---|---|---|---|")
    for run in _RUNS.value:
        for micro in map(int, _MICRO.value):
            m = measure(config, run, micro, workdir, _STEPS.value)
            results.append(dict(run=run, micro_batch=micro, **m))
            print(f"| {run} | {micro} | {m['time_generation']:.3f} | {m['time_update']:.3f} | "
                  f"{m['time_step']:.3f} | {m['groups_trained']:.1f} |", flush=True)
    if _OUT.value:
        from corea_jax.files import write_atomic

        write_atomic(Path(_OUT.value), json.dumps(dict(header, results=results), indent=2) + "\n")


if __name__ == "__main__":
    app.run(main)
