"""The GRPO loss: group advantages, loss aggregation weights, and the clipped surrogate.

Shapes: B questions, G completions per question, N completion rows, C completion tokens.
A micro-batch (see `logprobs.py` for its layout) also carries
  advantages        [N]     float32
  weights           [N, C]  float32 aggregation weights (`aggregation_weights`), 0 off completions
  sampler_logprobs  [N, C]  log-probs the generation engine reported
  old_logprobs      [N, C]  behaviour log-probs for the importance ratio (unused when on-policy)
  ref_logprobs      [N, C]  reference-model log-probs (read only when kl_beta > 0)

Per completion token, with ratio r = exp(logp - old_logp) and advantage A:
  loss_t = -min(r A, clip(r, 1 - eps_low, 1 + eps_high) A) + beta * k3(ref || policy),
  k3 = exp(ref - logp) - (ref - logp) - 1,
and the loss is sum(weights * loss_t): weights make it a token mean, a mean of sequence
means, or the Dr. GRPO sum over a fixed length, over the whole (optimizer) batch.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from corea_jax.models import ModelConfig
from corea_jax.rl.logprobs import completion_logprobs

AGGREGATIONS = ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm")
ADVANTAGES = ("std", "mean")


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """Static settings of the GRPO loss (hashable: a jit static argument).

    on_policy: the params are those that sampled the batch, so the behaviour log-probs
      are the current ones: ratio = exp(logp - stop_gradient(logp)) = 1 exactly.
    temperature: the rollout's sampling temperature; log-probs (policy, old, reference) are
      taken under softmax(logits / temperature), the distribution the rollout was drawn from.
    Build it from a run config with `rl.config.loss_config`.
    """

    eps_low: float = 0.2
    eps_high: float = 0.2
    kl_beta: float = 0.0
    on_policy: bool = True
    temperature: float = 1.0


def group_advantages(rewards: np.ndarray, scale: str = "std", eps: float = 1e-6) -> np.ndarray:
    """(r - mean_g) / (std_g + eps) or r - mean_g, per group: [B, G] -> float32 [B, G].

    std is the population standard deviation of the group (ddof = 0).
    """
    if scale not in ADVANTAGES:
        raise ValueError(f"scale: expected one of {ADVANTAGES}, found {scale!r}")
    rewards = np.asarray(rewards, np.float64)
    centred = rewards - rewards.mean(axis=-1, keepdims=True)
    if scale == "std":
        centred = centred / (rewards.std(axis=-1, keepdims=True) + eps)
    return centred.astype(np.float32)


def tied_groups(rewards: np.ndarray) -> np.ndarray:
    """bool [B]: every completion of the group got the same reward (zero advantage)."""
    rewards = np.asarray(rewards)
    return np.all(rewards == rewards[..., :1], axis=-1)


def aggregation_weights(completion_mask: np.ndarray, mode: str, max_length: int | None = None) -> np.ndarray:
    """Weights [N, C] (float32) that turn per-token losses into the batch loss.

    token_mean:              1 / (completion tokens in the batch)
    seq_mean_token_mean:     1 / (rows * the row's length)        (GRPO)
    seq_mean_token_sum_norm: 1 / (rows * max_length)              (Dr. GRPO)
    Rows without completion tokens (padding) count in no denominator.
    """
    mask = np.asarray(completion_mask, bool)
    lengths = mask.sum(axis=-1, keepdims=True).astype(np.float64)
    rows = max(int((lengths > 0).sum()), 1)
    if mode == "token_mean":
        weights = mask / max(lengths.sum(), 1.0)
    elif mode == "seq_mean_token_mean":
        weights = mask / np.maximum(lengths, 1.0) / rows
    elif mode == "seq_mean_token_sum_norm":
        if not max_length:
            raise ValueError("seq_mean_token_sum_norm needs max_length (the completion budget)")
        weights = mask / float(max_length) / rows
    else:
        raise ValueError(f"mode: expected one of {AGGREGATIONS}, found {mode!r}")
    return weights.astype(np.float32)


def policy_objective(logprobs: jax.Array, batch, cfg: LossConfig):
    """The GRPO loss from per-token log-probs [N, C]; returns (loss, token sums for metrics)."""
    mask = batch["completion_mask"]
    old = jax.lax.stop_gradient(logprobs) if cfg.on_policy else batch["old_logprobs"]
    # Padding holds arbitrary numbers: keep exp() finite there, the weights zero it anyway.
    log_ratio = jnp.where(mask, logprobs - old, 0.0)
    ratio = jnp.exp(log_ratio)
    advantages = batch["advantages"][:, None]
    clipped_ratio = jnp.clip(ratio, 1.0 - cfg.eps_low, 1.0 + cfg.eps_high)
    per_token = -jnp.minimum(ratio * advantages, clipped_ratio * advantages)
    if cfg.kl_beta:
        log_ref_ratio = jnp.where(mask, batch["ref_logprobs"] - logprobs, 0.0)
        kl = jnp.exp(log_ref_ratio) - log_ref_ratio - 1.0
        per_token = per_token + cfg.kl_beta * kl
    else:
        kl = jnp.zeros_like(per_token)
    loss = jnp.sum(batch["weights"] * per_token)
    clipped = (((ratio < 1.0 - cfg.eps_low) & (advantages < 0))
               | ((ratio > 1.0 + cfg.eps_high) & (advantages > 0)))
    m = mask.astype(jnp.float32)
    sg = jax.lax.stop_gradient
    sums = {
        "tokens": jnp.sum(m),
        "clipped": jnp.sum(m * clipped),
        "ratio": jnp.sum(m * sg(ratio)),
        "kl": jnp.sum(m * sg(kl)),
        "logprob": jnp.sum(m * sg(logprobs)),
        "sampler_gap": jnp.sum(m * jnp.abs(batch["sampler_logprobs"] - sg(logprobs))),
    }
    return loss, sums


def grpo_loss(params, batch, *, model_config: ModelConfig, loss_config: LossConfig):
    """The jittable GRPO loss of one micro-batch: (loss, token sums incl. entropy)."""
    logprobs, entropy = completion_logprobs(model_config, params, batch, with_entropy=True,
                                            temperature=loss_config.temperature)
    loss, sums = policy_objective(logprobs, batch, loss_config)
    sums["entropy"] = jnp.sum(entropy)
    return loss, sums


def sft_loss(params, batch, *, model_config: ModelConfig, loss_config: LossConfig | None = None):
    """Supervised loss of one micro-batch: -sum(weights * log p(target token)), completions only
    (temperature 1: SFT fits the model's own distribution)."""
    del loss_config
    logprobs, entropy = completion_logprobs(model_config, params, batch, with_entropy=True)
    m = batch["completion_mask"].astype(jnp.float32)
    loss = -jnp.sum(batch["weights"] * logprobs)
    sums = {"tokens": jnp.sum(m), "logprob": jnp.sum(m * jax.lax.stop_gradient(logprobs)),
            "entropy": jnp.sum(entropy)}
    return loss, sums
