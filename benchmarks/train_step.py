"""One GRPO step (rollout + update) on SmolLM2-135M-Instruct on CPU: corea_jax vs TRL's GRPOTrainer.

  python -m benchmarks.train_step [--prompts=8] [--group=8] [--new_tokens=128] [--steps=3]
                                  [--trl_steps=2] [--skip_trl] [--out=benchmarks/results/train_step.json]

Same model (fp32), the same prompts (the first GSM8K train questions whose chat-templated
prompt fits --max_prompt tokens, bare question as the user turn), G completions per prompt,
temperature 1, every completion forced to --new_tokens tokens (corea_jax: ignore_eos; TRL:
min_new_tokens), the same RLCC reward on both sides, one AdamW step over all prompts x G
completions in micro-batches of --micro_batch, no KL, no gradient checkpointing. TRL runs
first, in a child process. corea_jax's first step compiles; the table reports the mean of
the later ones (TRL's too: its first step warms up).

MFU: model FLOPs (corea_jax.rl.flops: the matmul FLOPs the step needs, prompt once per
group in the update, logits only where needed) over the measured fp32 `jnp.dot` peak
(2048^2, measured at start). TRL is a benchmark-only dependency.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from pathlib import Path

from absl import app, flags

from benchmarks.peaks import format_header, machine_header

_MODEL = flags.DEFINE_string("model", "smollm2-135m-instruct", "fetch registry name")
_PROMPTS = flags.DEFINE_integer("prompts", 8, "prompts per step")
_GROUP = flags.DEFINE_integer("group", 8, "completions per prompt (G)")
_NEW_TOKENS = flags.DEFINE_integer("new_tokens", 128, "completion length (forced)")
_MAX_PROMPT = flags.DEFINE_integer("max_prompt", 128, "longest prompt, tokens")
_MICRO = flags.DEFINE_integer("micro_batch", 16, "corea_jax completions per micro-batch")
_STEPS = flags.DEFINE_integer("steps", 3, "corea_jax steps (the first compiles)")
_TRL_STEPS = flags.DEFINE_integer("trl_steps", 2, "TRL steps")
_SKIP_TRL = flags.DEFINE_bool("skip_trl", False, "measure corea_jax only")
_TRL_OUT = flags.DEFINE_string("trl_out", None, "internal: run TRL only, write its timings here")
_OUT = flags.DEFINE_string("out", None, "write the results as JSON here")

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
TIMING = ("time_generation", "time_scoring", "time_update", "time_step")


def pick_questions(tokenizer, count: int, max_prompt: int) -> list[dict]:
    """The first GSM8K train records whose bare-question chat prompt has <= max_prompt tokens."""
    from corea_jax.generation import chat_token_ids

    out = []
    for line in (SHARED / "gsm8k" / "train.jsonl").read_text().splitlines():
        record = json.loads(line)
        if len(chat_token_ids(tokenizer, [{"role": "user", "content": record["question"]}])) <= max_prompt:
            out.append(record)
        if len(out) == count:
            return out
    raise ValueError(f"fewer than {count} GSM8K questions fit in {max_prompt} tokens")


def corea_config(data_path: str, peak: float):
    from corea_jax.rl.config import defaults

    c = defaults()
    c.total_steps = _STEPS.value
    c.model.name = _MODEL.value
    c.data.source = data_path
    c.data.task = "gsm8k"
    c.data.prompt = "question"
    c.rollout.prompts_per_step = _PROMPTS.value
    c.rollout.group_size = _GROUP.value
    c.rollout.max_prompt_length = _MAX_PROMPT.value
    c.rollout.max_new_tokens = _NEW_TOKENS.value
    c.rollout.ignore_eos = True
    c.rollout.batch_size = _PROMPTS.value * _GROUP.value
    c.grpo.micro_batch_size = _MICRO.value
    c.grpo.filter_tied_groups = False  # train on every completion, as TRL does
    c.optim.learning_rate = 1e-6
    c.checkpoint.every_steps = 10**6
    c.log.tensorboard = False
    c.log.peak_flops = peak
    return c


def run_corea(data_path: str, peak: float) -> dict:
    from corea_jax.rl import trainer
    from corea_jax.rl.metrics_writer import read_metrics

    with tempfile.TemporaryDirectory() as workdir:
        trainer.train(corea_config(data_path, peak), workdir, log=print)
        rows = read_metrics(workdir)
    steady = rows[1:] or rows
    keys = (*TIMING, "mfu", "mfu_update", "model_tflops")
    mean = {k: sum(r[k] for r in steady) / len(steady) for k in keys}
    mean["first_step_s"] = rows[0]["time_step"]
    return mean


def run_trl(model_dir: Path, records: list[dict]) -> dict:
    import datasets
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from corea_jax import rewards

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    group, prompts = _GROUP.value, _PROMPTS.value
    reward_config = rewards.get_preset("rlcc_l1")

    def rlcc(completions, answer, **kwargs):
        texts = [c[0]["content"] if isinstance(c, list) else c for c in completions]
        groups = [texts[i:i + group] for i in range(0, len(texts), group)]
        golds = [answer[i] for i in range(0, len(texts), group)]
        return rewards.rewards_from_texts(groups, golds, "gsm8k", reward_config)["total"].ravel().tolist()

    dataset = datasets.Dataset.from_list(
        [{"prompt": [{"role": "user", "content": r["question"]}], "answer": r["answer"]} for r in records])
    config = GRPOConfig(
        output_dir=tempfile.mkdtemp(), use_cpu=True, bf16=False, fp16=False, gradient_checkpointing=False,
        optim="adamw_torch", learning_rate=1e-6, lr_scheduler_type="constant", max_grad_norm=1.0,
        # Micro-batches of --micro_batch completions, accumulated into one optimizer step over
        # all of them, as corea_jax does (a 64-row batch without checkpointing needs > 24 GB).
        per_device_train_batch_size=_MICRO.value, gradient_accumulation_steps=prompts * group // _MICRO.value,
        num_generations=group, generation_batch_size=prompts * group,
        num_iterations=1, max_completion_length=_NEW_TOKENS.value, temperature=1.0, beta=0.0,
        loss_type="dapo", epsilon=0.2, epsilon_high=0.28,
        generation_kwargs={"min_new_tokens": _NEW_TOKENS.value},
        max_steps=_TRL_STEPS.value, logging_steps=1, report_to="none", save_strategy="no",
        dataloader_num_workers=0, seed=0)

    times = []

    class Timer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            times.append(time.perf_counter() - self.start)

    trainer = GRPOTrainer(model=model, reward_funcs=rlcc, args=config, train_dataset=dataset,
                          processing_class=tokenizer, callbacks=[Timer()])
    start = time.perf_counter()
    trainer.train()
    total = time.perf_counter() - start
    steady = times[1:] or times
    return {"time_step": sum(steady) / len(steady), "step_times": times, "total_s": total}


def run_trl_process() -> dict:
    """TRL in a child process: its memory never adds to JAX's (together they exceed 24 GB)."""
    import subprocess
    import sys

    out = Path(tempfile.mkdtemp()) / "trl.json"
    names = ("model", "prompts", "group", "new_tokens", "max_prompt", "micro_batch", "trl_steps")
    args = [f"--{name}={flags.FLAGS[name].value}" for name in names]
    subprocess.run([sys.executable, "-m", "benchmarks.train_step", f"--trl_out={out}", *args], check=True,
                   cwd=Path(__file__).resolve().parents[1])
    return json.loads(out.read_text())


