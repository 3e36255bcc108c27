"""Fused projections: is one wide matmul faster than the separate ones it replaces?

  python -m benchmarks.fused_projections [--architectures=smollm2-135m-instruct,qwen2.5-0.5b-instruct]
      [--rows=1,16,64,1024] [--dtype=float32] [--out=FILE]

Issue 15 asks for q/k/v fused into one matrix and gate/up into one, at load time, if
measurements show wider matmuls help. This measures exactly that choice, on the real
architectures' shapes, before anything is rewritten: for `rows` token rows (a decode batch,
or a prefill / training micro-batch of that many tokens) of the hidden state,

  qkv      x @ Wq + bq, x @ Wk + bk, x @ Wv + bv        vs  x @ [Wq|Wk|Wv] + b, split in three
  gate_up  silu(x @ Wg) * (x @ Wu)                       vs  y = x @ [Wg|Wu]; silu(y_g) * y_u

each jitted alone (the model's dtype for the matmuls), forward only ("fwd": decoding) and
forward plus the gradient with respect to the weights and x ("fwd+bwd": the update). Best of
--repeats calls; `speedup` = separate / fused time, so > 1 means fusing helps.
"""

from __future__ import annotations

import json
from pathlib import Path

from absl import app, flags

from benchmarks.peaks import best_seconds
from corea_jax.files import write_atomic

_ARCHITECTURES = flags.DEFINE_list("architectures", ["smollm2-135m-instruct", "qwen2.5-0.5b-instruct"],
                                   "corea_jax.models.architectures names")
_ROWS = flags.DEFINE_list("rows", ["1", "16", "64", "1024"], "token rows per call")
_DTYPE = flags.DEFINE_string("dtype", "float32", "matmul dtype")
_REPEATS = flags.DEFINE_integer("repeats", 20, "timed calls per case (best is kept)")
_OUT = flags.DEFINE_string("out", None, "write the results as JSON here")


def _blocks(config):
    """(name, output widths, bias?, combine) of the two blocks fusion would merge."""
    import jax

    hd = config.head_dim
    qkv = (config.num_heads * hd, config.num_kv_heads * hd, config.num_kv_heads * hd)
    return [("qkv", qkv, config.qkv_bias, lambda outs: outs),
            ("gate_up", (config.intermediate_size,) * 2, False, lambda outs: jax.nn.silu(outs[0]) * outs[1])]


def measure(config, rows: int, dtype: str, repeats: int) -> list[dict]:
    import jax
    import jax.numpy as jnp
    import numpy as np

    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((rows, config.hidden_size)), dtype)
    results = []
    for name, widths, bias, combine in _blocks(config):
        ws = [jnp.asarray(rng.standard_normal((config.hidden_size, w)) * 0.02, dtype) for w in widths]
        bs = [jnp.zeros((w,), dtype) if bias else None for w in widths]
        fused_w = jnp.concatenate(ws, axis=1)
        fused_b = jnp.concatenate(bs) if bias else None
        cuts = np.cumsum(widths)[:-1].tolist()

        def separate(x, ws, bs):
            return combine([x @ w + (b if b is not None else 0) for w, b in zip(ws, bs)])

        def fused(x, w, b):
            return combine(jnp.split(x @ w + (b if b is not None else 0), cuts, axis=-1))

        def loss(fn):
            return lambda *args: sum(jnp.sum(o.astype(jnp.float32)) for o in jax.tree.leaves(fn(*args)))

        cases = {
            "fwd": (jax.jit(separate), jax.jit(fused)),
            "fwd+bwd": (jax.jit(jax.grad(loss(separate), argnums=(0, 1))),
                        jax.jit(jax.grad(loss(fused), argnums=(0, 1)))),
        }
        for mode, (sep_fn, fused_fn) in cases.items():
            t_sep = best_seconds(sep_fn, x, ws, bs, repeats=repeats)
            t_fused = best_seconds(fused_fn, x, fused_w, fused_b, repeats=repeats)
            results.append(dict(block=name, rows=rows, mode=mode, separate_ms=t_sep * 1e3,
                                fused_ms=t_fused * 1e3, speedup=t_sep / t_fused))
    return results


def main(argv):
    del argv
    import jax

    from corea_jax.models.architectures import architecture

    out = dict(device=str(jax.devices()[0].device_kind), dtype=_DTYPE.value, results={})
    print(f"device {out['device']}, {_DTYPE.value}; speedup = separate / fused (> 1: fusing helps)")
    print(f"{'architecture':24} {'block':8} {'rows':>5} {'mode':8} {'separate ms':>12} {'fused ms':>10} {'speedup':>8}")
    for name in _ARCHITECTURES.value:
        config = architecture(name, _DTYPE.value)
        rows_out = []
        for rows in map(int, _ROWS.value):
            for r in measure(config, rows, _DTYPE.value, _REPEATS.value):
                rows_out.append(r)
                print(f"{name:24} {r['block']:8} {r['rows']:5d} {r['mode']:8} {r['separate_ms']:12.3f} "
                      f"{r['fused_ms']:10.3f} {r['speedup']:8.2f}")
        out["results"][name] = rows_out
    if _OUT.value:
        path = Path(_OUT.value)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, json.dumps(out, indent=1))


if __name__ == "__main__":
    app.run(main)
