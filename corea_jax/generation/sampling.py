"""Next-token choice from logits: greedy, temperature, top-k and top-p, one function each.

All functions take float32 logits [B, V] and return int32 tokens [B]. Settings are traced
values (changing them does not recompile); only "greedy or not" and "filter or not" are static.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

_NEG_INF = jnp.finfo(jnp.float32).min


_ARGMAX_BLOCK = 128


def greedy(logits: jax.Array) -> jax.Array:
    """Most likely token [B] (the first one on ties, as `jnp.argmax`).

    Two stages, the block with the largest logit and then the position inside it: XLA's CPU
    argmax over a 150K vocabulary is a scalar loop (12.7 ms for [32, 151936] on the project's
    CPU, 0.5 ms in two stages)."""
    b, v = logits.shape
    pad = -v % _ARGMAX_BLOCK
    blocks = jnp.pad(logits, ((0, 0), (0, pad)), constant_values=-jnp.inf).reshape(b, -1, _ARGMAX_BLOCK)
    block = jnp.argmax(blocks.max(axis=-1), axis=-1)
    inner = jnp.argmax(jnp.take_along_axis(blocks, block[:, None, None], axis=1)[:, 0], axis=-1)
    return (block * _ARGMAX_BLOCK + inner).astype(jnp.int32)


def categorical(keys: jax.Array, logits: jax.Array) -> jax.Array:
    """One draw [B] per row from softmax(logits) [B, V], row b with keys[b]: exactly
    `jax.random.categorical`'s draws (the argmax of the logits plus Gumbel noise from the
    row's key), its argmax in `greedy`'s two stages (85 of its 167 ms for [64, 49152] on the
    project's CPU was XLA's scalar argmax loop)."""
    noise = jax.vmap(lambda key: jax.random.gumbel(key, logits.shape[-1:], logits.dtype))(keys)
    return greedy(noise + logits)


def top_k_top_p_mask(logits: jax.Array, top_k: jax.Array, top_p: jax.Array) -> jax.Array:
    """Boolean [B, V]: the tokens that top-k (k <= 0: off) and top-p (p = 1: off) allow.

    As transformers and vLLM: top-k first (ties with the k-th logit kept), the softmax
    renormalised over its tokens, then top-p keeps the smallest set of most likely of them
    whose renormalised probability reaches p (the most likely token is always kept). One
    descending sort serves both filters.
    """
    vocab = logits.shape[-1]
    sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]
    k = jnp.clip(jnp.where(top_k > 0, top_k, vocab), 1, vocab)
    kth = jnp.take_along_axis(sorted_logits, jnp.broadcast_to(k - 1, (logits.shape[0], 1)), axis=-1)
    in_top_k = sorted_logits >= kth
    probs = jax.nn.softmax(jnp.where(in_top_k, sorted_logits, -jnp.inf), axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    # p = 1 must keep every token, even those whose float32 mass_before rounds up to 1.
    keep_sorted = in_top_k & ((mass_before < top_p) | (top_p >= 1))
    # The smallest logit still kept is the threshold in the unsorted vocabulary.
    threshold = jnp.min(jnp.where(keep_sorted, sorted_logits, jnp.inf), axis=-1, keepdims=True)
    return logits >= threshold


def sampling_logits(logits: jax.Array, temperature: jax.Array, top_k: jax.Array, top_p: jax.Array, *,
                    filtered: bool) -> jax.Array:
    """The logits [B, V] of the distribution `sample` draws from: logits / temperature, and with
    `filtered` the tokens top-k / top-p drop set to the float32 minimum (probability 0)."""
    scaled = logits / jnp.maximum(temperature, 1e-6)
    if filtered:
        scaled = jnp.where(top_k_top_p_mask(scaled, top_k, top_p), scaled, _NEG_INF)
    return scaled


def sample(logits: jax.Array, keys: jax.Array, temperature: jax.Array, top_k: jax.Array,
           top_p: jax.Array, *, filtered: bool) -> jax.Array:
    """Samples one token per row [B] from softmax(logits / temperature) (optionally filtered).

    keys: [B] typed PRNG keys, one per row, so a row's samples do not depend on its batch.
    """
    return categorical(keys, sampling_logits(logits, temperature, top_k, top_p, filtered=filtered))
