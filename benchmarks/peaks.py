"""The machine's measured peaks, shared by every benchmark (no absl flags here, so any
benchmark can import it): dense `jnp.dot` FLOP rate and memory bandwidth."""

from __future__ import annotations

import time


def best_seconds(fn, *args, repeats: int = 5) -> float:
    import jax

    jax.block_until_ready(fn(*args))
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - start)
    return best


def _on_gpu() -> bool:
    import jax

    return jax.devices()[0].platform == "gpu"


def dot_gflops(dtype: str) -> float:
    """Best-of-5 GFLOP/s of an n^3 `jnp.dot` in `dtype` (n = 8192 on a GPU, else 2048)."""
    import jax
    import jax.numpy as jnp

    n = 8192 if _on_gpu() else 2048
    a = jnp.ones((n, n), dtype)
    return 2 * n**3 / best_seconds(jax.jit(jnp.dot), a, a) / 1e9


def memory_gbps() -> float:
    """GB/s of a `jnp.sum` over 4 GiB on a GPU, else 1 GiB."""
    import jax
    import jax.numpy as jnp

    big = jnp.ones((1 << (30 if _on_gpu() else 28),), jnp.float32)
    return big.nbytes / best_seconds(jax.jit(jnp.sum), big) / 1e9
