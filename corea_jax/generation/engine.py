"""Batched generation: a jitted prefill + `lax.while_loop` decode over an explicit KV cache.

The SLM's answers, the RL rollouts and the LLM all come through `generate`. It runs the
same `Decoder` graph the trainer differentiates, so the log-probs it returns are the ones
the trainer recomputes.

Compile budget: prompt length, batch size and the new-token budget are rounded up to
buckets (powers of two), so a run over prompts of varied lengths compiles a handful of
programs; `compile_count()` reports how many.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from typing import Any, Sequence

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from corea_jax.generation import sampling as sampling_lib
from corea_jax.models.config import ModelConfig
from corea_jax.models.decoder import Decoder, KVCache, init_cache, positions_from_mask

_MIN_BUCKET = 16


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """How to generate.

    Attributes:
      max_new_tokens: upper bound on generated tokens per completion (> 0).
      temperature: softmax temperature; 0 means greedy decoding.
      top_p: nucleus mass in (0, 1]; 1 disables.
      top_k: keep the k most likely tokens; 0 disables.
      n: completions per prompt.
      stop: strings that end a completion (the text is cut before the first one).
      seed: PRNG seed; the same seed gives the same outputs.
      ignore_eos: keep generating past end-of-sequence tokens (benchmarks).
    """

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    n: int = 1
    stop: tuple[str, ...] = ()
    seed: int = 0
    ignore_eos: bool = False

    def __post_init__(self):
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        else:
            object.__setattr__(self, "stop", tuple(self.stop))
        if not isinstance(self.max_new_tokens, (int, np.integer)) or self.max_new_tokens <= 0:
            raise ValueError(f"max_new_tokens: expected an integer > 0, found {self.max_new_tokens!r}")
        if not self.temperature >= 0:
            raise ValueError(f"temperature: expected a number >= 0, found {self.temperature!r}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p: expected a number in (0, 1], found {self.top_p!r}")
        if self.top_k < 0:
            raise ValueError(f"top_k: expected an integer >= 0 (0 = off), found {self.top_k!r}")
        if self.n < 1:
            raise ValueError(f"n: expected an integer >= 1, found {self.n!r}")
        if any(not s for s in self.stop):
            raise ValueError(f"stop: expected non-empty strings, found {self.stop!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclasses.dataclass
class Completion:
    """One generated continuation.

    token_ids and logprobs cover the generated tokens (an ending EOS included); logprobs are
    log-probabilities under the unmodified model distribution (temperature 1, no filtering).
    """

    text: str
    token_ids: list[int]
    logprobs: list[float]
    finish_reason: str  # "stop" (EOS or a stop string) or "length"
    num_prompt_tokens: int
    num_generated_tokens: int


# ----------------------------------------------------------------------- device loop


@flax.struct.dataclass
class _LoopState:
    step: jax.Array  # [] tokens generated so far
    tokens: jax.Array  # [B, N] int32
    logprobs: jax.Array  # [B, N] float32
    position: jax.Array  # [B] RoPE position of the token fed next
    done: jax.Array  # [B] bool
    cache: KVCache


_TRACES = [0]


def compile_count() -> int:
    """How many generation programs have been traced (compiled) in this process."""
    return _TRACES[0]


def _bucket(n: int, cap: int | None = None) -> int:
    size = max(_MIN_BUCKET, 1 << (max(n, 1) - 1).bit_length())
    return min(size, cap) if cap else size


@functools.partial(jax.jit, static_argnames=("config", "new_bucket", "greedy", "filtered"))
def _generate_batch(config: ModelConfig, params, prompt_ids, prompt_mask, keys, eos_ids,
                    max_new_tokens, temperature, top_k, top_p, ignore_eos, *, new_bucket: int,
                    greedy: bool, filtered: bool):
    """Generates up to `max_new_tokens` (<= new_bucket) tokens for a left-padded batch.

    Args:
      prompt_ids, prompt_mask: [B, P] left-padded prompts.
      keys: [B] PRNG keys, one per row. eos_ids: [E] int32 (-1 pads).
    Returns:
      tokens [B, N], logprobs [B, N], lengths [B] (tokens generated, EOS included), hit_eos [B].
    """
    _TRACES[0] += 1
    decoder = Decoder(config)
    batch, prompt_len = prompt_ids.shape

    def run(tokens, positions, mask, cache):
        return decoder.apply({"params": params}, tokens, positions, mask, cache, last_only=True)

    def choose(logits, step):
        if greedy:
            token = sampling_lib.greedy(logits)
        else:
            step_keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, step)
            token = sampling_lib.sample(logits, step_keys, temperature, top_k, top_p, filtered=filtered)
        logprob = jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), token[:, None], axis=-1)[:, 0]
        return token, logprob

    def is_eos(token):
        return jnp.any(token[:, None] == eos_ids[None, :], axis=-1) & ~ignore_eos

    cache = init_cache(config, batch, prompt_len + new_bucket)
    positions = positions_from_mask(prompt_mask)
    logits, cache = run(prompt_ids, positions, prompt_mask, cache)
    token, logprob = choose(logits[:, -1], 0)
    state = _LoopState(
        step=jnp.ones((), jnp.int32),
        tokens=jnp.zeros((batch, new_bucket), jnp.int32).at[:, 0].set(token),
        logprobs=jnp.zeros((batch, new_bucket), jnp.float32).at[:, 0].set(logprob),
        position=positions[:, -1] + 1,
        done=is_eos(token),
        cache=cache,
    )

    def cond(s: _LoopState):
        return (s.step < max_new_tokens) & ~jnp.all(s.done)

    def body(s: _LoopState):
        last = jax.lax.dynamic_index_in_dim(s.tokens, s.step - 1, axis=1, keepdims=True)
        logits, cache = run(last, s.position[:, None], jnp.ones_like(last, bool), s.cache)
        token, logprob = choose(logits[:, 0], s.step)
        token = jnp.where(s.done, 0, token)
        logprob = jnp.where(s.done, 0.0, logprob)
        return _LoopState(
            step=s.step + 1,
            tokens=jax.lax.dynamic_update_index_in_dim(s.tokens, token, s.step, axis=1),
            logprobs=jax.lax.dynamic_update_index_in_dim(s.logprobs, logprob, s.step, axis=1),
            position=s.position + 1,
            done=s.done | is_eos(token),
            cache=cache,
        )

    state = jax.lax.while_loop(cond, body, state)
    generated = jnp.arange(new_bucket)[None, :] < state.step
    is_end = jnp.any(state.tokens[:, :, None] == eos_ids[None, None, :], axis=-1) & generated
    is_end = is_end & ~ignore_eos
    hit_eos = jnp.any(is_end, axis=1)
    first_end = jnp.argmax(is_end, axis=1)
    lengths = jnp.where(hit_eos, first_end + 1, jnp.minimum(state.step, max_new_tokens))
    return state.tokens, state.logprobs, lengths, hit_eos


# ----------------------------------------------------------------------- host side


def _encode_prompts(tokenizer, prompts: Sequence[Any], raw: bool) -> list[list[int]]:
    if isinstance(prompts, (str, bytes)) or not isinstance(prompts, Sequence):
        raise ValueError("prompts: expected a list of prompts (strings, chat message lists or "
                         f"token-id lists), found {type(prompts).__name__}")
    if len(prompts) == 0:
        raise ValueError("prompts: expected at least one prompt, found an empty list")
    encoded = []
    for i, prompt in enumerate(prompts):
        if isinstance(prompt, str):
            if not prompt:
                raise ValueError(f"prompts[{i}]: expected a non-empty prompt, found ''")
            if tokenizer is None:
                raise ValueError("prompts: text prompts need a tokenizer; this model has none")
            if raw:
                ids = tokenizer(prompt)["input_ids"]
            else:
                ids = chat_token_ids(tokenizer, [{"role": "user", "content": prompt}])
        elif isinstance(prompt, Sequence) and prompt and isinstance(prompt[0], dict):
            if tokenizer is None:
                raise ValueError("prompts: chat prompts need a tokenizer; this model has none")
            ids = chat_token_ids(tokenizer, list(prompt))
        else:
            ids = [int(t) for t in prompt]
            if not ids:
                raise ValueError(f"prompts[{i}]: expected a non-empty prompt, found []")
        encoded.append(list(ids))
    return encoded


def chat_token_ids(tokenizer, messages: list[dict], add_generation_prompt: bool = True) -> list[int]:
    """Token ids of chat `messages` under the tokenizer's chat template."""
    text = tokenizer.apply_chat_template(messages, tokenize=False,
                                         add_generation_prompt=add_generation_prompt)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def eos_token_ids(model) -> list[int]:
    """End-of-sequence ids: the config's plus the tokenizer's."""
    ids = set(model.config.eos_token_ids)
    if model.tokenizer is not None and model.tokenizer.eos_token_id is not None:
        ids.add(int(model.tokenizer.eos_token_id))
    return sorted(ids)


