"""Per-token log-probs of completions under the current params, with the prompt run once per group.

Batch layout (one micro-batch), shared by the GRPO and SFT losses:
  prompt_tokens, prompt_mask         [Bp, P]  left-padded prompts
  completion_tokens, completion_mask [N, C]   right-padded completions, N = Bp * g;
                                              rows [i*g, (i+1)*g) continue prompt i

The prompt pass fills a KV cache that the g completions of the prompt share (gradients
of the shared prompt computation sum over them), so a group of G completions costs one
prompt forward, not G. It is the generation engine's layout (a left-padded prompt, then
new tokens in the following cache slots) run through the same `Decoder` graph.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from corea_jax.models import ModelConfig, Decoder, init_cache, lm_head_weights, positions_from_mask


# Rows x positions whose logits exist at once: the [N, C, V] float32 logits of a long
# completion (8 x 4096 x 152K = 20 GB) never materialise; chunks are recomputed in the
# backward pass (jax.checkpoint), so memory holds one chunk of logits and its gradient.
LOGIT_CHUNK_TOKENS = 1024


def completion_hidden(config: ModelConfig, params, batch) -> jax.Array:
    """Final normed hidden states [N, C, D]; row n, position t predicts completion_tokens[n, t]."""
    prompt_tokens, prompt_mask = batch["prompt_tokens"], batch["prompt_mask"]
    completion_tokens, completion_mask = batch["completion_tokens"], batch["completion_mask"]
    num_prompts, prompt_len = prompt_tokens.shape
    num_rows, completion_len = completion_tokens.shape
    group = num_rows // num_prompts
    decoder = Decoder(config)
    cache = init_cache(config, num_prompts, prompt_len + completion_len)
    prompt_hidden, cache = decoder.apply({"params": params}, prompt_tokens, positions_from_mask(prompt_mask),
                                         prompt_mask, cache, head=False, cache_carry=False)
    batch_axis = 1 if config.scan_layers else 0  # [L, B, ...] or one [B, ...] per layer
    repeat = lambda x: jnp.repeat(x, group, axis=batch_axis)  # noqa: E731
    cache = cache.replace(k=jax.tree.map(repeat, cache.k), v=jax.tree.map(repeat, cache.v),
                          valid=jnp.repeat(cache.valid, group, axis=0))
    start = jnp.repeat(jnp.sum(prompt_mask, axis=-1, dtype=jnp.int32), group)
    positions = start[:, None] + jnp.arange(completion_len, dtype=jnp.int32)[None, :]
    rest_hidden, _ = decoder.apply({"params": params}, completion_tokens[:, :-1], positions[:, :-1],
                                   completion_mask[:, :-1], cache, head=False, cache_carry=False)
    first = jnp.repeat(prompt_hidden[:, -1:], group, axis=0)
    return jnp.concatenate([first, rest_hidden], axis=1)


def _chunk_stats(hidden, head, tokens, with_entropy: bool, temperature: float):
    """(log p(tokens), entropy or None) [n, c] of one chunk, from hidden [n, c, D], under
    softmax(logits / temperature)."""
    logits = jnp.einsum("ncd,dv->ncv", hidden, head, preferred_element_type=jnp.float32)
    if temperature != 1.0:
        logits = logits / temperature
    log_normalizer = jax.nn.logsumexp(logits, axis=-1)
    target = jnp.take_along_axis(logits, tokens[..., None], axis=-1)[..., 0]
    token_logprobs = target - log_normalizer
    if not with_entropy:
        return token_logprobs, None
    logits, log_normalizer = jax.lax.stop_gradient((logits, log_normalizer))
    probs = jnp.exp(logits - log_normalizer[..., None])
    return token_logprobs, log_normalizer - jnp.sum(probs * logits, axis=-1)


def completion_logprobs(config: ModelConfig, params, batch, with_entropy: bool = False,
                        temperature: float = 1.0):
    """log p(completion_tokens) [N, C] float32 (0 on padding), and the entropy [N, C] if asked.

    p = softmax(logits / temperature), the distribution the generation engine sampled from
    at that temperature (its `Completion.logprobs`), so behaviour and trainer log-probs of a
    rollout agree (verl and TRL score at the rollout temperature too). log p =
    logit[token] - logsumexp(logits), the LM head applied LOGIT_CHUNK_TOKENS at a time; the
    entropy (logsumexp - E_p[logit]) comes from the same pass over each chunk.
    """
    tokens = batch["completion_tokens"]
    mask = batch["completion_mask"]
    hidden = completion_hidden(config, params, batch)
    head = lm_head_weights(config, params)
    num_rows, length = tokens.shape
    chunk = max(1, min(length, LOGIT_CHUNK_TOKENS // max(num_rows, 1)))
    num_chunks = -(-length // chunk)
    pad = num_chunks * chunk - length
    hidden = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0)))
    padded_tokens = jnp.pad(tokens, ((0, 0), (0, pad)))
    # [chunks, N, chunk, ...]: lax.map runs one chunk at a time.
    hidden = hidden.reshape(num_rows, num_chunks, chunk, -1).swapaxes(0, 1)
    padded_tokens = padded_tokens.reshape(num_rows, num_chunks, chunk).swapaxes(0, 1)
    stats = jax.checkpoint(lambda h, t: _chunk_stats(h, head, t, with_entropy, float(temperature)))
    token_logprobs, entropy = jax.lax.map(lambda xs: stats(*xs), (hidden, padded_tokens))
    unchunk = lambda x: x.swapaxes(0, 1).reshape(num_rows, num_chunks * chunk)[:, :length]
    token_logprobs = jnp.where(mask, unchunk(token_logprobs), 0.0)
    if not with_entropy:
        return token_logprobs
    return token_logprobs, jnp.where(mask, unchunk(entropy), 0.0)
