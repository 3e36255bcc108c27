"""COREA end to end, as cached stages in one workdir (`python -m launch.reproduce`).

  run(config, workdir)

Stages, each a directory of the workdir (corea_jax.reproduction.stages caches them):

  task        train / calibration / test .jsonl of the chain task (corea_jax.data.chains)
  tokenizer   byte-level BPE trained on the task's text, a transformers tokenizer dir
  slm_init, llm_init   random-init Qwen2 decoders at the config's sizes, HF dirs
  slm_sft, llm_sft     the trainer's SFT from those (targets end in \\boxed{} and an
                       uninformative, mostly high Confidence line); trained model in hf/
  slm_rlvr, slm_rlcc, slm_brier   GRPO from the SFT SLM with the rlvr / rlcc_l1 /
                       rlcc_brier rewards, the same steps and seed
  cascade     every model answers the calibration and test splits; the cascade's report
  report      report.md, report.json and the PNGs, in the workdir itself
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

from tqdm.auto import tqdm

from corea_jax.data import chains, tokenizer_training
from corea_jax.data.records import Record
from corea_jax.reproduction import models as models_lib
from corea_jax.reproduction.stages import Stage, run_stage


def _plain(value):
    """ConfigDict / FieldReference -> JSON-able dicts and lists (the stage inputs)."""
    return json.loads(value.to_json_best_effort()) if hasattr(value, "to_json_best_effort") else value


def build_task(config, out: Path) -> None:
    t = config.task
    splits = chains.make_splits({s: t[s] for s in chains.SPLITS}, config.seed, max_ops=t.max_ops,
                                max_digits=t.max_digits)
    for split, problems in splits.items():
        chains.write_jsonl(problems, out / f"{split}.jsonl")


def read_split(task_dir: Path, split: str) -> list[dict]:
    """The rows of one split's .jsonl (id, question, answer, num_ops, digits)."""
    with (task_dir / f"{split}.jsonl").open() as f:
        return [json.loads(line) for line in f]


def build_tokenizer(config, task_dir: Path, out: Path) -> None:
    """Trained on what the models read and write: the chat roles, the questions and the SFT
    targets (worked solution, boxed answer, confidence line)."""
    from corea_jax.rl.policy import sft_target_text

    rows = read_split(task_dir, "train")
    texts = ["system", "user", "assistant"] + [r["question"] for r in rows]
    texts += [sft_target_text(Record(r["question"], r["answer"]), "gsm8k", 0.9) for r in rows]
    tokenizer_training.train_tokenizer(texts, out, vocab_size=config.tokenizer.vocab_size)


def _progress_log(total: int, desc: str) -> tuple[Callable[[str], None], tqdm]:
    """A trainer `log` that advances a tqdm bar on each "step N: ..." line."""
    bar = tqdm(total=total, desc=desc, unit="step", dynamic_ncols=True)

    def log(message: str) -> None:
        if message.startswith("step "):
            step, _, rest = message[5:].partition(":")
            bar.n = int(step)
            bar.set_postfix_str(rest.strip()[:60], refresh=False)
            bar.refresh()
        elif message.startswith("resumed from step "):
            bar.n = int(message.split()[3])
            bar.refresh()
        else:
            tqdm.write(message)

    return log, bar


def train_stage(workdir: Path, name: str, config, overrides: dict, *, model_dir: Path, task_dir: Path,
                inputs: dict, log: Callable[[str], None]) -> Stage:
    """A trainer run (`corea_jax.rl.trainer.train`) as a stage; its model is `<stage>/hf`."""
    from corea_jax.rl import trainer

    def build(out: Path) -> None:
        tc = models_lib.trainer_config(config, overrides, model_dir=model_dir,
                                       train_file=task_dir / "train.jsonl")
        step_log, bar = _progress_log(tc.total_steps, name)
        try:
            trainer.train(tc, out, log=step_log)
        finally:
            bar.close()

    return run_stage(workdir, name, dict(inputs, overrides=_plain(overrides)), build, log=log)


def train_models(config, workdir: Path, *, log: Callable[[str], None] = print) -> dict[str, Stage]:
    """Stages task .. slm_brier; returns every stage by name."""
    stages: dict[str, Stage] = {}
    stages["task"] = run_stage(workdir, "task", {"seed": config.seed, "task": _plain(config.task)},
                               lambda out: build_task(config, out), log=log)
    task_dir = stages["task"].path
    stages["tokenizer"] = run_stage(
        workdir, "tokenizer", {"task": stages["task"].key, "tokenizer": _plain(config.tokenizer)},
        lambda out: build_tokenizer(config, task_dir, out), log=log)
    for role in ("slm", "llm"):
        arch = config[role]
        init = run_stage(workdir, f"{role}_init",
                         {"tokenizer": stages["tokenizer"].key, "arch": _plain(arch), "seed": config.seed},
                         lambda out, arch=arch: models_lib.init_model_dir(
                             arch, stages["tokenizer"].path, out, config.seed), log=log)
        stages[f"{role}_init"] = init
        overrides = dict(_plain(config.sft), total_steps=config[f"{role}_sft_steps"])
        stages[f"{role}_sft"] = train_stage(
            workdir, f"{role}_sft", config, overrides, model_dir=init.path, task_dir=task_dir,
            inputs={"init": init.key, "task": stages["task"].key, "seed": config.seed}, log=log)
    sft = stages["slm_sft"]
    for run, preset in config.rl_runs.items():
        overrides = _plain(config.rl)
        overrides["reward"] = dict(overrides.get("reward", {}), preset=preset)
        stages[f"slm_{run}"] = train_stage(
            workdir, f"slm_{run}", config, overrides, model_dir=sft.path / "hf", task_dir=task_dir,
            inputs={"sft": sft.key, "task": stages["task"].key, "seed": config.seed}, log=log)
    return stages


def run(config, workdir: str | Path, *, log: Callable[[str], None] = print) -> dict:
    """The whole job; returns report.json's dict. Reruns skip every stage whose inputs held."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    stages = train_models(config, workdir, log=log)
    log(f"trained in {time.perf_counter() - t0:.0f} s: " + ", ".join(stages))
    return {"stages": {name: str(stage.path) for name, stage in stages.items()}}
