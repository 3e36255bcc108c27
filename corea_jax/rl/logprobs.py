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

from corea_jax.models.config import ModelConfig
from corea_jax.models.decoder import Decoder, init_cache, positions_from_mask


def completion_logits(config: ModelConfig, params, batch) -> jax.Array:
    """Logits [N, C, V] (float32); row n, position t predicts completion_tokens[n, t]."""
    prompt_tokens, prompt_mask = batch["prompt_tokens"], batch["prompt_mask"]
    completion_tokens, completion_mask = batch["completion_tokens"], batch["completion_mask"]
    num_prompts, prompt_len = prompt_tokens.shape
    num_rows, completion_len = completion_tokens.shape
    group = num_rows // num_prompts
    decoder = Decoder(config)
    cache = init_cache(config, num_prompts, prompt_len + completion_len)
    first_logits, cache = decoder.apply({"params": params}, prompt_tokens,
                                        positions_from_mask(prompt_mask), prompt_mask, cache,
                                        last_only=True)
    cache = cache.replace(k=jnp.repeat(cache.k, group, axis=1), v=jnp.repeat(cache.v, group, axis=1),
                          valid=jnp.repeat(cache.valid, group, axis=0))
    start = jnp.repeat(jnp.sum(prompt_mask, axis=-1, dtype=jnp.int32), group)
    positions = start[:, None] + jnp.arange(completion_len, dtype=jnp.int32)[None, :]
    rest_logits, _ = decoder.apply({"params": params}, completion_tokens, positions,
                                   completion_mask, cache)
    return jnp.concatenate([jnp.repeat(first_logits, group, axis=0), rest_logits[:, :-1]], axis=1)


def completion_logprobs(config: ModelConfig, params, batch, with_entropy: bool = False):
    """log p(completion_tokens) [N, C] float32 (0 on padding), and the entropy [N, C] if asked.

    log p = logit[token] - logsumexp(logits): no [N, C, V] log-softmax is materialised, and
    the entropy (logsumexp - E_p[logit]) comes from the same pass over the logits.
    """
    logits = completion_logits(config, params, batch)
    tokens = batch["completion_tokens"]
    mask = batch["completion_mask"]
    log_normalizer = jax.nn.logsumexp(logits, axis=-1)
    target = jnp.take_along_axis(logits, tokens[..., None], axis=-1)[..., 0]
    token_logprobs = jnp.where(mask, target - log_normalizer, 0.0)
    if not with_entropy:
        return token_logprobs
    logits, log_normalizer = jax.lax.stop_gradient((logits, log_normalizer))
    probs = jnp.exp(logits - log_normalizer[..., None])
    entropy = log_normalizer - jnp.sum(probs * logits, axis=-1)
    return token_logprobs, jnp.where(mask, entropy, 0.0)
