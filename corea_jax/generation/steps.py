"""Building blocks shared by the static and the continuous schedule: the traced sampling
settings, one forward step, token choice, prefill of distinct prompts and their placement in
rows of a cache, per-row PRNG keys, length buckets, and the cache and mesh helpers."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from corea_jax.generation import sampling as sampling_lib
from corea_jax.models import ModelConfig, Decoder, KVCache, init_cache, positions_from_mask, cache_shardings

if TYPE_CHECKING:
    from corea_jax.generation.params import SamplingParams


_MIN_BUCKET = 16


_TRACES = [0]


def count_trace() -> None:
    """Called by each generation program as it is traced."""
    _TRACES[0] += 1


def compile_count() -> int:
    """How many generation programs have been traced (compiled) in this process."""
    return _TRACES[0]


def bucket(n: int, cap: int | None = None) -> int:
    size = max(_MIN_BUCKET, 1 << (max(n, 1) - 1).bit_length())
    return min(size, cap) if cap else size


def pow2(n: int, cap: int) -> int:
    """The power of two >= n, at most cap (row counts: few compiled shapes)."""
    return min(cap, 1 << (max(n, 1) - 1).bit_length())


@flax.struct.dataclass
class SamplingScalars:
    """The traced sampling settings of a generation program (changing them does not recompile)."""

    max_new_tokens: jax.Array  # [] int32, at most the program's new_bucket
    temperature: jax.Array  # [] float32
    top_k: jax.Array  # [] int32, 0: off
    top_p: jax.Array  # [] float32, 1: off
    ignore_eos: jax.Array  # [] bool

    @classmethod
    def of(cls, sampling: SamplingParams) -> "SamplingScalars":
        return cls(jnp.int32(sampling.max_new_tokens), jnp.float32(sampling.temperature),
                   jnp.int32(sampling.top_k), jnp.float32(sampling.top_p), jnp.bool_(sampling.ignore_eos))


def forward(config: ModelConfig, params, tokens, positions, mask, cache):
    """Last-position logits [B, 1, V] and the cache extended by `tokens` [B, T]."""
    return Decoder(config).apply({"params": params}, tokens, positions, mask, cache, last_only=True)


def choose(program, scalars: SamplingScalars, logits, keys, steps):
    """(token [B], its log-prob [B]) from logits [B, V]; row b draws with fold_in(keys[b], steps[b]),
    so a row's stream depends on its own key and step count only (see `Completion` for the
    log-prob)."""
    if program.greedy:
        token = sampling_lib.greedy(logits)
    else:
        step_keys = jax.vmap(jax.random.fold_in)(keys, steps)
        logits = sampling_lib.sampling_logits(logits, scalars.temperature, scalars.top_k, scalars.top_p,
                                              filtered=program.filtered)
        token = sampling_lib.categorical(step_keys, logits)
    logprob = jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), token[:, None], axis=-1)[:, 0]
    return token, logprob


def is_eos(token, eos_ids, scalars: SamplingScalars):
    return jnp.any(token[..., None] == eos_ids, axis=-1) & ~scalars.ignore_eos


def prefill_distinct(config: ModelConfig, params, chunk_ids, chunk_mask):
    """Prefills U distinct prompts [U, C] into a fresh cache: (logits [U, V], that cache, RoPE
    position after each prompt [U])."""
    small = init_cache(config, chunk_ids.shape[0], chunk_ids.shape[1])
    positions = positions_from_mask(chunk_mask)
    logits, small = forward(config, params, chunk_ids, positions, chunk_mask, small)
    return logits[:, -1], small, positions[:, -1] + 1


def place_rows(cache: KVCache, small: KVCache, source, rows, start) -> KVCache:
    """`cache` with row rows[a] holding row source[a] of `small` at slots [start, start + C) and
    no other valid slot (rows[a] out of range: skipped). The index is unchanged."""
    c, s = small.max_length, cache.max_length
    r, slot = rows[:, None], start + jnp.arange(c)[None, :]
    stacked = not isinstance(cache.k, tuple)

    def put(big, part, slot_axis):  # part [(L,) U, K, ..., C ...] -> big[(L,) rows, K, ..., slots ...]
        batch_axis = 1 if stacked else 0
        part = jnp.take(part, source, axis=batch_axis)
        # Advanced indices on the batch and slot axes put [A, C] first, then the other axes.
        order = (batch_axis, slot_axis) + tuple(i for i in range(part.ndim) if i not in (batch_axis, slot_axis))
        index = [slice(None)] * big.ndim
        index[batch_axis], index[slot_axis] = r, slot
        return big.at[tuple(index)].set(part.transpose(order), mode="drop")

    def put_all(bigs, parts, slot_axis):
        if stacked:
            return put(bigs, parts, slot_axis + bigs.ndim if slot_axis < 0 else slot_axis)
        return tuple(put(b, p, slot_axis + b.ndim) for b, p in zip(bigs, parts))

    row_valid = jax.lax.dynamic_update_slice(jnp.zeros((rows.shape[0], s), bool), small.valid[source],
                                             (0, start))
    return cache.replace(k=put_all(cache.k, small.k, -1), v=put_all(cache.v, small.v, -2),
                         valid=cache.valid.at[rows].set(row_valid, mode="drop"))


def row_keys(seed: int, row_ids: list[int], turn: int = 0) -> jax.Array:
    """[R] PRNG keys: row p * n + s (prompt p, sample s) draws from fold_in(key(seed), p * n + s),
    and its turn t > 0 of a conversation from fold_in(that key, 2**32 - t).

    A turn's step i draws with fold_in(its key, i); step counts stay far below 2**32 - t, so
    a later turn never replays the draws of an earlier one.
    """
    keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(jax.random.key(seed),
                                                           jnp.asarray(row_ids, jnp.uint32))
    if turn:
        keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, jnp.uint32(2**32 - turn))
    return keys


def distinct_prompts(chunks: list[list[int]], size: int | None = None) -> tuple[list[list[int]], list[int]]:
    """(the distinct chunks, padded by repeating the first to a power of two (at most `size`,
    default len(chunks)), and each chunk's index among them)."""
    index: dict[tuple[int, ...], int] = {}
    source = [index.setdefault(tuple(c), len(index)) for c in chunks]
    distinct = [list(c) for c in index]
    padded = pow2(len(distinct), size or len(chunks))
    return distinct + [distinct[0]] * (padded - len(distinct)), source


def left_pad(chunks: list[list[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    length = bucket(max(len(c) for c in chunks))
    ids = np.full((len(chunks), length), pad_id, np.int32)
    mask = np.zeros((len(chunks), length), bool)
    for b, chunk in enumerate(chunks):
        if chunk:
            ids[b, length - len(chunk):] = chunk
            mask[b, length - len(chunk):] = True
    return ids, mask


def eos_token_ids(model) -> list[int]:
    """End-of-sequence ids: the config's plus the tokenizer's."""
    ids = set(model.config.eos_token_ids)
    if model.tokenizer is not None and model.tokenizer.eos_token_id is not None:
        ids.add(int(model.tokenizer.eos_token_id))
    return sorted(ids)


def mesh_context(model):
    """Inside: the model's mesh is global and logical axis names map to it by the sharding rules."""
    from corea_jax.parallel import mesh_context

    return mesh_context(model.mesh)


def new_cache(model, batch: int, length: int) -> KVCache:
    """An empty cache, created in its shardings on the model's mesh (its batch axis over
    (data, fsdp) when they divide it, else replicated), so no device holds all of it."""
    if model.mesh is None:
        return init_cache(model.config, batch, length)
    return _sharded_cache_maker(model.config, batch, length, model.mesh)()


@functools.lru_cache(maxsize=64)
def _sharded_cache_maker(config: ModelConfig, batch: int, length: int, mesh):
    """One jitted zero-cache builder per (shape, mesh), not a new jit wrapper per batch."""
    return jax.jit(functools.partial(init_cache, config, batch, length),
                   out_shardings=cache_shardings(config, batch, length, mesh))


def cut_at_stop(tokenizer, token_ids: list[int], stop: tuple[str, ...]) -> tuple[str, int] | None:
    """(text before the first stop string, tokens needed to reach it) or None if none occurs."""
    text = tokenizer.decode(token_ids, skip_special_tokens=True)
    hits = [i for i in (text.find(s) for s in stop) if i >= 0]
    if not hits:
        return None
    cut = min(hits)
    # The fewest tokens whose text already contains the stop string (prefix texts only grow).
    lo, hi = 1, len(token_ids)
    while lo < hi:
        mid = (lo + hi) // 2
        prefix = tokenizer.decode(token_ids[:mid], skip_special_tokens=True)
        if any(s in prefix for s in stop):
            hi = mid
        else:
            lo = mid + 1
    return text[:cut], lo
