"""Feature-major decoding: the model's forward pass with [in, out] kernels (`x @ W`) against
[out, in] kernels applied with the rows minor (`W @ x^T`, `ModelConfig.feature_major`).

  python -m benchmarks.feature_major [--architectures=smollm2-135m-instruct,qwen2.5-0.5b-instruct]
      [--rows=1,16,64] [--prefill=4x128] [--layers=4] [--rounds=5] [--out=FILE]

Random weights of each architecture cut to --layers layers (the per-layer work repeats); fp32.
"decode": one token per row as in a decode step (no cache: the attention is the same in both
layouts), the LM head over the whole vocabulary. "prefill": --prefill rows x tokens of prompt,
the LM head on the last position only, as the engine prefills. The two layouts are timed in alternation for --rounds
rounds (best of 5 calls each time) and the median kept, so drift in the machine's speed hits
both. `speedup` = [in, out] time / feature-major time (> 1: feature-major is faster). The
decoding default (`models.model.decoding_feature_major`) follows what this measured on the
machines this project has.
"""

from __future__ import annotations

import json
from pathlib import Path

from absl import app, flags

from benchmarks.peaks import best_seconds, format_header, machine_header

_ARCHITECTURES = flags.DEFINE_list("architectures", ["smollm2-135m-instruct", "qwen2.5-0.5b-instruct"],
                                   "corea_jax.models.architectures names")
_ROWS = flags.DEFINE_list("rows", ["1", "16", "64"], "decode rows per call")
_PREFILL = flags.DEFINE_string("prefill", "4x128", "prefill shape, rows x tokens ('' to skip)")
_LAYERS = flags.DEFINE_integer("layers", 4, "layers kept of each architecture")
_ROUNDS = flags.DEFINE_integer("rounds", 5, "alternating rounds (the median is kept)")
_OUT = flags.DEFINE_string("out", None, "write the results as JSON here")


def main(argv):
    del argv
    import jax
    import jax.numpy as jnp
    import numpy as np

    from corea_jax.models.architectures import architecture
    from corea_jax.models.decoder import Decoder, relayout
    from corea_jax.models.model import init_params

    header = machine_header()
    print(format_header(header), flush=True)
    results = []
    for name in _ARCHITECTURES.value:
        base = architecture(name, dtype="float32").replace(num_layers=_LAYERS.value, scan_layers=False)
        params = init_params(base, jax.random.key(0))
        layouts = {False: (base, params)}
        layouts[True] = relayout(base, params, scan_layers=False, feature_major=True)
        shapes = [("decode", rows, 1) for rows in map(int, _ROWS.value)]
        if _PREFILL.value:
            rows, length = map(int, _PREFILL.value.split("x"))
            shapes.append(("prefill", rows, length))
        for kind, rows, length in shapes:
            tokens = jnp.asarray(np.random.default_rng(0).integers(0, base.vocab_size, (rows, length)),
                                 jnp.int32)
            positions = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), tokens.shape)
            mask = jnp.ones(tokens.shape, bool)
            calls = {}
            for fm, (cfg, p) in layouts.items():
                fn = jax.jit(lambda p, t, cfg=cfg: Decoder(cfg).apply(
                    {"params": p}, t, positions, mask, last_only=True)[0])
                calls[fm] = (fn, p)
            first = {fm: np.asarray(fn(p, tokens)) for fm, (fn, p) in calls.items()}
            times = {fm: [] for fm in calls}
            for _ in range(_ROUNDS.value):
                for fm, (fn, p) in calls.items():
                    times[fm].append(best_seconds(lambda fn=fn, p=p: fn(p, tokens), repeats=5))
            row = dict(architecture=name, layers=_LAYERS.value, kind=kind, rows=rows, tokens=length,
                       in_out_ms=float(np.median(times[False])) * 1e3,
                       feature_major_ms=float(np.median(times[True])) * 1e3,
                       max_abs_logit_difference=float(np.abs(first[True] - first[False]).max()))
            row["speedup"] = row["in_out_ms"] / row["feature_major_ms"]
            results.append(row)
            print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}),
                  flush=True)
    if _OUT.value:
        Path(_OUT.value).parent.mkdir(parents=True, exist_ok=True)
        Path(_OUT.value).write_text(json.dumps(dict(machine=header, results=results), indent=2))


if __name__ == "__main__":
    app.run(main)