def _mesh_context(model):
    if model.mesh is None:
        return contextlib.nullcontext()
    from corea_jax.parallel.sharding import LOGICAL_RULES

    # No global mesh (jax.set_mesh): under one, flax's param shape check re-runs DenseGeneral's
    # init, whose flat kernel fails its own 3-axis logical constraint. The params' shardings
    # alone partition the jitted program.
    return nn.logical_axis_rules(LOGICAL_RULES)


def generate_tokens(model, prompt_ids: list[list[int]], sampling: SamplingParams, *,
                    batch_size: int = 32, progress: bool = True
                    ) -> list[list[tuple[list[int], list[float], bool]]]:
    """Token-level generation: per prompt, n tuples (token_ids, logprobs, hit_eos)."""
    config = model.config
    context = config.max_position_embeddings
    for i, ids in enumerate(prompt_ids):
        if len(ids) + sampling.max_new_tokens > context:
            raise ValueError(f"prompts[{i}]: {len(ids)} prompt tokens + max_new_tokens "
                             f"{sampling.max_new_tokens} exceed the model's context of {context} tokens")
        if min(ids) < 0 or max(ids) >= config.vocab_size:
            raise ValueError(f"prompts[{i}]: token ids must lie in [0, {config.vocab_size})")
    if batch_size < 1:
        raise ValueError(f"batch_size: expected an integer >= 1, found {batch_size}")

    rows = [(p, s) for p in range(len(prompt_ids)) for s in range(sampling.n)]
    # Longest prompts first: rows of similar length share a batch and a length bucket.
    rows.sort(key=lambda r: -len(prompt_ids[r[0]]))
    eos = np.asarray(eos_token_ids(model) or [-1], np.int32)
    base_key = jax.random.key(sampling.seed)
    new_bucket = _bucket(sampling.max_new_tokens)
    pad_id = config.pad_token_id if config.pad_token_id is not None else 0
    results: list[list[Any]] = [[None] * sampling.n for _ in prompt_ids]

    bar = tqdm(total=len(rows), desc="generate", unit="seq", disable=not progress)
    with _mesh_context(model):
        for start in range(0, len(rows), batch_size):
            chunk = rows[start:start + batch_size]
            padded_batch = min(batch_size, 1 << (len(chunk) - 1).bit_length())
            chunk_rows = chunk + [chunk[0]] * (padded_batch - len(chunk))
            length = _bucket(max(len(prompt_ids[p]) for p, _ in chunk_rows))
            ids = np.full((padded_batch, length), pad_id, np.int32)
            mask = np.zeros((padded_batch, length), bool)
            for b, (p, _) in enumerate(chunk_rows):
                prompt = prompt_ids[p]
                ids[b, length - len(prompt):] = prompt
                mask[b, length - len(prompt):] = True
            keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(
                base_key, jnp.asarray([p * sampling.n + s for p, s in chunk_rows], jnp.uint32))
            tokens, logprobs, lengths, hit_eos = _generate_batch(
                config, model.params, jnp.asarray(ids), jnp.asarray(mask), keys, jnp.asarray(eos),
                jnp.int32(sampling.max_new_tokens), jnp.float32(sampling.temperature),
                jnp.int32(sampling.top_k), jnp.float32(sampling.top_p), jnp.bool_(sampling.ignore_eos),
                new_bucket=new_bucket, greedy=sampling.greedy,
                filtered=(not sampling.greedy) and (sampling.top_k > 0 or sampling.top_p < 1))
            tokens, logprobs, lengths, hit_eos = jax.device_get((tokens, logprobs, lengths, hit_eos))
            for b, (p, s) in enumerate(chunk):
                n = int(lengths[b])
                results[p][s] = (tokens[b, :n].tolist(), logprobs[b, :n].tolist(), bool(hit_eos[b]))
            bar.update(len(chunk))
    bar.close()
    return results


