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
from corea_jax.models import ModelConfig, KVCache


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


@dataclasses.dataclass
class SlotRow:
    """A row to decode in a slot.

    tag: the caller's handle, returned with the row's tokens. prompt: its token ids (at most the
    scheduler's prompt bucket). row_id: seeds its PRNG stream (prompt p, sample s: p * n + s).
    max_new_tokens: its own budget, at most the scheduler's (None: the scheduler's); a row past
    it ends at the next chunk boundary, cut to the budget. stop: strings that end it.
    """

    tag: Any
    prompt: list[int]
    row_id: int
    max_new_tokens: int | None = None
    stop: tuple[str, ...] = ()


class SlotScheduler:
    """Continuous batching driven one decode chunk at a time, so rows can join while others decode.

    `admit` puts waiting rows into free slots (their distinct prompts prefilled once), `step`
    decodes one chunk and returns the rows that ended (EOS, budget, stop string) as
    (row, token_ids, logprobs, hit_eos), `cancel` ends rows early (their slots free at once).
    `generate_continuous` runs it over a fixed list of rows; `corea_jax.serving` feeds it from a
    queue of requests as they arrive.

    The cache has prompt_bucket + new_bucket + _SHIFT + chunk slots and one write index; an
    admitted row's prompt sits just below the index and its tokens follow it, so a row never
    spans more than prompt_bucket + new_bucket slots, and the first _SHIFT slots are dropped
    (`_shift_cache`) whenever the index would pass the end.
    """

    def __init__(self, model, sampling: SamplingParams, slots: int, prompt_bucket: int):
        if slots < 1:
            raise ValueError(f"batch_size: expected an integer >= 1, found {slots}")
        config = model.config
        self.model, self.sampling = model, sampling
        self.pad_id = config.pad_token_id if config.pad_token_id is not None else 0
        self.program = _SlotProgram(config, steps.bucket(sampling.max_new_tokens), sampling.greedy,
                                    (not sampling.greedy) and (sampling.top_k > 0 or sampling.top_p < 1),
                                    _DECODE_CHUNK, _SHIFT)
        self.prompt_bucket = steps.bucket(prompt_bucket)
        self.length = self.prompt_bucket + self.program.new_bucket + _SHIFT + _DECODE_CHUNK
        self.eos = jnp.asarray(np.asarray(eos_token_ids(model) or [-1], np.int32))
        self.eos_set = set(eos_token_ids(model)) if not sampling.ignore_eos else set()
        self.scalars = SamplingScalars.of(sampling)
        self.slots: list[SlotRow | None] = [None] * slots
        self.index = self.prompt_bucket  # prompts are placed below the write index
        self._host = None  # (count, tokens) of the last chunk, for `tokens_so_far`
        with steps.mesh_context(model):
            cache = steps.new_cache(model, slots, self.length)
            self.state = _SlotState(
                tokens=jnp.zeros((slots, self.program.new_bucket), jnp.int32),
                logprobs=jnp.zeros((slots, self.program.new_bucket), jnp.float32),
                count=jnp.zeros((slots,), jnp.int32), last=jnp.zeros((slots,), jnp.int32),
                position=jnp.zeros((slots,), jnp.int32), done=jnp.ones((slots,), bool),
                keys=steps.row_keys(0, list(range(slots))), cache=cache.replace(index=jnp.int32(self.index)))

    @property
    def free(self) -> int:
        return sum(row is None for row in self.slots)

    @property
    def busy(self) -> int:
        return len(self.slots) - self.free

    def admit(self, rows: list[SlotRow]) -> None:
        """Puts `rows` (at most `free` of them) into free slots and draws their first tokens."""
        b = len(self.slots)
        free = [i for i in range(b) if self.slots[i] is None]
        if len(rows) > len(free):
            raise ValueError(f"admit: {len(rows)} rows for {len(free)} free slots")
        for row in rows:
            if len(row.prompt) > self.prompt_bucket:
                raise ValueError(f"admit: a prompt of {len(row.prompt)} tokens, more than the "
                                 f"{self.prompt_bucket} this scheduler holds")
        if not rows:
            return
        distinct, source = steps.distinct_prompts([row.prompt for row in rows], b)
        ids, mask = steps.left_pad(distinct, self.pad_id)
        pad = b - len(rows)
        at = free[:len(rows)]
        with steps.mesh_context(self.model):
            self.state = _admit(self.program, self.model.params, self.state, jnp.asarray(ids),
                                jnp.asarray(mask), jnp.asarray(source + [0] * pad, jnp.int32),
                                jnp.asarray(at + [b] * pad, jnp.int32),
                                steps.row_keys(self.sampling.seed, [row.row_id for row in rows] + [0] * pad),
                                self.eos, self.scalars)
        for i, row in zip(at, rows):
            self.slots[i] = row

    def step(self) -> list[tuple[SlotRow, list[int], list[float], bool]]:
        """Decodes one chunk; returns the rows that ended, their slots freed."""
        if not self.busy:
            return []
        with steps.mesh_context(self.model):
            if self.index + _DECODE_CHUNK > self.length:
                self.state, self.index = _shift_cache(self.program, self.state), self.index - _SHIFT
            self.state = _decode_chunk(self.program, self.model.params, self.state, self.eos, self.scalars)
            self.index += _DECODE_CHUNK
            done, count, tokens, logprobs = jax.device_get((self.state.done, self.state.count,
                                                            self.state.tokens, self.state.logprobs))
        self._host = count, tokens
        ended, stopped = [], []
        for i, row in enumerate(self.slots):
            if row is None:
                continue
            n = int(count[i])
            over = row.max_new_tokens is not None and n >= row.max_new_tokens
            n = min(n, row.max_new_tokens) if over else n
            if not (done[i] or over or row.stop):
                continue
            ids = tokens[i, :n].tolist()
            if not done[i] and (over or steps.cut_at_stop(self.model.tokenizer, ids, row.stop)):
                stopped.append(i)
            elif not done[i]:
                continue
            ended.append((row, ids, logprobs[i, :n].tolist(), bool(ids[-1] in self.eos_set)))
            self.slots[i] = None
        self._mark_done(stopped)
        return ended

    def tokens_so_far(self) -> dict[Any, list[int]]:
        """tag -> the tokens each busy row had generated at the end of the last chunk."""
        if self._host is None:
            return {}
        count, tokens = self._host
        return {row.tag: tokens[i, :int(count[i])].tolist() for i, row in enumerate(self.slots)
                if row is not None}

    def cancel(self, tags) -> list[SlotRow]:
        """Ends the rows whose tag is in `tags` now, freeing their slots; returns them."""
        tags = set(tags)
        hit = [i for i, row in enumerate(self.slots) if row is not None and row.tag in tags]
        rows = [self.slots[i] for i in hit]
        for i in hit:
            self.slots[i] = None
        self._mark_done(hit)
        return rows

    def _mark_done(self, slots: list[int]) -> None:
        if slots:
            self.state = self.state.replace(done=self.state.done.at[jnp.asarray(slots)].set(True))

    def shrink(self) -> None:
        """Halves (or more) the slots when at most half are busy: a run's tail, once no row waits,
        decodes no idle rows (on one device; a mesh keeps its batch). An idle slot pads the batch."""
        busy = [i for i in range(len(self.slots)) if self.slots[i] is not None]
        b = len(self.slots)
        if not busy or len(busy) > b // 2 or self.model.mesh is not None:
            return
        b = steps.pow2(len(busy), b // 2)
        idle = next(i for i in range(len(self.slots)) if self.slots[i] is None)
        keep = busy + [idle] * (b - len(busy))
        self.state = _compact(self.state, jnp.asarray(keep, jnp.int32))
        self.slots = [self.slots[i] for i in busy] + [None] * (b - len(busy))


def generate_continuous(model, prompt_ids: list[list[int]], sampling: SamplingParams, batch_size: int,
                         progress: bool, stop: bool) -> list[list[Any]]:
    """`generate_tokens` by continuous batching (`SlotScheduler`): between decode chunks the host
    collects ended rows (EOS, budget, or with `stop` a stop string) and admits the next waiting
    rows into their slots (their distinct prompts prefilled once); once none waits, the batch
    shrinks as rows end."""
    if batch_size < 1:
        raise ValueError(f"batch_size: expected an integer >= 1, found {batch_size}")
    n = sampling.n
    rows = [(p, s) for p in range(len(prompt_ids)) for s in range(n)]
    rows.sort(key=lambda r: -len(prompt_ids[r[0]]))  # stable: a prompt's samples stay together
    stops = sampling.stop if stop and model.tokenizer is not None else ()
    waiting = [SlotRow((p, s), prompt_ids[p], p * n + s, stop=stops) for p, s in reversed(rows)]
    scheduler = SlotScheduler(model, sampling, min(batch_size, 1 << (len(rows) - 1).bit_length()),
                              max(map(len, prompt_ids)))
    results: list[list[Any]] = [[None] * n for _ in prompt_ids]
    with tqdm(total=len(rows), desc="generate", unit="seq", disable=not progress) as bar:
        while True:
            if scheduler.free and waiting:
                scheduler.admit([waiting.pop() for _ in range(min(scheduler.free, len(waiting)))])
            if not scheduler.busy:
                break
            for row, ids, logprobs, hit_eos in scheduler.step():
                p, s = row.tag
                results[p][s] = (ids, logprobs, hit_eos)
                bar.update(1)
            if not waiting:
                scheduler.shrink()
    return results
