"""The static schedule's device program: prefill a chunk of rows into a KV cache, then a
`lax.while_loop` decode until the batch's longest row ends (`GenerationProgram`)."""

from __future__ import annotations

import dataclasses
import functools

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from corea_jax.generation import steps
from corea_jax.generation.params import SamplingParams
from corea_jax.generation.steps import SamplingScalars
from corea_jax.models import (ModelConfig, KVCache, init_cache, positions_from_mask, cache_shardings,
                              param_shapes, param_shardings)


@flax.struct.dataclass
class _LoopState:
    step: jax.Array  # [] tokens generated so far
    tokens: jax.Array  # [B, N] int32
    logprobs: jax.Array  # [B, N] float32
    position: jax.Array  # [B] RoPE position of the token fed next
    done: jax.Array  # [B] bool
    cache: KVCache


@dataclasses.dataclass(frozen=True)
class GenerationProgram:
    """The engine's generation program (prefill a chunk into a KV cache, then a `while_loop`
    decode), keyed by its static settings: hashable, one compiled program per instance.

    `program(params, cache, chunk_ids, chunk_mask, start_positions, keys, eos_ids, scalars)`
    runs it (jitted, the cache donated); `program.lower(*args)` lowers it for ahead-of-time
    compiles, e.g. on `program.abstract_args(...)` (what `corea_jax.planning` does).

    Attributes:
      config: the model (its dtype and layer layout as the params are stored).
      new_bucket: token slots for new tokens (>= max_new_tokens; a power of two, see `for_sampling`).
      greedy: argmax decoding (temperature 0) instead of sampling.
      filtered: sampling applies top-k / top-p.
      shared_prefix: the chunk holds U distinct prompts, prefilled once each into an empty
        cache and copied to the rows `source` names (n samples of a prompt: prefill / n).
    """

    config: ModelConfig
    new_bucket: int
    greedy: bool = True
    filtered: bool = False
    shared_prefix: bool = False

    @classmethod
    def for_sampling(cls, config: ModelConfig, sampling: SamplingParams,
                     shared_prefix: bool = False) -> "GenerationProgram":
        """The program `generate` runs for `sampling` (its new-token budget bucketed)."""
        return cls(config, steps.bucket(sampling.max_new_tokens), sampling.greedy,
                   (not sampling.greedy) and (sampling.top_k > 0 or sampling.top_p < 1), shared_prefix)

    def __call__(self, params, cache: KVCache, chunk_ids, chunk_mask, start_positions, keys, eos_ids,
                 scalars: SamplingScalars, source=None):
        """Feeds a left-padded chunk into `cache`, then generates up to `scalars.max_new_tokens`.

        The first turn feeds the prompt into an empty cache; a follow-up turn feeds its suffix
        into the cache the first turn returned (only the new tokens cost a forward pass).

        Args:
          params: the model's parameters (`config`'s layout).
          cache: KVCache with at least C + new_bucket free slots (donated).
          chunk_ids, chunk_mask: [B, C] int32 / bool, left-padded tokens to feed ([U, C] with
            `shared_prefix`: the distinct prompts, into an empty cache).
          start_positions: [B] int32 RoPE position of each row's first chunk token (unused
            with `shared_prefix`: prompts start at 0).
          keys: [B] typed PRNG keys, one per row. eos_ids: [E] int32 (-1 pads).
          source: with `shared_prefix`, [B] int32: the chunk row each row continues.
        Returns:
          tokens [B, new_bucket] int32, logprobs [B, new_bucket] float32 (see `Completion`),
          lengths [B] (tokens generated, EOS included), hit_eos [B], steps [] (tokens generated
          by the longest row; all but the last of each row were fed back), and the cache.
        """
        return _generate_program(self, params, cache, chunk_ids, chunk_mask, start_positions, keys,
                                 eos_ids, scalars, source)

    def lower(self, *args) -> jax.stages.Lowered:
        """`jax.jit(...).lower` of the program on concrete or abstract (sharded) arguments."""
        return _generate_program.lower(self, *args)

    def abstract_args(self, batch_size: int, prompt_length: int, mesh=None) -> tuple:
        """ShapeDtypeStructs of every argument for `batch_size` rows of prompts of up to
        `prompt_length` tokens (bucketed as `generate` does), sharded on `mesh` as `generate`
        places them (params by the sharding rules, cache and rows over the batch axes)."""
        b, prompt_bucket = batch_size, steps.bucket(prompt_length)
        cache = jax.eval_shape(lambda: init_cache(self.config, b, prompt_bucket + self.new_bucket))
        keys = jax.eval_shape(lambda: jax.random.split(jax.random.key(0), b))
        args = (param_shapes(self.config), cache, jax.ShapeDtypeStruct((b, prompt_bucket), jnp.int32),
                jax.ShapeDtypeStruct((b, prompt_bucket), jnp.bool_), jax.ShapeDtypeStruct((b,), jnp.int32),
                keys, jax.ShapeDtypeStruct((1,), jnp.int32),
                jax.eval_shape(lambda: SamplingScalars.of(SamplingParams(max_new_tokens=1))))
        if mesh is None:
            return args
        from corea_jax.parallel import sharding as sharding_lib

        rows = lambda x: sharding_lib.batch_sharding(x.shape, mesh)  # noqa: E731
        shardings = (param_shardings(self.config, mesh),
                     cache_shardings(self.config, b, prompt_bucket + self.new_bucket, mesh),
                     rows(args[2]), rows(args[3]), rows(args[4]), rows(keys), sharding_lib.replicated(mesh),
                     jax.tree.map(lambda _: sharding_lib.replicated(mesh), args[7]))
        return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), args, shardings)


