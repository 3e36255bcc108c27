"""serving.live: feedback labels, the automatic versioned re-fit, drift alarms and their policies,
on synthetic log lines (no model, no HTTP; tests/test_serving_api.py drives the endpoints)."""

from __future__ import annotations

import json
import math
import random

import pytest

from corea_jax.serving import config as serving_config, monitor
from corea_jax.serving.live import FEEDBACK_FILE, LiveMonitor
from corea_jax.serving.refit import HISTORY_FILE, THRESHOLD_FILE


def _config(**changes):
    config = serving_config.defaults()
    for key, value in changes.items():
        group, name = key.split(".")
        config[group][name] = value
    serving_config.validate(config)
    return config


def _line(i: int, confidence: float, tau: float = 0.5, created: float | None = None) -> dict:
    deferred = confidence < tau
    llm = dict(model="llm", failed=False, cost=10.0, prompt_tokens=20, generated_tokens=20) if deferred else None
    return dict(request_id=f"r{i}", served_model="corea", model="slm", failed=False, finish_reason="stop",
                deferred=deferred, answered_by="llm" if deferred else "slm", audit=False, shadow=False,
                agree=True if deferred else None, tau=tau, confidence={"verbal": confidence},
                confidence_source="verbal", cost=2.0, prompt_tokens=20, generated_tokens=20, cost_model="flops",
                llm=llm, request_cost=12.0 if deferred else 2.0, llm_only_cost=10.0,
                created=created if created is not None else float(i))


class _Service:
    """What LiveMonitor calls back: the applied thresholds, in order."""

    def __init__(self):
        self.applied = []

    def __call__(self, fitted):
        self.applied.append(fitted)


def _traffic(live, n, start=0, *, seed=0, p_right=None, tau=0.5):
    """n decisions with feedback: confidence 0.9 or 0.2, right with p_right[confidence] (default:
    0.99 / 0.1)."""
    rng = random.Random(seed)
    p_right = p_right or {0.9: 0.99, 0.2: 0.1}
    high, low = sorted(p_right, reverse=True)
    for i in range(start, start + n):
        confidence = high if rng.random() < 0.6 else low
        line = _line(i, confidence, tau)
        live.expect(line["request_id"])
        live.observe(line)
        live.label(line["request_id"], rng.random() < p_right[confidence])


def test_feedback_is_recorded_once_persisted_and_reloaded(tmp_path):
    live = LiveMonitor(_config(), tmp_path, _Service())
    live.expect("a")
    assert live.label("a", True) == "recorded"
    assert live.label("a", True) == "unchanged"
    with pytest.raises(ValueError, match="already labelled true"):
        live.label("a", False)
    with pytest.raises(KeyError):
        live.label("never-answered", True)
    live.close()
    assert [json.loads(x)["id"] for x in (tmp_path / FEEDBACK_FILE).read_text().splitlines()] == ["a"]
    (tmp_path / "records.jsonl").write_text(json.dumps(_line(0, 0.9) | {"request_id": "a"}) + "\n")
    again = LiveMonitor(_config(), tmp_path, _Service())  # a restart keeps the window and its labels
    assert again.labels == {"a": True} and len(again.lines) == 1


def test_the_snapshot_is_the_monitors_over_the_same_lines(tmp_path):
    live = LiveMonitor(_config(), tmp_path, _Service())
    _traffic(live, 300)
    snap = live.snapshot(0.5, {"epsilon": 0.05})
    offline = monitor.snapshot(list(live.lines), live.labels, 500, 0.05, current_tau=0.5)
    for key in ("labels", "calibration", "risk", "savings"):
        assert snap[key] == offline[key]
    assert snap["labels"]["feedback"] == 300 and snap["calibration"]["auroc"] > 0.8


