"""Where one decode step's time goes: XLA's own per-op trace, grouped by what each op computes.

  python -m benchmarks.decode_profile [--architecture=qwen2.5-0.5b-instruct] [--batch=32]
      [--cache_length=256] [--dtype=float32] [--scan_layers=false] [--feature_major] [--sample]

Random weights of a corea_jax.models.architectures shape (the time does not depend on the
values). One decode step is `Decoder.apply` on one new token per row with a KV cache of
--cache_length slots, half of them filled, the cache donated as in the engine's loop, plus the
engine's greedy choice (with --sample, its draw at temperature 1) and log-prob. The step runs
--steps times under `jax.profiler` (`benchmarks.xla_trace`: XLA's CPU thunks, their durations
summed per kind: matmuls by output shape, copies, fusions by name; summed over XLA's worker
threads, so independent ops that ran side by side add up to more than the step's wall time,
printed first).
"""

from __future__ import annotations

import time

from absl import app, flags

from benchmarks import xla_trace

_ARCHITECTURE = flags.DEFINE_string("architecture", "qwen2.5-0.5b-instruct", "model shapes")
_BATCH = flags.DEFINE_integer("batch", 32, "rows")
_CACHE_LENGTH = flags.DEFINE_integer("cache_length", 256, "KV-cache slots per row")
_DTYPE = flags.DEFINE_string("dtype", "float32", "parameter and compute dtype")
_SCAN_LAYERS = flags.DEFINE_bool("scan_layers", False, "stacked layers run by one scan")
_FEATURE_MAJOR = flags.DEFINE_bool("feature_major", None, "[out, in] MLP and LM-head kernels, the rows "
                                   "minor (default: the decoding layout, `decoding_feature_major`)")
_SAMPLE = flags.DEFINE_bool("sample", False, "draw each token at temperature 1 (the engine's "
                             "`sampling.categorical`, as a GRPO rollout does) instead of greedily")
_STEPS = flags.DEFINE_integer("steps", 3, "profiled steps")
_TOP = flags.DEFINE_integer("top", 15, "rows of the table")


def main(argv):
    del argv
    import jax
    import jax.numpy as jnp
    import numpy as np

    from corea_jax.generation import sampling
    from corea_jax.models.architectures import architecture
    from corea_jax.models.decoder import Decoder, init_cache
    from corea_jax.models.model import decoding_feature_major, init_params

    cfg = architecture(_ARCHITECTURE.value, dtype=_DTYPE.value).replace(scan_layers=_SCAN_LAYERS.value)
    fm = _FEATURE_MAJOR.value
    cfg = cfg.replace(feature_major=decoding_feature_major(cfg, None) if fm is None else fm)
    b, s = _BATCH.value, _CACHE_LENGTH.value
    params = init_params(cfg, jax.random.key(0))
    cache = init_cache(cfg, b, s)
    cache = cache.replace(valid=cache.valid.at[:, : s // 2].set(True), index=jnp.int32(s // 2))
    decoder = Decoder(cfg)
    keys = jax.random.split(jax.random.key(0), b)

    def step(params, cache, tokens):
        logits, cache = decoder.apply({"params": params}, tokens, jnp.full_like(tokens, s // 2),
                                      jnp.ones(tokens.shape, bool), cache)
        token = sampling.categorical(keys, logits[:, 0]) if _SAMPLE.value else sampling.greedy(logits[:, 0])
        logprob = jnp.take_along_axis(jax.nn.log_softmax(logits[:, 0]), token[:, None], axis=-1)
        # Rewind the write slot: every profiled step attends over the same number of slots.
        return token[:, None], logprob, cache.replace(index=cache.index - 1)

    step = jax.jit(step, donate_argnums=(1,))
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, cfg.vocab_size, (b, 1)), jnp.int32)
    kinds = xla_trace.op_kinds(step.lower(params, cache, tokens).compile().as_text())
    for _ in range(2):
        tokens, _, cache = jax.block_until_ready(step(params, cache, tokens))
    wall = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        tokens, _, cache = jax.block_until_ready(step(params, cache, tokens))
        wall = min(wall, time.perf_counter() - start)

    def run():
        nonlocal tokens, cache
        tokens, _, cache = jax.block_until_ready(step(params, cache, tokens))

    total, count = xla_trace.traced_times(run, kinds, _STEPS.value)
    steps = _STEPS.value
    print(f"{_ARCHITECTURE.value} {cfg.dtype} batch {b}, cache {s} slots, "
          f"scan_layers={cfg.scan_layers}, feature_major={cfg.feature_major}, "
          f"{'sampled' if _SAMPLE.value else 'greedy'}: decode step {wall * 1e3:.1f} ms (best of 3)")
    xla_trace.print_table(total, count, steps, _TOP.value)


if __name__ == "__main__":
    xla_trace.enable()
    app.run(main)
