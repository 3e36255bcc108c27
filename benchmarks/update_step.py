"""The GRPO update alone (loss + gradient + AdamW), on random weights of a real architecture: MFU.

  python -m benchmarks.update_step --architecture={qwen2.5-1.5b-instruct,HF_DIR} [--prompts=4] [--group=8]
      [--prompt_tokens=512] [--completion_tokens=2048] [--micro_batch=8] [--dtype=bfloat16]
      [--param_dtype=float32] [--remat] [--steps=3] [--alternate=true:false] [--profile=1] [--out=FILE]

What `corea_jax.rl.update.update_step` does in a training run, on a synthetic batch of the
given shape (random tokens, full-length completions, random advantages): the shared-prompt
log-prob pass, the clipped surrogate, gradient accumulation over micro-batches, global-norm
clipping and AdamW. Master weights and optimizer state in --param_dtype, matmuls in --dtype.
MFU = model FLOPs (corea_jax.rl.flops.update_flops) / step time / the measured dense matmul
peak of the device in --dtype (an 8192^3 `jnp.dot` on a GPU, 2048^3 on a CPU).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from absl import app, flags

from benchmarks import xla_trace
from benchmarks.peaks import dot_gflops

_ARCHITECTURE = flags.DEFINE_string("architecture", "qwen2.5-0.5b-instruct",
                                    "corea_jax.models.architectures name, or an HF model directory (its config.json)")
_PROMPTS = flags.DEFINE_integer("prompts", 4, "prompts (groups) per optimizer step")
_GROUP = flags.DEFINE_integer("group", 8, "completions per prompt (G)")
_PROMPT_TOKENS = flags.DEFINE_integer("prompt_tokens", 512, "prompt length")
_COMPLETION_TOKENS = flags.DEFINE_integer("completion_tokens", 2048, "completion length")
_MICRO = flags.DEFINE_integer("micro_batch", 8, "completions per micro-batch")
_DTYPE = flags.DEFINE_string("dtype", "bfloat16", "matmul dtype")
_PARAM_DTYPE = flags.DEFINE_string("param_dtype", "float32", "master weight / optimizer dtype")
_REMAT = flags.DEFINE_bool("remat", True, "rematerialise each layer in the backward pass")
_SCAN = flags.DEFINE_bool("scan_layers", True, "stacked layers run by one scan (the trainer's layout); False: a Python loop over per-layer parameters")
_FEATURE_MAJOR = flags.DEFINE_bool("feature_major", False, "[out, in] MLP and LM-head kernels, the rows minor")
_ALTERNATE = flags.DEFINE_string("alternate", None, "SCAN_LAYERS:FEATURE_MAJOR (e.g. true:false): a "
                                 "second layout of the same weights, its steps alternated with the "
                                 "first's in this process (this box's speed drifts between runs)")
_STEPS = flags.DEFINE_integer("steps", 3, "timed steps (after one compiling step)")
_PROFILE = flags.DEFINE_integer("profile", 0, "after the timed steps, trace this many more under "
                                "jax.profiler and print where they went (XLA's per-op trace, by kind)")
_TOP = flags.DEFINE_integer("top", 20, "rows of the --profile table")
_OUT = flags.DEFINE_string("out", None, "write the result as JSON here")


def synthetic_batch(config, rng):
    """One optimizer batch of micro-batches, laid out by `corea_jax.rl.batching`."""
    import numpy as np

    from corea_jax.rl import batching

    b, g, p, c = _PROMPTS.value, _GROUP.value, _PROMPT_TOKENS.value, _COMPLETION_TOKENS.value
    rows = dict(completion_tokens=rng.integers(0, config.vocab_size, (b, g, c)).astype(np.int32),
                completion_mask=np.ones((b, g, c), bool),
                advantages=rng.standard_normal((b, g)).astype(np.float32),
                sampler_logprobs=np.zeros((b, g, c), np.float32))
    prompt_tokens = rng.integers(0, config.vocab_size, (b, p)).astype(np.int32)
    (batch,) = batching.micro_batches(prompt_tokens, np.ones((b, p), bool), rows, np.ones(b, bool),
                                      num_minibatches=1, micro_batch_size=_MICRO.value,
                                      aggregation="token_mean", max_length=c)
    return batch


def main(argv):
    del argv
    if _PROFILE.value:
        xla_trace.enable()  # XLA reads its flags when the backend starts, at the first jax call below
    import jax
    import jax.numpy as jnp
    import ml_collections
    import numpy as np

    from corea_jax.models.architectures import architecture
    from corea_jax.models.config import ModelConfig
    from corea_jax.models.decoder import relayout
    from corea_jax.models.model import init_params
    from corea_jax.rl import flops, grpo
    from corea_jax.rl.config import defaults
    from corea_jax.rl.train_state import init_train_state, make_optimizer
    from corea_jax.rl.update import update_step

    if (Path(_ARCHITECTURE.value) / "config.json").is_file():  # e.g. a reproduction model's init/
        hf = json.loads((Path(_ARCHITECTURE.value) / "config.json").read_text())
        config = ModelConfig.from_hf(hf, dtype=_DTYPE.value)
    else:
        config = architecture(_ARCHITECTURE.value, dtype=_DTYPE.value)
    config = config.replace(param_dtype=_PARAM_DTYPE.value, remat=_REMAT.value, scan_layers=_SCAN.value,
                            feature_major=_FEATURE_MAJOR.value)
    optim = ml_collections.ConfigDict(defaults().optim)
    optim.learning_rate, optim.warmup_steps, optim.schedule = 1e-6, 0, "constant"
    params = init_params(config.replace(scan_layers=True, feature_major=False), jax.random.key(0))
    layouts = [(_SCAN.value, _FEATURE_MAJOR.value)]
    if _ALTERNATE.value:
        flags_ = [flag.strip().lower() for flag in _ALTERNATE.value.split(":")]
        if len(flags_) != 2 or not set(flags_) <= {"true", "false"}:
            raise app.UsageError(f"--alternate: expected SCAN_LAYERS:FEATURE_MAJOR as two of true/false "
                                 f"(e.g. true:false), found {_ALTERNATE.value!r}")
        layouts.append(tuple(flag == "true" for flag in flags_))
    configs, states = [], []
    for scan, feature_major in layouts:  # the same weights in each layout
        cfg, laid_out = relayout(config.replace(scan_layers=True, feature_major=False), params, scan, feature_major)
        configs.append(cfg)
        states.append(init_train_state(jax.tree.map(jnp.copy, laid_out), make_optimizer(optim, 1)))
    del params
    batch = jax.device_put(synthetic_batch(config, np.random.default_rng(0)))
    loss_config = grpo.LossConfig(eps_low=0.2, eps_high=0.28, on_policy=True)
    peak = dot_gflops(_DTYPE.value) * 1e9

    times = [[] for _ in layouts]
    for step in range(_STEPS.value + 1):
        for i, (cfg, layout) in enumerate(zip(configs, layouts)):
            start = time.perf_counter()
            states[i], metrics = update_step(states[i], batch, model_config=cfg, loss_config=loss_config)
            jax.block_until_ready((states[i], metrics))
            times[i].append(time.perf_counter() - start)
            print(f"step {step} (scan_layers, feature_major) = {layout}: {times[i][-1]:.3f} s  "
                  f"loss {float(metrics['loss']):.4f}", flush=True)
    b, g, p, c = _PROMPTS.value, _GROUP.value, _PROMPT_TOKENS.value, _COMPLETION_TOKENS.value
    chunk = min(g, _MICRO.value)
    model_flops = flops.update_flops(config, b * (g // chunk) * p, b * g * c, p, c)
    tokens = b * p + b * g * c
    step_times = [sum(t[1:]) / max(len(t) - 1, 1) for t in times]
    step_time = step_times[0]
    result = dict(device=str(jax.devices()[0].device_kind), jax=jax.__version__,
                  architecture=_ARCHITECTURE.value, params=config.num_params, dtype=_DTYPE.value,
                  param_dtype=_PARAM_DTYPE.value, remat=_REMAT.value, scan_layers=_SCAN.value,
                  feature_major=_FEATURE_MAJOR.value, prompts=b, group=g,
                  prompt_tokens=p, completion_tokens=c, micro_batch=_MICRO.value,
                  compile_and_first_step_s=times[0][0], step_s=step_time, step_times_s=times[0][1:],
                  tokens_per_s=tokens / step_time,
                  model_tflops=model_flops / 1e12, peak_tflops=peak / 1e12,
                  mfu=model_flops / step_time / peak)
    if _ALTERNATE.value:
        result["alternate"] = dict(scan_layers=layouts[1][0], feature_major=layouts[1][1],
                                   compile_and_first_step_s=times[1][0], step_s=step_times[1],
                                   step_times_s=times[1][1:], mfu=model_flops / step_times[1] / peak)
        result["speedup_over_alternate"] = step_times[1] / step_time
    state = states[0]
    print(json.dumps(result, indent=2))
    if _PROFILE.value:
        kinds = xla_trace.op_kinds(update_step.lower(state, batch, model_config=configs[0],
                                                     loss_config=loss_config).compile().as_text())

        def run():
            nonlocal state
            state, metrics = update_step(state, batch, model_config=configs[0], loss_config=loss_config)
            jax.block_until_ready((state, metrics))

        total, count = xla_trace.traced_times(run, kinds, _PROFILE.value)
        xla_trace.print_table(total, count, _PROFILE.value, _TOP.value)
    if _OUT.value:
        Path(_OUT.value).parent.mkdir(parents=True, exist_ok=True)
        Path(_OUT.value).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    app.run(main)
