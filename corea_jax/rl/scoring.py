"""Grading a rollout: texts -> rewards (corea_jax.rewards) -> advantages, and their metrics."""

from __future__ import annotations

import numpy as np

from corea_jax import calibration
from corea_jax import rewards


def decode_completions(tokenizer, completion_tokens: np.ndarray,
                       completion_mask: np.ndarray) -> list[list[str]]:
    """[B][G] completion texts."""
    num_prompts, group = completion_mask.shape[:2]
    return [[tokenizer.decode(completion_tokens[b, g][completion_mask[b, g]].tolist(),
                              skip_special_tokens=True) for g in range(group)] for b in range(num_prompts)]


def score_texts(texts: list[list[str]], golds: list[str], task: str, reward_cfg) -> dict[str, np.ndarray]:
    """`rewards.rewards_from_texts`: reward terms, correct, confidence, format_ok, all [B, G]."""
    return rewards.rewards_from_texts(texts, golds, task, reward_cfg)


def reward_metrics(scores: dict[str, np.ndarray]) -> dict[str, float]:
    """Reward terms, accuracy, format rate, and calibration of the stated confidences."""
    out = {f"reward_{name}": float(np.mean(scores[name]))
           for name in ("correctness", "format", "calibration")}
    out["reward_mean"] = float(np.mean(scores["total"]))
    out["reward_std"] = float(np.std(scores["total"]))
    out["accuracy"] = float(np.mean(scores["correct"]))
    out["format_rate"] = float(np.mean(scores["format_ok"]))
    conf = scores["confidence"].ravel()
    stated = ~np.isnan(conf) & scores["format_ok"].ravel().astype(bool)
    out["confidence_rate"] = float(np.mean(stated))
    nan = float("nan")
    if stated.any():
        c, y = conf[stated], scores["correct"].ravel()[stated]
        out.update(confidence_mean=float(c.mean()), ece=calibration.ece(c, y),
                   brier=calibration.brier(c, y), auroc=calibration.auroc(c, y))
    else:
        out.update(confidence_mean=nan, ece=nan, brier=nan, auroc=nan)
    return out
