"""The drift test (a conformal test martingale) on synthetic confidence streams: its false-alarm
rate on exchangeable streams, how soon it sees a shift, determinism."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import stats

from corea_jax.serving import drift

REFERENCE, STREAM = 100, 200  # scores in the reference window, in a simulated stream


def _confidences(rng: np.random.Generator, size: int, a: float = 5.0, b: float = 2.0, decimals: int | None = None):
    """SLM confidences ~ Beta(a, b); rounded like verbal confidences when `decimals` is given."""
    values = rng.beta(a, b, size=size)
    return values if decimals is None else values.round(decimals)


@pytest.mark.parametrize("decimals", [None, 1])
def test_false_alarms_on_exchangeable_streams_stay_within_alpha(decimals):
    """150 seeded simulations: reference and stream from one distribution (ties included when
    rounded); the share that ever alarms is at most alpha, up to 3 binomial standard errors."""
    alpha, runs = 0.1, 150
    alarms = 0
    for seed in range(runs):
        rng = np.random.default_rng(seed)
        state = drift.reset(_confidences(rng, REFERENCE, decimals=decimals), alpha=alpha, seed=seed)
        alarms += drift.alarm(drift.update_many(state, _confidences(rng, STREAM, decimals=decimals)))
    assert alarms / runs <= alpha + 3 * np.sqrt(alpha * (1 - alpha) / runs)


def test_p_values_are_uniform_under_exchangeability_even_with_ties():
    rng = np.random.default_rng(7)
    state = drift.reset(_confidences(rng, 50, decimals=1), seed=7)
    p_values = []
    for score in _confidences(rng, 2000, decimals=1):
        state = drift.update(state, score)
        p_values.append(state.p_value)
    assert 0 < min(p_values) and max(p_values) <= 1
    assert stats.kstest(p_values, "uniform").pvalue > 0.01
    assert drift.statistic(state) < 0  # the martingale loses where nothing changed


@pytest.mark.parametrize("shifted_to", [(2.0, 2.0), (12.0, 1.0)])  # confidences fall / rise
def test_a_shifted_stream_raises_the_alarm_within_100_requests(shifted_to):
    for seed in range(10):
        rng = np.random.default_rng(100 + seed)
        state = drift.reset(_confidences(rng, REFERENCE, decimals=2), alpha=0.01, seed=seed)
        state = drift.update_many(state, _confidences(rng, 50, decimals=2))  # before the shift
        before = state.alarm_step
        state = drift.update_many(state, _confidences(rng, 100, *shifted_to, decimals=2))
        assert before is None and drift.alarm(state), seed
        assert 50 < state.alarm_step <= 150 and drift.statistic(state) > -1  # the level is 2 (alpha 0.01)


def test_the_loss_stream_sees_confidence_that_stopped_meaning_what_it_did():
    """Same confidences, half the accuracy: the confidence stream cannot tell, the calibration
    losses (confidence - correct)^2 can."""
    rng = np.random.default_rng(3)
    conf_ref, conf_new = rng.uniform(0.5, 1.0, size=300), rng.uniform(0.5, 1.0, size=150)
    right_ref = rng.uniform(size=300) < conf_ref
    right_new = rng.uniform(size=150) < conf_new / 2
    losses = drift.reset([drift.calibration_loss(c, y) for c, y in zip(conf_ref, right_ref)], alpha=0.01)
    losses = drift.update_many(losses, [drift.calibration_loss(c, y) for c, y in zip(conf_new, right_new)])
    confidences = drift.update_many(drift.reset(conf_ref, alpha=0.01), conf_new)
    assert drift.alarm(losses) and not drift.alarm(confidences)
    assert drift.calibration_loss(0.8, True) == pytest.approx(0.04)
    assert drift.calibration_loss(0.8, False) == pytest.approx(0.64)


def test_seeded_runs_repeat_and_the_alarm_stays_until_reset():
    rng = np.random.default_rng(5)
    reference, stream = _confidences(rng, 80, decimals=1), _confidences(rng, 60, 1.0, 5.0, decimals=1)
    first = drift.update_many(drift.reset(reference, seed=11), stream)
    again = drift.update_many(drift.reset(reference, seed=11), stream)
    other = drift.update_many(drift.reset(reference, seed=12), stream)
    assert drift.statistic(first) == drift.statistic(again) and first.alarm_step == again.alarm_step
    assert drift.statistic(first) != drift.statistic(other)  # the ties broken by other draws
    assert drift.alarm(first)
    calm = drift.update_many(first, _confidences(rng, 300, decimals=1))  # back to the reference's traffic
    assert drift.alarm(calm) and calm.alarm_step == first.alarm_step
    restarted = drift.reset(stream, seed=11)
    assert not drift.alarm(restarted) and drift.statistic(restarted) == 0.0
    published = json.loads(json.dumps(drift.summary(first), allow_nan=False))
    assert published == dict(statistic=drift.statistic(first), alarm_level=pytest.approx(2.0), alarm=True,
                             alarm_step=first.alarm_step, alpha=0.01, steps=60, reference=80)


def test_update_is_pure():
    state = drift.reset([0.2, 0.5, 0.9])
    after = drift.update(state, 0.7)
    assert state.steps == 0 and state.seen.tolist() == [0.2, 0.5, 0.9] and state.p_value is None
    assert after.steps == 1 and after.seen.tolist() == [0.2, 0.5, 0.7, 0.9]
    assert after.p_value == pytest.approx((1 + drift.tie_breaker(0, 1)) / 4)  # 0.9 above, 0.7 itself
    assert sum(after.weights) == pytest.approx(1.0)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="^reference: expected at least one"):
        drift.reset([])
    with pytest.raises(ValueError, match="^reference: expected finite"):
        drift.reset([0.5, float("nan")])
    with pytest.raises(ValueError, match="^alpha"):
        drift.reset([0.5], alpha=1.0)
    with pytest.raises(ValueError, match="^jump"):
        drift.reset([0.5], jump=2)
    with pytest.raises(ValueError, match="^seed"):
        drift.reset([0.5], seed=-1)
    with pytest.raises(ValueError, match="^score"):
        drift.update(drift.reset([0.5]), float("inf"))
