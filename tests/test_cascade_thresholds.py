"""Deferral thresholds; the risk-controlled tau's guarantee, checked by simulation."""

import math

import numpy as np
import pytest
from scipy import stats

from corea_jax.cascade import risk_controlled_threshold, thresholds


def _population(rng, n, power):
    """SLM confidence c = U^(1/power) (well calibrated: right with probability c); the LLM is
    always right, so the pass@1 drop of keeping items is exactly the risk R(tau)."""
    conf = rng.random(n) ** (1 / power)
    slm = rng.random(n) < conf
    return conf, slm, np.ones(n, bool)


def _true_drop(tau, power):
    """E[1{c >= tau} (1 - c)] for density power * c^(power-1) on [0, 1]."""
    if math.isinf(tau):
        return 0.0
    integral = lambda x: x ** power - power / (power + 1) * x ** (power + 1)  # noqa: E731
    return integral(1.0) - integral(tau)


@pytest.mark.parametrize("power, epsilon", [(1, 0.05), (6, 0.05)])
def test_risk_controlled_guarantee_holds_and_is_not_vacuous(power, epsilon):
    delta, n, draws = 0.1, 400, 400
    rng = np.random.default_rng(power)
    taus = np.array([risk_controlled_threshold(*_population(rng, n, power), epsilon=epsilon, delta=delta)
                     for _ in range(draws)])
    drops = np.array([_true_drop(t, power) for t in taus])
    violation_rate = np.mean(drops > epsilon)
    # Monte-Carlo slack: 3 standard deviations of a Bernoulli(delta) mean over the draws.
    assert violation_rate <= delta + 3 * math.sqrt(delta * (1 - delta) / draws)
    # The best tau with drop <= epsilon keeps 1 - tau*^power of the items; the rule keeps most of it.
    grid = np.linspace(0, 1, 100001)
    best = grid[np.argmax([_true_drop(t, power) <= epsilon for t in grid])]
    ideal_share = 1 - best ** power
    kept = np.mean([0 if math.isinf(t) else 1 - t ** power for t in taus])
    assert kept >= 0.75 * ideal_share
    if power == 6:
        assert kept > 0.5  # calibrated and mostly right: the SLM keeps most items


def _offsetting_population(rng, draws, n, llm_accuracy=0.75):
    """[draws, n] arrays: SLM confidence c ~ U(0, 1), well calibrated (right with probability c);
    the LLM right with probability 0.75 independently, so kept items where only the SLM is right
    offset those where only the LLM is right."""
    conf = rng.random((draws, n))
    return conf, rng.random((draws, n)) < conf, rng.random((draws, n)) < llm_accuracy


def _offsetting_drop(tau, llm_accuracy=0.75):
    """The true pass@1 drop of keeping c >= tau: E[1{c >= tau} (0.75 - c)]."""
    tau = np.minimum(np.asarray(tau, np.float64), 1.0)  # inf: nothing kept
    return llm_accuracy * (1 - tau) - (1 - tau ** 2) / 2


def test_risk_controlled_signed_drop_keeps_a_third_and_holds_the_guarantee():
    epsilon, delta, n, draws = 0.02, 0.1, 500, 400
    grid = np.linspace(0, 1, 100001)
    ideal_share = 1 - grid[np.argmax(_offsetting_drop(grid) <= epsilon)]
    assert ideal_share == pytest.approx(0.57, abs=0.01)  # the population
    rng = np.random.default_rng(27)
    taus = np.array([risk_controlled_threshold(c, s, l, epsilon=epsilon, delta=delta)
                     for c, s, l in zip(*_offsetting_population(rng, draws, n))])
    violation_rate = np.mean(_offsetting_drop(taus) > epsilon)
    assert violation_rate <= delta + 3 * math.sqrt(delta * (1 - delta) / draws)
    kept = np.mean(1 - np.minimum(taus, 1.0))
    # The one-sided loss 1{kept, only the LLM right} kept 17% here; the signed drop keeps 40%.
    assert kept >= 0.35, kept


