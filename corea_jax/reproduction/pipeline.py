"""COREA end to end, as cached stages in one workdir (`python -m launch.reproduce`).

  run(config, workdir)

Stages, each a directory of the workdir (corea_jax.reproduction.stages caches them):

  task        train / calibration / test .jsonl of the chain task (corea_jax.data.chains)
  tokenizer   byte-level BPE trained on the task's text, a transformers tokenizer dir
  slm_init, llm_init   random-init Qwen2 decoders at the config's sizes, HF dirs
  slm_sft, llm_sft     the trainer's SFT from those (targets end in \\boxed{} and an
                       uninformative, mostly high Confidence line); trained model in hf/
                       (by default the shipped base models are copied here instead, and
                       tokenizer / *_init are skipped: corea_jax.reproduction.base_models)
  slm_rlvr, slm_rlcc, slm_brier   GRPO from the SFT SLM with the rlvr / rlcc_l1 /
                       rlcc_brier rewards, the same steps and seed
  llm_answers the LLM answers the calibration and test splits (cascade records)
  cascade_sft, cascade_rlvr, cascade_rlcc, cascade_brier   each SLM answers both splits
                       greedily and the cascade package scores it against the LLM's records
  sampled_sft, sampled_rlvr, sampled_rlcc, sampled_brier   the same with config.cascade.samples
                       answers per question at the RL temperature (absent with samples = 0);
                       the report and its claims use them, the greedy numbers alongside
  report      report.md, report.json and the PNGs, in the workdir itself (not cached: a
              pure function of the stages, written in a second)
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

from tqdm.auto import tqdm

from corea_jax.data import chains, tokenizer_training, Record
from corea_jax.parallel import cpu_model
from corea_jax.reproduction import base_models, cascade_stages, toy_models as models_lib, report as report_lib
from corea_jax.reproduction.stages import Stage, plain, read_marker, run_stage


def build_task(config, out: Path) -> None:
    t = config.task
    splits = chains.make_splits({s: t[s] for s in chains.SPLITS}, config.base_seed, max_ops=t.max_ops,
                                max_digits=t.max_digits, digit_shares=t.get("digit_shares"),
                                random_names=t.get("random_names", False), heldout_share=t.get("heldout_share", 0.0))
    for split, problems in splits.items():
        chains.write_jsonl(problems, out / f"{split}.jsonl")


def read_split(task_dir: Path, split: str) -> list[dict]:
    """The rows of one split's .jsonl (id, question, answer, num_ops, digits)."""
    with (task_dir / f"{split}.jsonl").open() as f:
        return [json.loads(line) for line in f]


def build_tokenizer(config, task_dir: Path, out: Path) -> None:
    """Trained on what the models read and write: the chat roles, the questions and the SFT
    targets (worked solution, boxed answer, confidence line)."""
    from corea_jax.rl import sft_target_text

    rows = read_split(task_dir, "train")
    texts = ["system", "user", "assistant"] + [r["question"] for r in rows]
    texts += [sft_target_text(Record(r["question"], r["answer"]), "gsm8k", 0.9) for r in rows]
    tokenizer_training.train_tokenizer(texts, out, vocab_size=config.tokenizer.vocab_size)


def _progress(total: int, desc: str) -> tuple[Callable[[int, dict], None], tqdm]:
    """A trainer `on_step` that moves a tqdm bar to each finished step, its metrics beside it."""
    bar = tqdm(total=total, desc=desc, unit="step", dynamic_ncols=True)

    def on_step(step: int, metrics: dict) -> None:
        bar.n = step
        shown = [f"{k}={metrics[k]:.3g}" for k in ("loss", "reward_mean", "accuracy", "ece") if k in metrics]
        bar.set_postfix_str(", ".join(shown), refresh=False)
        bar.refresh()

    return on_step, bar


