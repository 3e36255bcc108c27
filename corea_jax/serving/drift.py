"""Drift: has the traffic stopped looking like the items tau was fitted on? A conformal test martingale.

The stream is one number per request, a score: the SLM's confidence, or, for labelled requests,
`calibration_loss` (confidence - correct)^2, whose shift says the confidence stopped meaning
what it did even where its distribution did not move. The test (Vovk, Nouretdinov and Gammerman,
"Testing exchangeability on-line", ICML 2003; Vovk et al., "Retrain or not retrain: conformal
test martingales for change-point detection", 2021):

  p-value   each new score's smoothed conformal p-value against every score before it, the
            reference window (the scores tau was fitted on) first:
                p_t = (#{earlier > x_t} + u_t (#{earlier == x_t} + 1)) / (earlier + 1),
            u_t ~ U(0, 1) breaking ties (confidences are often a few decimals). If the reference
            and the stream are exchangeable, p_1, p_2, ... are independent and uniform on [0, 1].
  betting   the Simple Jumper: capital split over the betting functions 1 + e (p - 1/2),
            e in {-1, 0, 1} (-1 wins on small p-values, scores shifted up; +1 on large ones,
            scores shifted down), a `jump` share of it redistributed evenly before each bet, so it
            follows a shift in either direction at any time. Its capital M_t is a test
            martingale (M_0 = 1) under exchangeability.
  alarm     when M_t >= 1 / alpha. Ville's inequality: P(sup_t M_t >= 1 / alpha) <= alpha, so over
            the whole stream, however long, a false alarm has probability at most alpha. The alarm
            stays raised (the statistic may fall again); `reset` on a new reference clears it.

Two streams (confidences and losses), each tested at alpha, raise a false alarm with probability
at most 2 alpha together (the union bound): give each alpha / 2 for a joint rate of alpha.
No maintained implementation was installed (online-cp and crepes are on PyPI, not in the venv);
this one is a frozen state and a pure `update(state, score) -> state`, numpy on the host.
Memory: one float64 per score seen; `update` inserts into a sorted array (O(scores) per step:
about 2 ms at a million scores on one CPU core).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Iterable, Sequence

import numpy as np

BETS = (-1.0, 0.0, 1.0)  # the Simple Jumper's betting directions
_MASK64 = (1 << 64) - 1


@dataclasses.dataclass(frozen=True)
class DriftState:
    """The test after `steps` stream scores.

    seen: float64 [n_reference + steps], sorted: every score so far, the reference's included.
    log10_martingale: log10 M_t (0 at the start). weights: the capital's shares on BETS (sum 1).
    alarm_step: the stream step (1-based) at which M first reached 1 / alpha, or None.
    p_value: the last score's conformal p-value in (0, 1] (None before the first).
    alpha: the false-alarm probability, in (0, 1). jump: the Simple Jumper's switching rate per
    step, in [0, 1]. seed: the tie-breaking draws' seed (u_t is a function of seed and step)."""

    seen: np.ndarray
    n_reference: int
    steps: int
    log10_martingale: float
    weights: tuple[float, float, float]
    alarm_step: int | None
    p_value: float | None
    alpha: float
    jump: float
    seed: int


def calibration_loss(confidence: float, correct: bool) -> float:
    """The score of a labelled request: (confidence - correct)^2, the Brier loss, in [0, 1]."""
    return (float(confidence) - float(bool(correct))) ** 2


