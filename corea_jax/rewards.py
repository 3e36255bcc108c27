"""Per-completion GRPO rewards: correctness, format and confidence calibration (RLCC).

Every function works on a batch of groups: arrays [B, G] (any leading shape, group
axis last), one entry per completion, G completions per question. numpy on host: the
trainer calls this after grading, before computing advantages.

  total = correctness_weight * correct                      (0/1)
        + format_weight      * format_ok                    (0/1)
        + calibration_weight * calibration                  (-distance(c, p) <= 0)
        + format_penalty     * (1 - format_ok)

calibration is 0 for a completion whose format fails (no confidence, no credit); the
format terms make that never better than a well-formed completion in the presets.
The target p is the completion's own correctness ("self") or the fraction correct
among the G completions of the same question ("group_accuracy", COREA's estimate).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from corea_jax import grading

DISTANCES = ("l1", "brier", "kl")
WEIGHTS = ("correctness_weight", "format_weight", "calibration_weight")
TARGETS = ("group_accuracy", "self")


@dataclasses.dataclass(frozen=True)
class RewardConfig:
    """Weights and choices of the reward; see the module docstring for the formula.

    calibration_distance: "l1" |c - p| (COREA), "brier" (c - p)^2, or "kl", the
      Bernoulli KL(p || c) in nats with c clipped to [kl_eps, 1 - kl_eps].
    calibration_target: "group_accuracy" or "self".
    format_penalty: added to the total of a completion whose format fails (<= 0).
    """

    correctness_weight: float = 1.0
    format_weight: float = 0.0
    calibration_weight: float = 0.0
    calibration_distance: str = "l1"
    calibration_target: str = "group_accuracy"
    format_penalty: float = 0.0
    kl_eps: float = 1e-3

    def __post_init__(self) -> None:
        if self.calibration_distance not in DISTANCES:
            raise ValueError(
                f"calibration_distance must be one of {DISTANCES}, got {self.calibration_distance!r}"
            )
        if self.calibration_target not in TARGETS:
            raise ValueError(f"calibration_target must be one of {TARGETS}, got {self.calibration_target!r}")
        if not 0.0 < self.kl_eps < 0.5:
            raise ValueError(f"kl_eps must be in (0, 0.5), got {self.kl_eps}")

    @property
    def requires_confidence(self) -> bool:
        """Whether a well-formed completion must state a confidence."""
        return self.calibration_weight != 0.0


PRESETS: dict[str, RewardConfig] = {
    # Plain RL with verifiable rewards: right answer, in the asked-for format.
    "rlvr": RewardConfig(correctness_weight=1.0, format_weight=0.5),
    # COREA: L1 distance to the group's accuracy.
    "rlcc_l1": RewardConfig(
        correctness_weight=1.0,
        format_weight=0.5,
        calibration_weight=1.0,
        calibration_distance="l1",
        calibration_target="group_accuracy",
        format_penalty=-1.0,
    ),
    "rlcc_brier": RewardConfig(
        correctness_weight=1.0,
        format_weight=0.5,
        calibration_weight=1.0,
        calibration_distance="brier",
        calibration_target="group_accuracy",
        format_penalty=-1.0,
    ),
    # RLCR (Damani et al., 2025): correctness minus the Brier score of the confidence
    # against the completion's own correctness. A missing confidence costs as much as
    # the worst Brier score.
    "rlcr": RewardConfig(
        correctness_weight=1.0,
        calibration_weight=1.0,
        calibration_distance="brier",
        calibration_target="self",
        format_penalty=-1.0,
    ),
}


def get_preset(name: str) -> RewardConfig:
    """The preset `name` from `PRESETS`; ValueError naming the valid ones otherwise."""
    if name not in PRESETS:
        raise ValueError(f"unknown reward preset name={name!r}; valid: {sorted(PRESETS)}")
    return PRESETS[name]


def reward_config(preset: str, **weights: float | None) -> RewardConfig:
    """The preset `preset` with each weight in `weights` (WEIGHTS) that is not None in place of
    the preset's, e.g. reward_config("rlcc_l1", calibration_weight=0.5)."""
    unknown = sorted(set(weights) - set(WEIGHTS))
    if unknown:
        raise ValueError(f"unknown reward weights {unknown}; valid: {list(WEIGHTS)}")
    for name, value in weights.items():
        if value is not None and not 0 <= value < float("inf"):
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return dataclasses.replace(get_preset(preset), **{k: float(v) for k, v in weights.items() if v is not None})


def group_accuracy(correct: np.ndarray) -> np.ndarray:
    """Fraction correct in each group, broadcast back: bool [..., G] -> float64 [..., G]."""
    correct = np.asarray(correct, dtype=np.float64)
    return np.broadcast_to(correct.mean(axis=-1, keepdims=True), correct.shape).copy()