def train_stage(workdir: Path, name: str, config, overrides: dict, *, model_dir: Path, task_dir: Path,
                inputs: dict, seed: int, log: Callable[[str], None], digit_shares=None,
                shares_field: str = "digit_shares") -> Stage:
    """A trainer run (`corea_jax.rl.trainer.train`) as a stage; its model is `<stage>/hf`. With
    `digit_shares` it trains on the subset of the task's train split with that mix of operand
    lengths (`chains.subset_by_digits`, written to `<stage>/train.jsonl`)."""
    from corea_jax.rl import trainer

    def build(out: Path) -> None:
        train_file = task_dir / "train.jsonl"
        if digit_shares is not None:
            rows = chains.subset_by_digits(read_split(task_dir, "train"), digit_shares, shares_field)
            train_file = out / "train.jsonl"  # in the stage's partial directory: atomic with it
            train_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
        tc = models_lib.trainer_config(config, overrides, model_dir=model_dir, train_file=train_file, seed=seed)
        on_step, bar = _progress(tc.total_steps, name)
        def log(message: str) -> None:  # the trainer's other lines (resume, the model) above the bar
            if not message.startswith("step "):  # each step is on the bar already
                tqdm.write(message)

        try:
            trainer.train(tc, out, log=log, on_step=on_step)
        finally:
            bar.close()

    if digit_shares is not None:
        inputs = dict(inputs, digit_shares=list(digit_shares))
    return run_stage(workdir, name, dict(inputs, overrides=plain(overrides)), build, log=log)


def _sft_stages(config, workdir: Path, role: str, stages: dict[str, Stage], log) -> dict[str, Stage]:
    """<role>_init (random weights) and <role>_sft (the trainer's SFT from them)."""
    arch = config[role]
    init = run_stage(workdir, f"{role}_init",
                     {"tokenizer": stages["tokenizer"].key, "arch": plain(arch), "seed": config.base_seed},
                     lambda out: models_lib.init_model_dir(arch, stages["tokenizer"].path, out, config.base_seed),
                     log=log)
    overrides = dict(plain(config.sft), total_steps=config[f"{role}_sft_steps"])
    overrides["optim"] = dict(overrides.get("optim", {}), learning_rate=config[f"{role}_sft_learning_rate"])
    overrides["sft"] = dict(overrides.get("sft", {}), confidence_choices=list(config[f"{role}_sft_confidences"]))
    batch = config[f"{role}_sft_batch"]
    overrides["rollout"] = dict(overrides.get("rollout", {}), prompts_per_step=batch)
    overrides["grpo"] = dict(overrides.get("grpo", {}), micro_batch_size=batch)
    sft = train_stage(workdir, f"{role}_sft", config, overrides, model_dir=init.path,
                      task_dir=stages["task"].path,
                      inputs={"init": init.key, "task": stages["task"].key, "seed": config.base_seed},
                      seed=config.base_seed, log=log, digit_shares=config.get(f"{role}_sft_digit_shares"),
                      shares_field=f"config.{role}_sft_digit_shares")
    return {f"{role}_init": init, f"{role}_sft": sft}


def _shipped_stages(config, workdir: Path, log) -> dict[str, Stage]:
    """slm_sft and llm_sft as copies of the shipped base models (their recipe checked first)."""
    manifest = base_models.load_manifest()
    base_models.check_recipe(config, manifest)
    key = {"shipped": {role: manifest["files"][f"{role}/model.safetensors"] for role in base_models.ROLES}}
    return {f"{role}_sft": run_stage(workdir, f"{role}_sft", dict(key, role=role),
                                     lambda out, role=role: base_models.install(role, out), log=log)
            for role in base_models.ROLES}


def rl_overrides(config, run: str) -> dict:
    """The trainer fields of RL run `run` (a key of config.rl_runs): config.rl with the run's
    reward, a preset's name or {preset, <weight>: value} (rl.config's reward fields; a weight
    left None keeps the preset's and stays out of the stage's inputs)."""
    overrides, reward = plain(config.rl), config.rl_runs[run]
    reward = {"preset": reward} if isinstance(reward, str) else {
        k: v for k, v in plain(reward).items() if v is not None}
    overrides["reward"] = dict(overrides.get("reward", {}), **reward)
    return overrides


