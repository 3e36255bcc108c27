"""The machine's measured peaks, shared by every benchmark (no absl flags here, so any
benchmark can import it): dense `jnp.dot` FLOP rate and memory bandwidth."""

from __future__ import annotations

import time


def best_seconds(fn, *args, repeats: int = 5, wait=None) -> float:
    """Best of `repeats` timed calls after one warm-up; `wait` blocks on the result (JAX's
    `block_until_ready` by default; a synchronous library passes `lambda x: x`)."""
    if wait is None:
        import jax

        wait = jax.block_until_ready
    wait(fn(*args))
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        wait(fn(*args))
        best = min(best, time.perf_counter() - start)
    return best


def _on_gpu() -> bool:
    import jax

    return jax.devices()[0].platform == "gpu"


def dot_gflops(dtype: str) -> float:
    """Best-of-5 GFLOP/s of an n^3 `jnp.dot` in `dtype` (n = 8192 on a GPU, else 2048)."""
    n = 8192 if _on_gpu() else 2048
    return xla_matmul_gflops(n, n, n, dtype)


def memory_gbps() -> float:
    """GB/s of a `jnp.sum` over 4 GiB on a GPU, else 1 GiB."""
    import jax
    import jax.numpy as jnp

    big = jnp.ones((1 << (30 if _on_gpu() else 28),), jnp.float32)
    return big.nbytes / best_seconds(jax.jit(jnp.sum), big) / 1e9


# (M, K, N) of the matmuls a benchmark header reports: a square one (the compute peak) and a
# decode-shaped one (16 rows through Qwen2.5-0.5B's MLP: what one decode step mostly is).
HEADER_SHAPES = {"square": (2048, 2048, 2048), "decode": (16, 896, 4864)}


def xla_matmul_gflops(m: int, k: int, n: int, dtype: str) -> float:
    """Best-of-5 GFLOP/s of a jitted [m, k] x [k, n] `jnp.dot` in `dtype`."""
    import jax
    import jax.numpy as jnp

    a, b = jnp.ones((m, k), dtype), jnp.ones((k, n), dtype)
    return 2 * m * k * n / best_seconds(jax.jit(jnp.dot), a, b, repeats=20 if m < 256 else 5) / 1e9


def torch_matmul_gflops(m: int, k: int, n: int, dtype: str) -> float | None:
    """The same for `torch.matmul` (None where torch is not installed)."""
    try:
        import torch
    except ImportError:
        return None
    a = torch.ones((m, k), dtype=getattr(torch, dtype))
    b = torch.ones((k, n), dtype=getattr(torch, dtype))
    with torch.inference_mode():
        seconds = best_seconds(torch.matmul, a, b, repeats=20 if m < 256 else 5, wait=lambda x: x)
    return 2 * m * k * n / seconds / 1e9


def machine_header() -> dict:
    """What a CPU benchmark's header names: the CPU model (`lscpu`'s model name and cores),
    XLA's and torch's measured matmul GFLOP/s in fp32 and bf16 at the square and decode shapes,
    and memory bandwidth. Speed ratios between the two libraries follow these: on AMD EPYC XLA's
    fp32 leads torch's, on Intel Xeon with AMX torch's bf16 leads everything."""
    from corea_jax.parallel.machine import cpu_model

    out = {"cpu": cpu_model(), "mem_gbps": memory_gbps()}
    for dtype in ("float32", "bfloat16"):
        for shape_name, shape in HEADER_SHAPES.items():
            out[f"xla_{dtype}_{shape_name}_gflops"] = xla_matmul_gflops(*shape, dtype)
            out[f"torch_{dtype}_{shape_name}_gflops"] = torch_matmul_gflops(*shape, dtype)
    return out


def format_header(header: dict) -> str:
    """Two lines for a benchmark's output: the CPU, then the peaks table."""
    cells = []
    for lib in ("xla", "torch"):
        for dtype in ("float32", "bfloat16"):
            values = [header.get(f"{lib}_{dtype}_{s}_gflops") for s in HEADER_SHAPES]
            if values[0] is not None:
                cells.append(f"{lib} {dtype} " + " / ".join(f"{v:.0f}" for v in values))
    return (f"cpu: {header['cpu']}; memory {header['mem_gbps']:.1f} GB/s\n"
            f"matmul GFLOP/s (square 2048^3 / decode 16x896x4864): " + "; ".join(cells))