def _cut_at_stop(tokenizer, token_ids: list[int], stop: tuple[str, ...]) -> tuple[str, int] | None:
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


def generate(model, prompts: Sequence[Any], sampling: SamplingParams | None = None, *,
             raw: bool = False, batch_size: int = 32, progress: bool = True) -> list[list[Completion]]:
    """Generates `sampling.n` completions for each prompt.

    Args:
      model: a `corea_jax.Model`.
      prompts: strings (the tokenizer's chat template is applied unless `raw`), chat
        message lists ([{"role": ..., "content": ...}, ...]) or token-id lists.
      sampling: `SamplingParams` (default: greedy, 256 new tokens).
      batch_size: rows (prompts x n) per device batch; the caller never chunks by hand.
      progress: show a tqdm bar.
    Returns:
      One list of `n` Completions per prompt, in prompt order.
    """
    sampling = sampling or SamplingParams()
    prompt_ids = _encode_prompts(model.tokenizer, prompts, raw)
    token_results = generate_tokens(model, prompt_ids, sampling, batch_size=batch_size,
                                    progress=progress)
    out = []
    for ids, per_prompt in zip(prompt_ids, token_results):
        completions = []
        for token_ids, logprobs, hit_eos in per_prompt:
            finish = "stop" if hit_eos else "length"
            text = ""
            if model.tokenizer is not None:
                cut = _cut_at_stop(model.tokenizer, token_ids, sampling.stop) if sampling.stop else None
                if cut is not None:
                    text, keep = cut
                    token_ids, logprobs, finish = token_ids[:keep], logprobs[:keep], "stop"
                else:
                    text = model.tokenizer.decode(token_ids, skip_special_tokens=True)
            completions.append(Completion(text=text, token_ids=token_ids, logprobs=logprobs,
                                          finish_reason=finish, num_prompt_tokens=len(ids),
                                          num_generated_tokens=len(token_ids)))
        out.append(completions)
    return out