def train_models(config, workdir: Path, *, log: Callable[[str], None] = print) -> dict[str, Stage]:
    """Stages task .. slm_brier; returns every stage by name. The base models (slm_sft,
    llm_sft) are the shipped ones unless config.from_scratch; the RL runs use config.seed."""
    stages: dict[str, Stage] = {}
    stages["task"] = run_stage(workdir, "task", {"seed": config.base_seed, "task": plain(config.task)},
                               lambda out: build_task(config, out), log=log)
    task_dir = stages["task"].path
    if config.from_scratch:
        stages["tokenizer"] = run_stage(
            workdir, "tokenizer", {"task": stages["task"].key, "tokenizer": plain(config.tokenizer)},
            lambda out: build_tokenizer(config, task_dir, out), log=log)
        for role in base_models.ROLES:
            stages.update(_sft_stages(config, workdir, role, stages, log))
    else:
        stages.update(_shipped_stages(config, workdir, log))
    sft = stages["slm_sft"]
    for run in config.rl_runs:
        stages[f"slm_{run}"] = train_stage(
            workdir, f"slm_{run}", config, rl_overrides(config, run), model_dir=sft.path / "hf", task_dir=task_dir,
            inputs={"sft": sft.key, "task": stages["task"].key, "seed": config.seed}, seed=config.seed, log=log)
    return stages


def evaluate_models(config, workdir: Path, stages: dict[str, Stage], *,
                    log: Callable[[str], None] = print) -> dict[str, Stage]:
    """Stages llm_answers, cascade_<run> and (config.cascade.samples > 0) sampled_<run> for
    every SLM (SFT and the RL runs)."""
    task_dir, llm_dir = stages["task"].path, stages["llm_sft"].path / "hf"
    # cascade.samples is the sampled stages' input only (the greedy ones keep their keys)
    cascade_fields = {k: v for k, v in plain(config.cascade).items() if k != "samples"}
    cascade_inputs = {"task": stages["task"].key, "cascade": cascade_fields, "seed": config.seed,
                      "prompt": config.task.prompt, "max_new_tokens": config.task.max_new_tokens}
    slms = {"sft": stages["slm_sft"], **{run: stages[f"slm_{run}"] for run in config.rl_runs}}
    out: dict[str, Stage] = {}

    def cfg(slm_dir: Path):
        return cascade_stages.cascade_config(config, task_dir=task_dir, slm_dir=slm_dir, llm_dir=llm_dir)

    # The LLM's answers depend on how it is asked, not on thresholds or the bootstrap.
    answer_inputs = dict(cascade_inputs, cascade={k: config.cascade[k] for k in ("batch_size", "cost_model")})
    out["llm_answers"] = run_stage(
        workdir, "llm_answers", dict(answer_inputs, llm=stages["llm_sft"].key),
        lambda d: cascade_stages.answer_llm(cfg(slms["sft"].path / "hf"), d), log=log)
    for run, slm in slms.items():
        out[f"cascade_{run}"] = run_stage(
            workdir, f"cascade_{run}", dict(cascade_inputs, slm=slm.key, llm=out["llm_answers"].key),
            lambda d, slm=slm: cascade_stages.run_cascade(
                cfg(slm.path / "hf"), out["llm_answers"].path / cascade_stages.RECORDS, d), log=log)
    samples = config.cascade.get("samples", 0)
    if samples:
        temperature = config.rl.rollout.temperature  # the RL runs' (RLCC calibrates its rollouts)
        for run, slm in slms.items():
            def build(d: Path, slm=slm) -> None:
                sizes = cascade_stages.sampled_splits(task_dir, samples, d)
                cascade_stages.run_sampled_cascade(
                    cascade_stages.cascade_config(config, task_dir=d, slm_dir=slm.path / "hf", llm_dir=llm_dir),
                    out["llm_answers"].path / cascade_stages.RECORDS, sizes, samples=samples,
                    temperature=temperature, seed=config.seed, out=d)

            out[f"sampled_{run}"] = run_stage(
                workdir, f"sampled_{run}", dict(cascade_inputs, slm=slm.key, llm=out["llm_answers"].key,
                                                samples=samples, temperature=temperature), build, log=log)
    return out