def calibration_distance(confidence: np.ndarray, target: np.ndarray, kind: str, kl_eps: float = 1e-3) -> np.ndarray:
    """Elementwise distance between confidence c and target p, both in [0, 1]."""
    c = np.asarray(confidence, dtype=np.float64)
    p = np.asarray(target, dtype=np.float64)
    if kind == "l1":
        return np.abs(c - p)
    if kind == "brier":
        return (c - p) ** 2
    if kind == "kl":
        c = np.clip(c, kl_eps, 1.0 - kl_eps)
        # x log(x / y) with 0 log 0 = 0: the target is often exactly 0 or 1.
        def xlog(x, y):
            safe = np.where(x > 0, x, 1.0)
            return np.where(x > 0, x * np.log(safe / y), 0.0)

        return xlog(p, c) + xlog(1.0 - p, 1.0 - c)
    raise ValueError(f"kind must be one of {DISTANCES}, got kind={kind!r}")


def compute_rewards(
    correct: np.ndarray,
    confidence: np.ndarray | None,
    format_ok: np.ndarray,
    cfg: RewardConfig,
) -> dict[str, np.ndarray]:
    """Per-completion reward terms.

    Args:
      correct: bool [..., G], the answer was graded correct.
      confidence: float [..., G] in [0, 1], NaN where none was parsed; may be None
        when cfg does not use calibration.
      format_ok: bool [..., G], the completion followed the format (for a config that
        uses calibration, that includes a parsed confidence).
      cfg: weights and choices.

    Returns float64 [..., G] arrays: "correctness", "format", "target" (p),
    "calibration" (-distance, 0 where the format failed) and "total".
    """
    correct = np.asarray(correct)
    format_ok = np.asarray(format_ok)
    for name, array in (("correct", correct), ("format_ok", format_ok)):
        if array.ndim == 0:
            raise ValueError(f"{name} must have a group axis, got a scalar")
        if not np.isin(array, (0, 1)).all():
            raise ValueError(f"{name} must hold booleans or 0/1")
    if format_ok.shape != correct.shape:
        raise ValueError(f"format_ok shape {format_ok.shape} != correct shape {correct.shape}")
    correctness = correct.astype(np.float64)
    well_formed = format_ok.astype(bool)

    target = group_accuracy(correctness) if cfg.calibration_target == "group_accuracy" else correctness.copy()
    calibration = np.zeros_like(correctness)
    if cfg.requires_confidence:
        if confidence is None:
            raise ValueError("confidence is required when cfg.calibration_weight != 0")
        confidence = np.asarray(confidence, dtype=np.float64)
        if confidence.shape != correct.shape:
            raise ValueError(f"confidence shape {confidence.shape} != correct shape {correct.shape}")
        used = confidence[well_formed]
        if np.isnan(used).any():
            raise ValueError("confidence is NaN where format_ok is True")
        if ((used < 0) | (used > 1)).any():
            raise ValueError("confidence must lie in [0, 1] where format_ok is True")
        # NaN confidences of malformed completions never reach the distance.
        filled = np.where(well_formed, confidence, target)
        distance = calibration_distance(filled, target, cfg.calibration_distance, cfg.kl_eps)
        calibration = np.where(well_formed, -distance, 0.0)

    format_term = well_formed.astype(np.float64)
    total = (
        cfg.correctness_weight * correctness
        + cfg.format_weight * format_term
        + cfg.calibration_weight * calibration
        + cfg.format_penalty * (1.0 - format_term)
    )
    return {
        "correctness": correctness,
        "format": format_term,
        "target": target,
        "calibration": calibration,
        "total": total,
    }


def rewards_from_texts(
    responses: Sequence[Sequence[str]],
    golds: Sequence[str],
    task: str,
    cfg: RewardConfig,
    *,
    timeout_s: float | None = None,
) -> dict[str, np.ndarray]:
    """Grade B groups of G completions and compute their rewards.

    Args:
      responses: [B][G] completion texts; every group has the same G.
      golds: [B] gold answers, one per question (see `grading.grade`).
      task: "math", "gsm8k" or "choice".
    Returns `compute_rewards`'s dict plus "correct" (bool), "confidence" (NaN where
    none parsed) and "format_ok" (bool), all [B, G].
    """
    if len(responses) != len(golds):
        raise ValueError(f"responses has {len(responses)} groups but golds has {len(golds)}")
    sizes = {len(group) for group in responses}
    if len(sizes) > 1:
        raise ValueError(f"every group must have the same number of completions, got sizes {sorted(sizes)}")
    group_size = sizes.pop() if sizes else 0
    flat = [text for group in responses for text in group]
    flat_golds = [gold for gold in golds for _ in range(group_size)]
    kwargs = {} if timeout_s is None else {"timeout_s": timeout_s}
    correct = np.array(grading.grade_batch(flat, flat_golds, task, **kwargs), dtype=bool)
    confidence = np.array(
        [np.nan if (c := grading.parse_confidence(t)) is None else c for t in flat], dtype=np.float64
    )
    well_formed = np.array(
        [grading.format_ok(t, require_confidence=cfg.requires_confidence) for t in flat], dtype=bool
    )
    shape = (len(responses), group_size)
    correct, confidence, well_formed = correct.reshape(shape), confidence.reshape(shape), well_formed.reshape(shape)
    out = compute_rewards(correct, confidence, well_formed, cfg)
    out.update(correct=correct, confidence=confidence, format_ok=well_formed)
    return out