def test_signed_drop_upper_bound_is_exact_binomial():
    n, delta = 200, 0.1
    # No kept disagreement seen: the drop is at most s, whose bound is 1 - (delta/2)^(1/n).
    assert thresholds.signed_drop_upper_bound(0, 0, n, delta) == pytest.approx(1 - (delta / 2) ** (1 / n))
    # Only LLM-only disagreements: theta_up = 1, the bound is s's Clopper-Pearson bound at delta/2.
    assert thresholds.signed_drop_upper_bound(6, 0, n, delta) == pytest.approx(stats.beta.ppf(0.95, 7, n - 6))
    # Offsetting disagreements shrink it; SLM-only ones dominating make it 0.
    assert thresholds.signed_drop_upper_bound(6, 6, n, delta) < thresholds.signed_drop_upper_bound(6, 0, n, delta)
    assert thresholds.signed_drop_upper_bound(2, 30, n, delta) == 0.0


def test_risk_controlled_defers_everything_when_nothing_is_certified():
    conf = np.full(20, 0.9)
    slm = np.zeros(20, bool)  # confidently wrong on everything
    assert risk_controlled_threshold(conf, slm, np.ones(20, bool), epsilon=0.05, delta=0.1) == math.inf


def test_risk_controlled_missing_confidence_defers_and_costs_no_risk():
    conf = [None, math.nan, 0.99, 0.99]
    tau = risk_controlled_threshold(conf * 50, [False, False, True, True] * 50, [True] * 200,
                                    epsilon=0.05, delta=0.1)
    assert tau == 0.0


@pytest.mark.parametrize("kwargs, field", [
    (dict(epsilon=0.0, delta=0.1), "epsilon"), (dict(epsilon=1.0, delta=0.1), "epsilon"),
    (dict(epsilon=0.1, delta=0.0), "delta"), (dict(epsilon=0.1, delta=1.5), "delta")])
def test_risk_controlled_rejects_out_of_range_parameters(kwargs, field):
    with pytest.raises(ValueError, match=field):
        risk_controlled_threshold([0.5], [True], [True], **kwargs)


def test_fixed_paper_usage_and_sweep():
    assert thresholds.fixed_threshold(0.3) == 0.3
    with pytest.raises(ValueError, match="tau"):
        thresholds.fixed_threshold(1.2)
    assert thresholds.paper_threshold([True, False, True, True]) == 0.75
    conf = [0.1, 0.2, 0.3, 0.4, None]
    tau = thresholds.usage_threshold(conf, 0.6)  # defer 3 of 5: the missing one and 0.1, 0.2
    assert thresholds.keeps(conf, tau).tolist() == [False, False, True, True, False]
    assert thresholds.usage_threshold(conf, 1.0) == math.inf
    assert thresholds.usage_threshold(conf, 0.0) == 0.0
    with pytest.raises(ValueError, match="target_usage"):
        thresholds.usage_threshold(conf, -0.1)
    assert thresholds.sweep(conf).tolist() == [0.0, 0.1, 0.2, 0.3, 0.4, math.inf]


def test_validate_names_the_field():
    import ml_collections

    cfg = ml_collections.ConfigDict(dict(rule="paper", tau=0.5, target_usage=0.3,
                                         epsilon=0.05, delta=0.1))
    thresholds.validate(cfg)
    for field, value in (("rule", "median"), ("tau", 2.0), ("epsilon", 0.0), ("delta", 1.0)):
        bad = ml_collections.ConfigDict(cfg.to_dict())
        bad[field] = value
        with pytest.raises(ValueError, match=f"threshold.{field}"):
            thresholds.validate(bad)


def test_usage_threshold_on_ties_picks_the_closest_realised_usage():
    # keep iff c >= tau: tau = 0.5 keeps all four (usage 0), tau = 0.9 defers three (0.75);
    # 0.75 is closer to the 50% target.
    conf = [0.5, 0.5, 0.5, 0.9]
    tau = thresholds.usage_threshold(conf, 0.5)
    assert tau == 0.9 and thresholds.keeps(conf, tau).tolist() == [False, False, False, True]
    # Heavily tied verbal confidences: the realised usage is the reachable one nearest the target.
    conf = [0.8] * 7 + [0.9] * 2 + [None]
    for target, usage in ((0.3, 0.1), (0.5, 0.8), (0.85, 0.8), (0.95, 1.0)):
        realised = 1 - thresholds.keeps(conf, thresholds.usage_threshold(conf, target)).mean()
        assert realised == pytest.approx(usage), target
    # An exact tie in distance defers more (the side that loses no accuracy).
    assert thresholds.usage_threshold([0.2, 0.5, 0.5, 0.8], 0.5) == 0.8
