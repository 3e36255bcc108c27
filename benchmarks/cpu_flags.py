"""XLA's CPU flags against torch: matmul GFLOP/s per flag set, fp32 and bf16, one process each.

  python -m benchmarks.cpu_flags [--repeats=3] [--out=benchmarks/results/cpu_flags.json]

XLA reads XLA_FLAGS once, when its backend starts, so every flag set runs in a child process
(`python -m benchmarks.cpu_flags --child`) that measures the square (2048^3) and decode-shaped
(16 x 896 x 4864: 16 rows through Qwen2.5-0.5B's MLP) `jnp.dot` in fp32 and bf16
(benchmarks.peaks). Each flag set runs --repeats times, interleaved, and the table keeps the
median. torch's matmul at the same shapes is measured once in the parent for comparison: on
an Intel Xeon with AMX torch's bf16 uses the AMX tiles, which XLA's CPU backend does not.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from absl import app, flags

_REPEATS = flags.DEFINE_integer("repeats", 3, "runs per flag set (interleaved; the median is kept)")
_OUT = flags.DEFINE_string("out", None, "write the results as JSON here")
_CHILD = flags.DEFINE_bool("child", False, "internal: measure under this process's XLA_FLAGS and print JSON")

# The flag sets tried: the defaults, oneDNN (matmuls and its custom call / fusion), without
# XNNPACK or YNNPACK fusions, the widest ISA, and the older (non-thunk) runtime.
FLAG_SETS = {
    "default": "",
    "onednn": "--xla_cpu_use_onednn=true",
    "onednn_custom_call": "--xla_cpu_use_onednn=true --xla_cpu_experimental_onednn_custom_call=true",
    "onednn_fusion_dot": "--xla_cpu_experimental_onednn_fusion_type=dot",
    "no_xnnpack": "--xla_cpu_use_xnnpack=false",
    "no_ynn_fusion": "--xla_cpu_experimental_ynn_fusion_type=",
    "max_isa_amx": "--xla_cpu_max_isa=AVX512_CORE_AMX",
}


def _measure_child() -> dict:
    from benchmarks import peaks

    return {f"{dtype}_{name}": peaks.xla_matmul_gflops(*shape, dtype)
            for dtype in ("float32", "bfloat16") for name, shape in peaks.HEADER_SHAPES.items()}


def _run_child(xla_flags: str) -> dict:
    env = dict(os.environ, XLA_FLAGS=xla_flags)
    out = subprocess.run([sys.executable, "-m", "benchmarks.cpu_flags", "--child"], env=env,
                         capture_output=True, text=True, timeout=600, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv):
    del argv
    if _CHILD.value:
        print(json.dumps(_measure_child()))
        return
    from benchmarks import peaks
    from corea_jax.parallel.machine import cpu_model

    runs: dict[str, list[dict]] = {name: [] for name in FLAG_SETS}
    for _ in range(_REPEATS.value):
        for name, xla_flags in FLAG_SETS.items():
            runs[name].append(_run_child(xla_flags))
    keys = list(runs["default"][0])
    table = {name: {k: statistics.median(r[k] for r in rs) for k in keys} for name, rs in runs.items()}
    torch = {f"{dtype}_{name}": peaks.torch_matmul_gflops(*shape, dtype)
             for dtype in ("float32", "bfloat16") for name, shape in peaks.HEADER_SHAPES.items()}
    print(f"cpu: {cpu_model()}; median of {_REPEATS.value} runs; GFLOP/s")
    print(f"{'':22s}" + "".join(f"{k:>18s}" for k in keys))
    for name, row in table.items():
        print(f"{'xla ' + name:22s}" + "".join(f"{row[k]:18.0f}" for k in keys))
    print(f"{'torch':22s}" + "".join(f"{(torch[k] or float('nan')):18.0f}" for k in keys))
    if _OUT.value:
        Path(_OUT.value).parent.mkdir(parents=True, exist_ok=True)
        Path(_OUT.value).write_text(json.dumps({"cpu": cpu_model(), "flag_sets": FLAG_SETS, "xla": table,
                                                "xla_runs": runs, "torch": torch}, indent=2) + "\n")


if __name__ == "__main__":
    app.run(main)