def main(argv):
    del argv
    import jax

    import corea_jax
    from corea_jax.models import fetch

    header = machine_header()
    print(format_header(header), flush=True)
    peaks = {"dot_gflops_float32": header["xla_float32_square_gflops"]}
    peak = peaks["dot_gflops_float32"] * 1e9
    model_dir = fetch.fetch_model(_MODEL.value, fetch.default_model_dir(_MODEL.value))
    tokenizer = corea_jax.load_model(model_dir).tokenizer
    records = pick_questions(tokenizer, _PROMPTS.value, _MAX_PROMPT.value)
    data_dir = Path(tempfile.mkdtemp())
    data_path = data_dir / "questions.jsonl"
    data_path.write_text("".join(json.dumps(r) + "\n" for r in records))

    if _TRL_OUT.value:  # the TRL child process
        Path(_TRL_OUT.value).write_text(json.dumps(run_trl(model_dir, records)))
        return
    trl = None if _SKIP_TRL.value else run_trl_process()
    corea = run_corea(str(data_path), peak)

    print(f"\nGRPO step: {_MODEL.value}, {_PROMPTS.value} prompts x G={_GROUP.value}, "
          f"{_NEW_TOKENS.value} new tokens each, prompts <= {_MAX_PROMPT.value} tokens, fp32, "
          f"{os.cpu_count()} CPU cores; fp32 jnp.dot peak {peaks['dot_gflops_float32']:.1f} GFLOP/s")
    print(f"{'':28s}{'corea_jax':>12s}{'TRL':>12s}")
    print(f"{'step (s)':28s}{corea['time_step']:12.1f}{(trl['time_step'] if trl else float('nan')):12.1f}")
    for key in ("time_generation", "time_scoring", "time_update"):
        print(f"{'  ' + key[5:] + ' (s)':28s}{corea[key]:12.1f}{'':>12s}")
    print(f"{'first step incl. compile (s)':28s}{corea['first_step_s']:12.1f}")
    print(f"{'MFU, update':28s}{100 * corea['mfu_update']:11.1f}%")
    print(f"{'MFU, whole step':28s}{100 * corea['mfu']:11.1f}%")
    if trl:
        print(f"speed-up corea_jax / TRL: {trl['time_step'] / corea['time_step']:.2f}x "
              f"(TRL step times {[round(t, 1) for t in trl['step_times']]})")
    if _OUT.value:
        out = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(), **peaks, **header},
               "settings": {"model": _MODEL.value, "prompts": _PROMPTS.value, "group": _GROUP.value,
                            "new_tokens": _NEW_TOKENS.value, "max_prompt": _MAX_PROMPT.value,
                            "micro_batch": _MICRO.value, "jax": jax.__version__},
               "corea_jax": corea, "trl": trl}
        Path(_OUT.value).parent.mkdir(parents=True, exist_ok=True)
        Path(_OUT.value).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    app.run(main)