def test_the_automatic_refit_certifies_a_tau_and_versions_each_fit(tmp_path):
    service = _Service()
    live = LiveMonitor(_config(**{"refit.every_labels": 200, "refit.min_items": 100}), tmp_path, service)
    _traffic(live, 399)
    assert len(service.applied) == 1  # at 200 labels, not yet at 400
    _traffic(live, 1, start=399)
    assert [f["version"] for f in service.applied] == [1, 2]
    fit = service.applied[-1]
    assert fit["rule"] == "risk" and fit["items"] == 400 and fit["epsilon"] == 0.05 and fit["delta"] == 0.1
    assert 0.2 < fit["tau"] <= 0.9  # keeps the 0.9s (99% right), defers the 0.2s
    assert fit["evidence"]["llm_share_at_tau"] == pytest.approx(
        sum(d.confidence < fit["tau"] for d in monitor.labelled_window(list(live.lines), live.labels, 500)
            ["decisions"][-400:]) / 400)
    history = [json.loads(x) for x in (tmp_path / HISTORY_FILE).read_text().splitlines()]
    assert [h["version"] for h in history] == [1, 2]
    assert json.loads((tmp_path / THRESHOLD_FILE).read_text())["version"] == 2


def test_no_certified_tau_is_the_explicit_defer_everything_state(tmp_path):
    service = _Service()
    live = LiveMonitor(_config(**{"refit.every_labels": 100, "refit.min_items": 100}), tmp_path, service)
    # an SLM that says 1.0 and is right half the time: no tau keeps anything safely (a tau above
    # every stated confidence would keep none of the labelled decisions: the rule's grid ends
    # below 1.0, so a stated 1.0 is always kept)
    _traffic(live, 100, p_right={1.0: 0.5, 0.2: 0.5})
    fit = service.applied[-1]
    assert fit["tau"] == math.inf and fit["defer_everything"] and "no tau is certified" in fit["reason"]
    assert json.loads((tmp_path / THRESHOLD_FILE).read_text())["tau"] is None


def test_too_few_labels_fit_nothing_and_say_why(tmp_path):
    service = _Service()
    live = LiveMonitor(_config(**{"refit.every_labels": 10, "refit.min_items": 50}), tmp_path, service)
    _traffic(live, 10)
    assert service.applied == [] and "fewer than refit.min_items = 50" in live.fit_error


def _shifted(live, n, start, seed=1):
    """Decisions whose SLM says 0.9 and is right half the time (a shift its confidence missed)."""
    rng = random.Random(seed)
    for i in range(start, start + n):
        line = _line(i, 0.9, created=float(i))
        live.expect(line["request_id"])
        live.observe(line)
        live.label(line["request_id"], rng.random() < 0.5)


def test_drift_alarms_on_a_shift_and_the_defer_policy_defers_everything(tmp_path):
    service = _Service()
    live = LiveMonitor(_config(**{"drift.reference": 200, "drift.policy": "defer"}), tmp_path, service)
    _traffic(live, 400)
    assert not live.drift_alarm()  # the same traffic as the reference: no alarm
    _shifted(live, 400, 400)
    assert live.drift_alarm()
    forced = service.applied[-1]
    assert forced["tau"] == math.inf and forced["rule"] == "drift" and "drift alarm" in forced["reason"]
    snap = live.snapshot(math.inf, forced)
    assert snap["drift_alarm"] and snap["drift"]["loss"]["alarm"]


def test_the_refit_policy_refits_on_post_alarm_labels_only(tmp_path):
    service = _Service()
    live = LiveMonitor(_config(**{"drift.reference": 200, "drift.policy": "refit", "refit.min_items": 100}),
                       tmp_path, service)
    _traffic(live, 400)
    _shifted(live, 400, 400)
    fit = service.applied[-1]
    assert fit["evidence"]["post_drift_alarm"] is True and fit["items"] >= 100
    # after the shift a stated 0.9 is right half the time: the fit keeps none of it
    assert fit["tau"] > 0.9 and fit["evidence"]["llm_share_at_tau"] == 1.0
    alarm_at = next(i for i, x in enumerate(live.lines) if x["request_id"] == "r400") + 1
    assert fit["items"] <= len(live.lines) - alarm_at  # none of the pre-shift decisions
