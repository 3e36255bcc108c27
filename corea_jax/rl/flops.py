"""Model FLOPs of a training step, for MFU: matmul FLOPs the computation needs.

Per token a forward pass costs 2 FLOPs per weight it multiplies (the embedding lookup is
not a matmul, the LM head is, and we compute logits only where a loss or a sample needs
them) plus attention scores and values, 4 * layers * heads * head_dim * context. A
backward pass costs twice the forward.
"""

from __future__ import annotations

from corea_jax.models import ModelConfig


def layer_weights(config: ModelConfig) -> int:
    """Matmul weights of all decoder layers (no embedding, no LM head)."""
    head_weights = config.vocab_size * config.hidden_size
    embed = config.vocab_size * config.hidden_size
    return config.num_params - embed - (0 if config.tie_word_embeddings else head_weights)


def forward_flops(config: ModelConfig, tokens: int, logit_tokens: int, context: float) -> float:
    """FLOPs of a forward pass over `tokens` tokens with mean attended context `context`,
    computing logits for `logit_tokens` of them."""
    attention = 4 * config.num_layers * config.num_heads * config.head_dim * context
    return (2 * layer_weights(config) + attention) * tokens \
        + 2 * config.vocab_size * config.hidden_size * logit_tokens


def update_flops(config: ModelConfig, prompt_tokens: int, completion_tokens: int,
                 prompt_length: float, completion_length: float) -> float:
    """Forward + backward (3x forward) of the shared-prompt loss: prompts once per group,
    logits for completion tokens only."""
    context_prompt = prompt_length / 2
    context_completion = prompt_length + completion_length / 2
    return 3 * (forward_flops(config, prompt_tokens, 0, context_prompt)
                + forward_flops(config, completion_tokens, completion_tokens, context_completion))


def rollout_flops(config: ModelConfig, prefill_tokens: int, generated_tokens: int,
                  prompt_length: float, completion_length: float) -> float:
    """Sampling: a prefill of `prefill_tokens` prompt tokens (each prompt once: the engine
    shares it among the prompt's samples), then one forward per generated token."""
    return forward_flops(config, prefill_tokens, 0, prompt_length / 2) \
        + forward_flops(config, generated_tokens, generated_tokens, prompt_length + completion_length / 2)