def reset(reference: Sequence[float], *, alpha: float = 0.01, jump: float = 0.01, seed: int = 0) -> DriftState:
    """A new test against `reference` ([N] scores, N >= 1: the window tau was fitted on).

    alpha: the false-alarm probability over the whole stream, in (0, 1); jump: the Simple
    Jumper's rate, in [0, 1] (0.01: Vovk et al.'s choice); seed: a whole number >= 0."""
    reference = np.sort(np.asarray(reference, np.float64).ravel())
    if reference.size == 0:
        raise ValueError("reference: expected at least one score (the window tau was fitted on), found none")
    if not np.isfinite(reference).all():
        raise ValueError("reference: expected finite scores (drop missing confidences first)")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha: expected a false-alarm probability in (0, 1), found {alpha!r}")
    if not 0 <= jump <= 1:
        raise ValueError(f"jump: expected a rate in [0, 1], found {jump!r}")
    if int(seed) != seed or seed < 0:
        raise ValueError(f"seed: expected a whole number >= 0, found {seed!r}")
    return DriftState(seen=reference, n_reference=int(reference.size), steps=0, log10_martingale=0.0,
                      weights=(1 / 3, 1 / 3, 1 / 3), alarm_step=None, p_value=None, alpha=float(alpha),
                      jump=float(jump), seed=int(seed))


def tie_breaker(seed: int, step: int) -> float:
    """u in [0, 1) for (seed, step): SplitMix64 of the pair, so a state needs no generator and a
    replay with the same seed draws the same u's."""
    z = (seed * 0x9E3779B97F4A7C15 + step * 0xBF58476D1CE4E5B9 + 0x94D049BB133111EB) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return ((z ^ (z >> 31)) >> 11) / float(1 << 53)


def conformal_p_value(seen: np.ndarray, score: float, u: float) -> float:
    """The smoothed conformal p-value of `score` against the sorted scores `seen` (larger is
    stranger), ties broken by u in [0, 1): in (0, 1]."""
    below_or_equal = np.searchsorted(seen, score, side="right")
    below = np.searchsorted(seen, score, side="left")
    greater, equal = seen.size - below_or_equal, below_or_equal - below
    return float(greater + u * (equal + 1)) / (seen.size + 1)


def update(state: DriftState, score: float) -> DriftState:
    """The test after one more stream score (a finite number on the reference's scale)."""
    score = float(score)
    if not math.isfinite(score):
        raise ValueError(f"score: expected a finite number, found {score!r}")
    step = state.steps + 1
    p = conformal_p_value(state.seen, score, tie_breaker(state.seed, step))
    mixed = [(1 - state.jump) * w + state.jump / 3 for w in state.weights]
    grown = [w * (1 + bet * (p - 0.5)) for w, bet in zip(mixed, BETS)]
    total = sum(grown)  # >= 1/2: every betting function is >= 1/2
    log10_martingale = state.log10_martingale + math.log10(total)
    alarm_step = state.alarm_step
    if alarm_step is None and log10_martingale >= alarm_level(state):
        alarm_step = step
    seen = np.insert(state.seen, np.searchsorted(state.seen, score), score)
    return dataclasses.replace(state, seen=seen, steps=step, log10_martingale=log10_martingale,
                               weights=tuple(g / total for g in grown), alarm_step=alarm_step, p_value=p)


def update_many(state: DriftState, scores: Iterable[float]) -> DriftState:
    """`update` with each score in turn."""
    for score in scores:
        state = update(state, score)
    return state


def statistic(state: DriftState) -> float:
    """log10 of the martingale M_t: 0 at the start; drifting down while the stream looks like
    the reference; the alarm at log10(1 / alpha)."""
    return state.log10_martingale


def alarm_level(state: DriftState) -> float:
    """log10(1 / alpha): where `statistic` raises the alarm."""
    return -math.log10(state.alpha)


def alarm(state: DriftState) -> bool:
    """Has the martingale reached 1 / alpha at any step since `reset`?"""
    return state.alarm_step is not None


def summary(state: DriftState) -> dict:
    """The test as JSON for /metrics, /health and the dashboard: statistic (log10 M_t),
    alarm_level (log10 1/alpha), alarm, alarm_step (the stream step it fired at, or None),
    alpha, steps (stream scores seen), reference (scores in the reference window)."""
    return dict(statistic=statistic(state), alarm_level=alarm_level(state), alarm=alarm(state),
                alarm_step=state.alarm_step, alpha=state.alpha, steps=state.steps, reference=state.n_reference)