@functools.partial(jax.jit, static_argnums=0, donate_argnums=2)
def _generate_program(program: GenerationProgram, params, cache: KVCache, chunk_ids, chunk_mask,
                      start_positions, keys, eos_ids, scalars: SamplingScalars, source=None):
    """`GenerationProgram.__call__`."""
    steps.count_trace()
    config, new_bucket = program.config, program.new_bucket
    batch = keys.shape[0]

    if program.shared_prefix:
        logits, small, end = steps.prefill_distinct(config, params, chunk_ids, chunk_mask)
        logits, position = logits[source], end[source]
        cache = steps.place_rows(cache, small, source, jnp.arange(batch), 0).replace(index=small.index)
    else:
        positions = start_positions[:, None] + positions_from_mask(chunk_mask)
        logits, cache = steps.forward(config, params, chunk_ids, positions, chunk_mask, cache)
        logits, position = logits[:, -1], positions[:, -1] + 1
    at_step = lambda step: jnp.full((batch,), step, jnp.int32)  # noqa: E731  every row at the same step
    token, logprob = steps.choose(program, scalars, logits, keys, at_step(0))
    state = _LoopState(
        step=jnp.ones((), jnp.int32),
        tokens=jnp.zeros((batch, new_bucket), jnp.int32).at[:, 0].set(token),
        logprobs=jnp.zeros((batch, new_bucket), jnp.float32).at[:, 0].set(logprob),
        position=position,
        done=steps.is_eos(token, eos_ids, scalars),
        cache=cache,
    )

    def cond(s: _LoopState):
        return (s.step < scalars.max_new_tokens) & ~jnp.all(s.done)

    def body(s: _LoopState):
        last = jax.lax.dynamic_index_in_dim(s.tokens, s.step - 1, axis=1, keepdims=True)
        logits, cache = steps.forward(config, params, last, s.position[:, None], jnp.ones_like(last, bool),
                                 s.cache)
        token, logprob = steps.choose(program, scalars, logits[:, 0], keys, at_step(s.step))
        token = jnp.where(s.done, 0, token)
        logprob = jnp.where(s.done, 0.0, logprob)
        return _LoopState(
            step=s.step + 1,
            tokens=jax.lax.dynamic_update_index_in_dim(s.tokens, token, s.step, axis=1),
            logprobs=jax.lax.dynamic_update_index_in_dim(s.logprobs, logprob, s.step, axis=1),
            position=s.position + 1,
            done=s.done | steps.is_eos(token, eos_ids, scalars),
            cache=cache,
        )

    state = jax.lax.while_loop(cond, body, state)
    generated = jnp.arange(new_bucket)[None, :] < state.step
    is_end = steps.is_eos(state.tokens, eos_ids, scalars) & generated
    hit_eos = jnp.any(is_end, axis=1)
    first_end = jnp.argmax(is_end, axis=1)
    lengths = jnp.where(hit_eos, first_end + 1, jnp.minimum(state.step, scalars.max_new_tokens))
    # Replicated on a mesh, so every process (host) can read the results it asked for.
    replicated = lambda x: nn.with_logical_constraint(x, (None,) * x.ndim)  # noqa: E731
    tokens, logprobs, lengths, hit_eos = map(replicated, (state.tokens, state.logprobs, lengths, hit_eos))
    return tokens, logprobs, lengths, hit_eos, state.step, state.cache
