"""Deferral thresholds: an item stays with the SLM when its confidence >= tau, else the LLM answers.

Every rule reads the calibration split only (disjoint from the test split). A missing
confidence (unparseable, NaN or None) always defers.

  fixed_threshold(tau)                        a given tau in [0, 1]
  paper_threshold(llm_correct)                COREA's rule: tau = the LLM's pass@1
  usage_threshold(confidence, target_usage)   the LLM answers the share nearest `target_usage`
  sweep(confidence)                           every distinct tau (the accuracy-cost frontier)
  risk_controlled_threshold(confidence, slm_correct, llm_correct, *, epsilon, delta)
      the smallest tau whose cascade pass@1 is, with probability >= 1 - delta over the
      calibration draw, at most epsilon below the LLM's (in expectation over exchangeable
      items); math.inf when none is certified. Its bound: signed_drop_upper_bound.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from scipy import special

RULES = ("fixed", "paper", "usage", "risk")

# Candidate taus of the risk-controlled rule, fixed before seeing data (fixed-sequence testing
# needs a data-independent order): a 0.01 grid, refined near 1 where token probabilities crowd.
DEFAULT_GRID = np.unique(np.concatenate([np.linspace(0.0, 1.0, 101),
                                         1.0 - np.logspace(-4, -2, 9)]))[::-1]


def as_confidence(values: Sequence[float | None]) -> np.ndarray:
    """Confidences as float64 with NaN where missing (None); values are clipped to [0, 1]."""
    out = np.asarray([math.nan if v is None else float(v) for v in values], np.float64)
    return np.clip(out, 0.0, 1.0)


def keeps(confidence: Sequence[float | None], tau: float) -> np.ndarray:
    """[N] bool: True where the SLM keeps the item (confidence >= tau; missing defers)."""
    conf = as_confidence(confidence)
    with np.errstate(invalid="ignore"):
        return np.where(np.isnan(conf), False, conf >= tau)


def _check_unit(name: str, value: float, *, open_interval: bool = False) -> float:
    ok = (0 < value < 1) if open_interval else (0 <= value <= 1)
    if not isinstance(value, (int, float, np.floating)) or not ok:
        interval = "(0, 1)" if open_interval else "[0, 1]"
        raise ValueError(f"{name}: expected a number in {interval}, found {value!r}")
    return float(value)


def fixed_threshold(tau: float) -> float:
    return check_tau(tau, "tau")


def check_tau(value, field: str = "tau") -> float:
    """A deferral threshold as every consumer takes it: a finite number in [0, 1], or math.inf,
    the explicit "defer everything" state (what the risk rule returns when nothing is certified).
    Booleans, NaN, strings and numbers outside [0, 1] are refused naming `field`."""
    ok = isinstance(value, (int, float, np.floating)) and not isinstance(value, (bool, np.bool_))
    if not ok or not (0 <= value <= 1 or value == math.inf):
        raise ValueError(f"{field}: expected a number in [0, 1] (or the defer-everything state), "
                         f"found {value!r}")
    return float(value)


def tau_to_json(tau: float) -> float | None:
    """tau for a JSON file or response: None stands for math.inf (defer everything), which JSON
    cannot spell."""
    return None if check_tau(tau) == math.inf else float(tau)


def tau_from_json(value, field: str = "tau", *, defer_everything: bool = False) -> float:
    """The inverse of `tau_to_json`: None (with defer_everything, or alone) -> math.inf."""
    if value is None:
        return math.inf
    tau = check_tau(value, field)
    if defer_everything and tau != math.inf:
        raise ValueError(f"{field}: expected null with defer_everything true, found {value!r}")
    return tau


def paper_threshold(llm_correct: Sequence[bool]) -> float:
    """COREA's rule: tau = the LLM's pass@1 on the calibration split."""
    llm_correct = np.asarray(llm_correct, bool)
    if llm_correct.size == 0:
        raise ValueError("llm_correct: expected at least one calibration item, found none")
    return float(llm_correct.mean())


def usage_threshold(confidence: Sequence[float | None], target_usage: float) -> float:
    """The tau whose realised LLM usage on these items (the share with confidence < tau or
    missing) is closest to `target_usage`; tied confidences move together, so the usage is the
    reachable one nearest the target, above or below it, and an exact tie between two goes to
    the larger usage (more items to the LLM). inf when deferring everything is closest."""
    target_usage = _check_unit("target_usage", target_usage)
    conf = as_confidence(confidence)
    taus = sweep(conf)  # ascending: 0, the distinct confidences, inf; usage non-decreasing
    present = np.sort(conf[~np.isnan(conf)])
    usage = 1.0 - (present.size - np.searchsorted(present, taus, side="left")) / max(conf.size, 1)
    distance = np.round(np.abs(usage - target_usage), 12)  # rounding: float-noise ties are ties
    nearest = np.flatnonzero(distance == distance.min())
    # Of equal distances the larger usage; of equal usages the smallest tau (0, not the lowest
    # confidence, when nothing beyond the missing ones defers).
    return float(taus[nearest[usage[nearest] == usage[nearest].max()][0]])


def sweep(confidence: Sequence[float | None]) -> np.ndarray:
    """Every tau that changes the deferred set, ascending: 0, the distinct confidences, inf."""
    conf = as_confidence(confidence)
    return np.unique(np.concatenate([[0.0], conf[~np.isnan(conf)], [math.inf]]))


def binomial_upper_bound(successes, n, alpha: float) -> np.ndarray:
    """Clopper-Pearson: the exact one-sided (1 - alpha) upper confidence bound on p from
    `successes` of n Bernoulli(p) draws (broadcasts; 1 where successes == n, n = 0 included)."""
    k = np.asarray(successes, np.float64)
    return np.where(k >= n, 1.0, special.betaincinv(k + 1, np.maximum(n - k, 1), 1 - alpha))


def signed_drop_upper_bound(llm_only_kept, slm_only_kept, n: int, delta: float) -> np.ndarray:
    """A (1 - delta) upper confidence bound on the pass@1 drop of keeping items,
        R = P(kept, only the LLM right) - P(kept, only the SLM right) = s (2 theta - 1),
    from the counts of those two kinds of kept items among n (broadcasts). s = P(kept, the
    models disagree); theta = P(only the LLM right | kept, the models disagree). Given the
    number D of kept disagreements, the LLM-only count is exactly Binomial(D, theta)
    (McNemar's conditioning), so theta and s each get a Clopper-Pearson upper bound at
    delta / 2, and R <= s_up max(2 theta_up - 1, 0) unless one of them fails. Near R = 0 the
    width is about z sqrt(s / n), the disagreements' binomial spread (not Hoeffding's worst
    case over [-1, 1], and sqrt(2) narrower than bounding the two probabilities apart)."""
    llm_only, slm_only = np.asarray(llm_only_kept), np.asarray(slm_only_kept)
    disagree = llm_only + slm_only
    theta_up = binomial_upper_bound(llm_only, disagree, delta / 2)  # 1 where nothing disagrees
    return binomial_upper_bound(disagree, n, delta / 2) * np.maximum(2 * theta_up - 1, 0.0)


def _kept_counts(conf: np.ndarray, mask: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """[len(grid)]: items of `mask` with a confidence >= each tau of `grid`."""
    values = np.sort(conf[mask])
    return values.size - np.searchsorted(values, grid, side="left")


def risk_controlled_threshold(confidence: Sequence[float | None], slm_correct: Sequence[bool],
                              llm_correct: Sequence[bool], *, epsilon: float, delta: float,
                              grid: Sequence[float] | None = None) -> float:
    """The smallest tau that certifies, with probability >= 1 - delta, a pass@1 drop <= epsilon.

    Learn-then-Test (Angelopoulos et al., 2021) on the signed loss
        L_i(tau) = 1{c_i >= tau} * (1{LLM right on i} - 1{SLM right on i})  in {-1, 0, 1},
    whose mean R(tau) is exactly the cascade's pass@1 drop below the LLM's at tau: a kept item
    costs a point where only the LLM is right and gives one back where only the SLM is right.
    The nulls H(tau): R(tau) > epsilon are tested in a fixed sequence from tau = 1 downward over
    `grid` (default `DEFAULT_GRID`, fixed in advance), each rejected when
    `signed_drop_upper_bound` (exact binomial bounds on how often the models disagree on kept
    items and how often the LLM wins those, delta in all) is <= epsilon, stopping at the first
    that is not. Each test errs with probability <= delta and the sequence stops at its first
    acceptance, so (R need not be monotone in tau) the family-wise error is <= delta: every
    certified tau, the smallest included, has R(tau) <= epsilon with probability >= 1 - delta
    over the calibration draw.

    Assumes the calibration items and the items the tau is then used on are exchangeable
    draws from one population (i.i.d.); R is the expected drop on a new item, not the drop on
    a particular test set, which also varies with that set's draw.

    Args:
      confidence: [N] SLM confidences on the calibration items (None/NaN: missing, defers).
      slm_correct, llm_correct: [N] bool verdicts on the same items.
      epsilon: the allowed drop in (0, 1). delta: the allowed failure probability in (0, 1).
    Returns:
      tau in [0, 1], or math.inf (defer everything) when not even tau = 1 is certified.
    """
    epsilon = _check_unit("epsilon", epsilon, open_interval=True)
    delta = _check_unit("delta", delta, open_interval=True)
    conf = as_confidence(confidence)
    slm_correct, llm_correct = np.asarray(slm_correct, bool), np.asarray(llm_correct, bool)
    if not conf.size == slm_correct.size == llm_correct.size:
        raise ValueError(f"confidence, slm_correct, llm_correct: expected equal lengths, found "
                         f"{conf.size}, {slm_correct.size}, {llm_correct.size}")
    if conf.size == 0:
        raise ValueError("confidence: expected at least one calibration item, found none")
    grid = DEFAULT_GRID if grid is None else np.sort(np.asarray(grid, np.float64))[::-1]
    present = ~np.isnan(conf)  # a missing confidence defers: never kept, no loss
    upper = signed_drop_upper_bound(_kept_counts(conf, present & llm_correct & ~slm_correct, grid),
                                    _kept_counts(conf, present & slm_correct & ~llm_correct, grid),
                                    conf.size, delta)
    failed = np.flatnonzero(upper > epsilon)
    certified_count = failed[0] if failed.size else grid.size  # fixed sequence: stop at the first
    return math.inf if certified_count == 0 else float(grid[certified_count - 1])


def validate(config) -> None:
    """Checks a `threshold` ConfigDict (rule, tau, target_usage, epsilon, delta)."""
    if config.rule not in RULES:
        raise ValueError(f"threshold.rule: expected one of {RULES}, found {config.rule!r}")
    check_tau(config.tau, "threshold.tau")
    _check_unit("threshold.target_usage", config.target_usage)
    _check_unit("threshold.epsilon", config.epsilon, open_interval=True)
    _check_unit("threshold.delta", config.delta, open_interval=True)


def choose_threshold(config, confidence, slm_correct, llm_correct, rule: str | None = None) -> float:
    """tau by `rule` (default `config.rule`) on the calibration split; `config` holds the
    rules' parameters (tau, target_usage, epsilon, delta)."""
    rule = rule or config.rule
    if rule not in RULES:
        raise ValueError(f"threshold.rule: expected one of {RULES}, found {rule!r}")
    if rule == "fixed":
        return fixed_threshold(config.tau)
    if rule == "paper":
        return paper_threshold(llm_correct)
    if rule == "usage":
        return usage_threshold(confidence, config.target_usage)
    return risk_controlled_threshold(confidence, slm_correct, llm_correct,
                                     epsilon=config.epsilon, delta=config.delta)
