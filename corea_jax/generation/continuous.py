"""Continuous batching: B decoding slots over one KV cache, decoded in fixed-trip chunks
(`fori_loop`, no per-token host round trip); between chunks the host collects rows that ended
(EOS, budget, stop string) and admits the next waiting rows into their slots. Once no row
waits, the batch shrinks to the next power of two above the busy slots whenever half of them
are idle, so the run's tail decodes no idle rows (on one device; a mesh keeps its batch)."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from corea_jax.generation import steps
from corea_jax.generation.params import SamplingParams
from corea_jax.generation.steps import SamplingScalars, eos_token_ids
from corea_jax.models.config import ModelConfig
from corea_jax.models.decoder import KVCache


_DECODE_CHUNK = 16  # decode steps per device call in continuous batching


_SHIFT = 64  # cache slots a continuous run reclaims at a time


@flax.struct.dataclass
class _SlotState:
    """B decoding slots; each holds one row (a prompt's sample) until it ends, then the next."""

    tokens: jax.Array  # [B, N] int32, the slot's row's tokens so far
    logprobs: jax.Array  # [B, N] float32
    count: jax.Array  # [B] int32 tokens the row has generated (its own step count)
    last: jax.Array  # [B] int32 the token fed next
    position: jax.Array  # [B] RoPE position of that token
    done: jax.Array  # [B] bool: ended (or empty); the slot waits for the host to refill it
    keys: jax.Array  # [B] the row's PRNG key
    cache: KVCache  # one shared write index; a row's slots are [admission - C, current)


@dataclasses.dataclass(frozen=True)
class _SlotProgram:
    """Static settings of the continuous-batching programs (admit, decode chunk, shift)."""

    config: ModelConfig
    new_bucket: int
    greedy: bool
    filtered: bool
    chunk: int  # decode steps per device call (the host refills slots between calls)
    shift: int  # cache slots dropped from the front when the write index nears the end


@functools.partial(jax.jit, static_argnums=0, donate_argnums=2)
def _admit(program: _SlotProgram, params, state: _SlotState, chunk_ids, chunk_mask, source, rows,
           row_keys, eos_ids, scalars: SamplingScalars) -> _SlotState:
    """Prefills U distinct prompts [U, C] once, copies each to the slots rows[a] (out of range:
    padding) that sample it (source[a]: its prompt), and draws each new row's first token."""
    steps.count_trace()
    logits, small, end = steps.prefill_distinct(program.config, params, chunk_ids, chunk_mask)
    token, logprob = steps.choose(program, scalars, logits[source], row_keys, jnp.zeros_like(source))
    index = state.cache.index
    cache = steps.place_rows(state.cache, small, source, rows, index - small.max_length)
    set_rows = lambda x, v: x.at[rows].set(v, mode="drop")  # noqa: E731
    first = lambda v: jnp.zeros((rows.shape[0], program.new_bucket), v.dtype).at[:, 0].set(v)  # noqa: E731
    return _replicate_outputs(_SlotState(
        tokens=set_rows(state.tokens, first(token)),
        logprobs=set_rows(state.logprobs, first(logprob)),
        count=set_rows(state.count, jnp.ones_like(token)),
        last=set_rows(state.last, token),
        position=set_rows(state.position, end[source]),
        done=set_rows(state.done, steps.is_eos(token, eos_ids, scalars) | (scalars.max_new_tokens <= 1)),
        keys=set_rows(state.keys, row_keys),
        cache=cache))


@functools.partial(jax.jit, static_argnums=0, donate_argnums=2)
def _decode_chunk(program: _SlotProgram, params, state: _SlotState, eos_ids,
                  scalars: SamplingScalars) -> _SlotState:
    """`program.chunk` decode steps (a fixed-trip loop: no per-step host round trip). Ended slots
    idle: they write no token and mark no cache slot valid."""
    steps.count_trace()
    batch = state.count.shape[0]

    def step(_, s: _SlotState) -> _SlotState:
        live = ~s.done
        logits, cache = steps.forward(program.config, params, s.last[:, None], s.position[:, None],
                                 live[:, None], s.cache)
        token, logprob = steps.choose(program, scalars, logits[:, 0], s.keys, s.count)
        at = (jnp.arange(batch), jnp.where(live, s.count, program.new_bucket))  # ended: dropped
        count = s.count + live
        ended = steps.is_eos(token, eos_ids, scalars) | (count >= scalars.max_new_tokens)
        return s.replace(tokens=s.tokens.at[at].set(token, mode="drop"),
                         logprobs=s.logprobs.at[at].set(logprob, mode="drop"),
                         count=count, last=jnp.where(live, token, s.last), position=s.position + live,
                         done=s.done | (live & ended), cache=cache)

    state = jax.lax.fori_loop(0, program.chunk, step, state)
    return _replicate_outputs(state)


def _replicate_outputs(state: _SlotState) -> _SlotState:
    """The fields the host reads, replicated on a mesh (every process reads all rows)."""
    replicated = lambda x: nn.with_logical_constraint(x, (None,) * x.ndim)  # noqa: E731
    return state.replace(tokens=replicated(state.tokens), logprobs=replicated(state.logprobs),
                         count=replicated(state.count), done=replicated(state.done))


@jax.jit
def _compact(state: _SlotState, keep) -> _SlotState:
    """The slots `keep` [b] of every per-slot array: a smaller batch for the run's tail, when no
    row waits and at most half the slots are busy (fewer rows, cheaper decode steps)."""
    steps.count_trace()
    take = lambda x, axis=0: jnp.take(x, keep, axis=axis)  # noqa: E731
    batch_axis = lambda x: x.ndim - 4  # noqa: E731  k [(L,) B, K, Dh, S], v [(L,) B, K, S, Dh]
    cache = state.cache
    return state.replace(
        tokens=take(state.tokens), logprobs=take(state.logprobs), count=take(state.count),
        last=take(state.last), position=take(state.position), done=take(state.done),
        keys=take(state.keys),
        cache=KVCache(k=jax.tree.map(lambda x: take(x, batch_axis(x)), cache.k),
                      v=jax.tree.map(lambda x: take(x, batch_axis(x)), cache.v),
                      valid=take(cache.valid), index=cache.index))


@functools.partial(jax.jit, static_argnums=0, donate_argnums=1)
def _shift_cache(program: _SlotProgram, state: _SlotState) -> _SlotState:
    """Drops the first `program.shift` cache slots (no live row uses them) and moves the write
    index back as far, so a run of any length fits a fixed cache."""
    steps.count_trace()
    d, cache = program.shift, state.cache
    roll = lambda x, axis: jnp.roll(x, -d, axis=axis)  # noqa: E731  the wrapped slots are invalid
    k = jax.tree.map(lambda x: roll(x, -1), cache.k)
    v = jax.tree.map(lambda x: roll(x, -2), cache.v)
    valid = jnp.concatenate([cache.valid[:, d:], jnp.zeros_like(cache.valid[:, :d])], axis=1)
    return state.replace(cache=KVCache(k=k, v=v, valid=valid, index=cache.index - d))


def generate_continuous(model, prompt_ids: list[list[int]], sampling: SamplingParams, batch_size: int,
                         progress: bool, stop: bool) -> list[list[Any]]:
    """`generate_tokens` by continuous batching: B slots over one cache; between decode chunks the
    host collects ended rows (EOS, budget, or with `stop` a stop string) and admits the next
    waiting rows into their slots (their distinct prompts prefilled once).

    The cache has prompt_bucket + new_bucket + _SHIFT + chunk slots and one write index; an
    admitted row's prompt sits just below the index and its tokens follow it, so a row never
    spans more than prompt_bucket + new_bucket slots, and the first _SHIFT slots are dropped
    (`_shift_cache`) whenever the index would pass the end.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size: expected an integer >= 1, found {batch_size}")
    config, n = model.config, sampling.n
    pad_id = config.pad_token_id if config.pad_token_id is not None else 0
    rows = [(p, s) for p in range(len(prompt_ids)) for s in range(n)]
    rows.sort(key=lambda r: -len(prompt_ids[r[0]]))  # stable: a prompt's samples stay together
    b = min(batch_size, 1 << (len(rows) - 1).bit_length())
    program = _SlotProgram(config, steps.bucket(sampling.max_new_tokens), sampling.greedy,
                           (not sampling.greedy) and (sampling.top_k > 0 or sampling.top_p < 1),
                           _DECODE_CHUNK, _SHIFT)
    prompt_bucket = steps.bucket(max(map(len, prompt_ids)))
    length = prompt_bucket + program.new_bucket + _SHIFT + _DECODE_CHUNK
    eos = jnp.asarray(np.asarray(eos_token_ids(model) or [-1], np.int32))
    eos_set = set(eos_token_ids(model)) if not sampling.ignore_eos else set()
    scalars = SamplingScalars.of(sampling)
    stops = sampling.stop if stop and model.tokenizer is not None else ()
    results: list[list[Any]] = [[None] * n for _ in prompt_ids]
    waiting = list(reversed(rows))
    slots: list[tuple[int, int] | None] = [None] * b
    with tqdm(total=len(rows), desc="generate", unit="seq", disable=not progress) as bar, \
            steps.mesh_context(model):
        cache = steps.new_cache(model, b, length)
        index = prompt_bucket  # prompts are placed below the write index
        state = _SlotState(
            tokens=jnp.zeros((b, program.new_bucket), jnp.int32),
            logprobs=jnp.zeros((b, program.new_bucket), jnp.float32),
            count=jnp.zeros((b,), jnp.int32), last=jnp.zeros((b,), jnp.int32),
            position=jnp.zeros((b,), jnp.int32), done=jnp.ones((b,), bool),
            keys=steps.row_keys(0, list(range(b))), cache=cache.replace(index=jnp.int32(index)))
        while True:
            free = [i for i in range(b) if slots[i] is None]
            if free and waiting:
                admitted = [waiting.pop() for _ in range(min(len(free), len(waiting)))]
                distinct, source = steps.distinct_prompts([prompt_ids[p] for p, _ in admitted], b)
                ids, mask = steps.left_pad(distinct, pad_id)
                pad = b - len(admitted)
                at = free[:len(admitted)]
                state = _admit(program, model.params, state, jnp.asarray(ids), jnp.asarray(mask),
                               jnp.asarray(source + [0] * pad, jnp.int32), jnp.asarray(at + [b] * pad, jnp.int32),
                               steps.row_keys(sampling.seed, [p * n + s for p, s in admitted] + [0] * pad),
                               eos, scalars)
                for i, row in zip(at, admitted):
                    slots[i] = row
            if all(s is None for s in slots):
                break
            if index + _DECODE_CHUNK > length:
                state, index = _shift_cache(program, state), index - _SHIFT
            state = _decode_chunk(program, model.params, state, eos, scalars)
            index += _DECODE_CHUNK
            done, count, tokens, logprobs = jax.device_get((state.done, state.count, state.tokens,
                                                            state.logprobs))
            stopped = []
            for i, row in enumerate(slots):
                if row is None:
                    continue
                ids = tokens[i, :count[i]].tolist()
                if not done[i] and stops and steps.cut_at_stop(model.tokenizer, ids, stops) is not None:
                    stopped.append(i)
                elif not done[i]:
                    continue
                p, s = row
                results[p][s] = (ids, logprobs[i, :count[i]].tolist(), bool(ids[-1] in eos_set))
                slots[i] = None
                bar.update(1)
            if stopped:
                state = state.replace(done=state.done.at[jnp.asarray(stopped)].set(True))
            busy = [i for i in range(b) if slots[i] is not None]
            if not waiting and busy and len(busy) <= b // 2 and model.mesh is None:
                # The tail: halve (or more) the batch; an idle slot pads it (it stays done).
                b = steps.pow2(len(busy), b // 2)
                idle = next(i for i in range(len(slots)) if slots[i] is None)
                keep = busy + [idle] * (b - len(busy))
                state = _compact(state, jnp.asarray(keep, jnp.int32))
                slots = [slots[i] for i in busy] + [None] * (b - len(busy))
    return results
