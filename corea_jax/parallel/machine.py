"""What host this is: the CPU model name (as `lscpu` prints it) and its core count, for
reports and benchmark headers (float results and speeds differ between CPU families), and
the compute dtype that runs fastest on it (`dtype="auto"`), and whether programs run on one
CPU (`one_cpu`)."""

from __future__ import annotations

import dataclasses
import functools
import os
import platform
import time


def cpu_model() -> str:
    """"Intel(R) Xeon(R) Processor, 2 cores" or "AMD EPYC 7B13, 2 cores"; the machine type
    where /proc/cpuinfo has no model name (not Linux, or an ARM host)."""
    name = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{name or platform.processor() or platform.machine()}, {os.cpu_count()} cores"


def one_cpu(mesh) -> bool:
    """Whether programs run on the CPU backend without a mesh: where the CPU-measured choices
    (decoding and training layouts, the generation schedule) apply."""
    import jax

    return mesh is None and jax.default_backend() == "cpu"



# A CPU's bf16 must beat its fp32 by this much to be picked: fp32 is also the more exact.
_CPU_BF16_MARGIN = 1.2
# The probe: one decode-shaped matmul, a Qwen2.5-0.5B MLP projection at 16 rows.
_PROBE_SHAPE = (16, 896, 4864)


@dataclasses.dataclass(frozen=True)
class DtypeChoice:
    """The compute dtype `dtype="auto"` resolves to on this host, and why (for the log)."""

    dtype: str
    reason: str


def _matmul_gflops(dtype, repeats: int = 5) -> float:
    import jax
    import jax.numpy as jnp

    m, k, n = _PROBE_SHAPE
    x = jnp.ones((m, k), dtype)
    w = jnp.ones((k, n), dtype)
    dot = jax.jit(lambda a, b: a @ b)
    dot(x, w).block_until_ready()  # compiles
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        dot(x, w).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2 * m * k * n / best / 1e9


@functools.lru_cache(maxsize=None)
def fastest_dtype() -> DtypeChoice:
    """The fastest compute dtype of the default JAX backend, decided once per process.

    GPU and TPU: bfloat16 (their matrix units run it at several times fp32). CPU: measured
    at the first call (about a second) on a decode-shaped matmul, float32 unless bfloat16 is
    at least `_CPU_BF16_MARGIN` times faster. XLA's CPU backend converts bf16 operands and
    runs them on the vector units, so on the Intel Xeon (AMX) and AMD EPYC boxes measured so
    far fp32 wins (BENCHMARKS.md, "Per CPU kind"); a CPU or an XLA whose bf16 matmul is
    faster gets bfloat16 without a code change.
    """
    import jax
    import jax.numpy as jnp

    backend = jax.default_backend()
    if backend != "cpu":
        return DtypeChoice("bfloat16", f"{backend}: bfloat16 matrix units")
    fp32, bf16 = _matmul_gflops(jnp.float32), _matmul_gflops(jnp.bfloat16)
    pick = "bfloat16" if bf16 >= _CPU_BF16_MARGIN * fp32 else "float32"
    m, k, n = _PROBE_SHAPE
    return DtypeChoice(pick, f"{cpu_model()}: {m}x{k}x{n} matmul at {fp32:.0f} GFLOP/s in float32, "
                             f"{bf16:.0f} in bfloat16")


def resolve_dtype(dtype: str) -> str:
    """`dtype` itself, or for "auto" this host's `fastest_dtype()` (logged once per process)."""
    if dtype != "auto":
        return dtype
    choice = fastest_dtype()
    _log_choice(choice)
    return choice.dtype


@functools.lru_cache(maxsize=None)
def _log_choice(choice: DtypeChoice) -> None:
    from absl import logging

    logging.info("dtype auto -> %s (%s)", choice.dtype, choice.reason)