def write_report(config, workdir: Path, stages: dict[str, Stage]) -> dict:
    """report.json / report.md / PNGs in the workdir, from the stages' outputs."""
    runs = ["sft", *config.rl_runs]
    runtime = sum(stage.seconds for stage in stages.values())
    curves = {label: report_lib.read_jsonl(stages[f"slm_{run}"].path / "metrics.jsonl")
              for run, label in (("rlvr", "RLVR"), ("rlcc", "RLCC-L1"), ("brier", "RLCC-Brier"))
              if run in config.rl_runs}
    task_dir = stages["task"].path
    test = [f"{row['digits']}-digit" for row in read_split(task_dir, "test")]
    questions = {split: len(read_split(task_dir, split)) for split in chains.SPLITS if split != "train"}
    base = ("base models trained here" if config.from_scratch
            else "shipped base models (corea_jax/reproduction/base_models)")
    provenance = f"seed {config.seed}, base seed {config.base_seed}, {base}; CPU: {cpu_model()}"

    def protocol_inputs(prefix: str, samples: int) -> dict:
        return {"cascades": {run: json.loads((stages[f"{prefix}_{run}"].path / "report.json").read_text())
                             for run in runs},
                "records": {run: stages[f"{prefix}_{run}"].path / cascade_stages.RECORDS for run in runs},
                "groups": {f"test/{j * len(test) + i}": group for j in range(samples)
                           for i, group in enumerate(test)}}

    greedy = protocol_inputs("cascade", 1)
    samples = config.cascade.get("samples", 0)
    common = dict(runtime_s=runtime, stage_seconds={n: s.seconds for n, s in stages.items()},
                  provenance=provenance, questions=questions)
    if not samples:
        return report_lib.write_all(workdir, greedy["cascades"], curves, greedy["records"],
                                    groups=greedy["groups"], **common)
    sampled = protocol_inputs("sampled", samples)
    temperature = config.rl.rollout.temperature
    protocol = (f"sampled: each SLM answers every question {samples} times at temperature {temperature:g} "
                f"(the RL runs' rollout temperature); pass@1 is the mean accuracy over those samples, and "
                f"confidence (ECE, AUROC, Brier), thresholds and the cascade are scored on the same samples; "
                f"the LLM answers greedily")
    return report_lib.write_all(workdir, sampled["cascades"], curves, sampled["records"], groups=sampled["groups"],
                                protocol=protocol, protocol_short=f"{samples} samples at T = {temperature:g}",
                                greedy=greedy, **common)


def export_base_models(config, workdir: str | Path, dest: Path = base_models.SHIPPED, cpu: str = "") -> dict:
    """Writes a finished from-scratch run's SFT SLM and LLM as the shipped base models, with
    their greedy test accuracy (from the run's cascade records) in the manifest."""
    if not config.from_scratch:
        raise ValueError("config.from_scratch: expected True to export base models (these are the shipped ones)")
    workdir = Path(workdir)
    correct = {"slm": base_models.correct_bits(workdir / "cascade_sft" / cascade_stages.RECORDS, "slm"),
               "llm": base_models.correct_bits(workdir / "llm_answers" / cascade_stages.RECORDS, "llm")}
    seconds = {f"{role}_sft": read_marker(workdir / f"{role}_sft")["seconds"] for role in base_models.ROLES}
    return base_models.export(config, {role: workdir / f"{role}_sft" / "hf" for role in base_models.ROLES},
                              correct, workdir / "task", seconds, dest, cpu=cpu)


def run(config, workdir: str | Path, *, log: Callable[[str], None] = print) -> dict:
    """The whole job; returns report.json's dict. Reruns skip every stage whose inputs held."""
    samples = config.cascade.get("samples", 0)
    if not isinstance(samples, int) or samples < 0:  # refused before any stage runs
        raise ValueError(f"cascade.samples: expected an integer >= 0 (0: greedy only), found {samples!r}")
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    stages = train_models(config, workdir, log=log)
    stages.update(evaluate_models(config, workdir, stages, log=log))
    report = write_report(config, workdir, stages)
    log(f"report: {workdir / 'report.md'} (this run {time.perf_counter() - t0:.0f} s; "
        f"from an empty workdir {report['runtime_s']:.0f} s)")
    return report
