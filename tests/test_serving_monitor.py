"""The serving monitor's numbers over synthetic records.jsonl lines (shaped as `serving.chat` writes
them), checked against an offline computation on the same confidences and labels."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats

from corea_jax import calibration
from corea_jax.serving import monitor

SLM_PER_TOKEN, LLM_PER_TOKEN = 2.0, 20.0  # cost units (FLOPs) per token of each model


def _call(model: str, tokens: int, *, failed: bool = False) -> dict:
    per_token = SLM_PER_TOKEN if model == "slm" else LLM_PER_TOKEN
    return dict(model=model, failed=failed, prompt_tokens=tokens // 2, generated_tokens=tokens - tokens // 2,
                cost=None if failed else per_token * tokens, cost_model="flops")


def _line(i: int, confidence: float | None, tau: float | None, *, audit: bool = False, agree: bool | None = None,
          llm_tokens: int | None = None, llm_failed: bool = False, finish: str = "stop", failed: bool = False,
          slm_tokens: int = 10, served: str = "corea") -> dict:
    """One request's line as `ChatService` writes it: the SLM's record plus the decision; the
    LLM's record when it was called (deferred, or kept and audited)."""
    deferred = confidence is None or tau is None or confidence < tau
    llm = None
    if deferred or audit:
        llm = _call("llm", llm_tokens if llm_tokens is not None else 3 * slm_tokens, failed=llm_failed)
    head = _call("slm", slm_tokens, failed=failed)
    spent = head["cost"] + (llm["cost"] if llm and not llm_failed else 0.0) if not failed else 0.0
    alone = llm["cost"] if llm and not llm_failed else spent if deferred else LLM_PER_TOKEN * slm_tokens
    return dict(**head, id=f"r{i}", request_id=f"r{i}", served_model=served, confidence={"verbal": confidence},
                confidence_source="verbal", tau=tau, deferred=deferred,
                answered_by="llm" if deferred and not llm_failed else "slm", degraded=deferred and llm_failed,
                audit=audit, shadow=audit and not deferred, agree=None if llm is None or llm_failed else agree,
                llm=llm, finish_reason=finish, request_cost=spent, llm_only_cost=alone)


def _traffic(n: int, seed: int, *, tau: float = 0.5, shadow_rate: float = 0.3):
    """n corea requests: confidence ~ U(0, 1), the SLM right with probability = its confidence
    (calibrated), the LLM right with probability 0.9; the two agree exactly when both are right.
    Returns (lines, feedback labels for every request, the truth as arrays)."""
    rng = np.random.default_rng(seed)
    confidence = rng.uniform(size=n).round(3)
    slm_right = rng.uniform(size=n) < confidence
    llm_right = rng.uniform(size=n) < 0.9
    audit = rng.uniform(size=n) < shadow_rate
    tokens = rng.integers(20, 60, size=n)
    agree = slm_right & llm_right
    lines = [_line(i, float(confidence[i]), tau, audit=bool(audit[i]), agree=bool(agree[i]),
                   slm_tokens=int(tokens[i]), llm_tokens=int(2 * tokens[i])) for i in range(n)]
    kept = confidence >= tau
    labels = {f"r{i}": bool(slm_right[i] if kept[i] else llm_right[i]) for i in range(n)}
    truth = dict(confidence=confidence, slm_right=slm_right, llm_right=llm_right, audit=audit, agree=agree,
                 kept=kept, tokens=tokens)
    return lines, labels, truth


def _published(result: dict) -> dict:
    """What /metrics would publish: plain JSON, NaN refused."""
    return json.loads(json.dumps(result, allow_nan=False))


def test_calibration_with_feedback_matches_the_offline_metrics():
    lines, labels, truth = _traffic(600, seed=0)
    result = _published(monitor.snapshot(lines, labels, window=1000, epsilon=0.1))
    # The SLM's label: its own verdict where it answered; through agreement where the LLM did
    # (a disagreement with a wrong LLM answer counts as the SLM wrong: the agreement label).
    expected = np.where(truth["kept"], truth["slm_right"], truth["agree"] & truth["llm_right"])
    conf = truth["confidence"]
    calib = result["calibration"]
    assert calib["labels"] == 600 and result["labels"]["used"] == 600
    assert calib["ece"] == pytest.approx(calibration.ece(conf, expected))
    assert calib["auroc"] == pytest.approx(calibration.auroc(conf, expected))
    bins = calibration.calibration_bins(conf, expected)
    assert [b["count"] for b in calib["bins"]] == bins.count.tolist()
    assert [b["accuracy"] for b in calib["bins"]] == pytest.approx(bins.accuracy.tolist())
    assert calib["bins"][0]["lower"] == 0.0 and calib["bins"][-1]["upper"] == 1.0
    proxied = (~truth["kept"] & ~truth["agree"] & ~truth["llm_right"]).sum()
    assert result["labels"]["agreement"] == proxied and result["labels"]["feedback"] == 600 - proxied


def test_without_feedback_the_audited_requests_carry_agreement_labels():
    lines, _, truth = _traffic(800, seed=1)
    result = _published(monitor.snapshot(lines, {}, window=1000, epsilon=0.1))
    audited = truth["audit"]
    assert result["labels"] == dict(used=int(audited.sum()), feedback=0, agreement=int(audited.sum()),
                                    unlabelled=int((~audited).sum()))
    conf, agree = truth["confidence"][audited], truth["agree"][audited]
    assert result["calibration"]["ece"] == pytest.approx(calibration.ece(conf, agree))
    assert result["calibration"]["auroc"] == pytest.approx(calibration.auroc(conf, agree))
    kept = truth["kept"][audited]
    risk = result["risk"]
    assert risk["kept"] == kept.sum() and risk["kept_wrong"] == (kept & ~agree).sum()
    assert risk["kept_error_share"]["value"] == pytest.approx((kept & ~agree).mean())
    assert risk["kept_error_rate"]["value"] == pytest.approx((kept & ~agree).sum() / kept.sum())


def test_the_window_takes_the_latest_labelled_decisions():
    lines, labels, _ = _traffic(300, seed=2)
    half = {k: v for k, v in labels.items() if int(k[1:]) % 2 == 0}  # feedback on even requests
    picked = monitor.labelled_window(lines, half, window=50)
    ids = [d.request_id for d in picked["decisions"]]
    odd_audited = [line["request_id"] for line in lines[200:] if int(line["request_id"][1:]) % 2 and line["audit"]]
    candidates = [f"r{i}" for i in range(200, 300) if i % 2 == 0 or f"r{i}" in odd_audited]
    assert len(ids) == 50 and ids == candidates[-50:]
    assert picked["sources"]["feedback"] + picked["sources"]["agreement"] == 50
    span = 300 - int(ids[0][1:])
    assert picked["unlabelled"] == span - 50
    result = monitor.snapshot(lines, half, window=50, epsilon=None)
    assert result["savings"]["requests"] == 50 and result["risk"]["versus_epsilon"] is None


def test_no_labels_gives_counts_and_no_numbers():
    lines = [_line(i, 0.8, 0.5) for i in range(20)]  # kept, never audited
    result = _published(monitor.snapshot(lines, {}, window=100, epsilon=0.05))
    assert result["labels"] == dict(used=0, feedback=0, agreement=0, unlabelled=20)
    assert result["calibration"] == dict(labels=0, missing_confidence=0, bins=[], ece=None, auroc=None)
    assert result["risk"]["kept_error_share"] == dict(value=None, interval=[0.0, 1.0])
    assert result["risk"]["versus_epsilon"] is None
    savings = result["savings"]  # nothing shadowed: the cost model's estimate, and it says so
    assert savings["parts"]["kept_unshadowed"]["estimate"].startswith("cost model")
    assert savings["saved_fraction"] == pytest.approx(1 - SLM_PER_TOKEN / LLM_PER_TOKEN)
    assert savings["unit"] == "FLOPs"
    assert monitor.snapshot([], {}, window=5, epsilon=0.1)["savings"]["saved_fraction"] is None


def test_all_deferred_has_no_kept_risk_and_saves_nothing():
    lines = [_line(i, 0.2, 0.5, agree=False) for i in range(30)]  # the LLM right, the SLM not
    labels = {f"r{i}": True for i in range(30)}
    result = _published(monitor.snapshot(lines, labels, window=100, epsilon=0.05))
    risk = result["risk"]
    assert risk["kept"] == 0 and risk["kept_error_share"]["value"] == 0.0
    assert risk["kept_error_rate"]["value"] is None
    assert risk["kept_error_share"]["interval"][1] == pytest.approx(1 - 0.025 ** (1 / 30))
    assert result["calibration"]["auroc"] is None  # one class: the SLM wrong on every request
    assert result["calibration"]["labels"] == 30 and result["calibration"]["ece"] == pytest.approx(0.2)
    savings = result["savings"]
    assert savings["parts"]["llm_answered"]["requests"] == 30
    assert savings["saved_fraction"] == pytest.approx(-SLM_PER_TOKEN / (3 * LLM_PER_TOKEN))  # the SLM's calls


def test_all_kept_and_shadowed_measure_the_llm_alone_cost():
    lines = [_line(i, 0.9, 0.5, audit=i < 10, agree=i != 3, llm_tokens=25) for i in range(40)]
    result = _published(monitor.snapshot(lines, {}, window=100, epsilon=0.2))
    risk = result["risk"]
    assert risk["labels"] == 10 and risk["kept"] == 10 and risk["kept_wrong"] == 1
    savings = result["savings"]
    kept = savings["parts"]["kept_unshadowed"]
    assert kept["requests"] == 30 and kept["estimate"] == "mean LLM cost of 10 shadowed kept requests"
    assert kept["llm_alone_cost"] == pytest.approx(30 * 25 * LLM_PER_TOKEN)
    assert kept["llm_alone_tokens"] == 30 * 25
    assert savings["llm_alone_cost_standard_error"] == 0.0  # every shadow cost the same
    spent = 40 * 10 * SLM_PER_TOKEN + 10 * 25 * LLM_PER_TOKEN
    assert savings["spent_cost"] == pytest.approx(spent)
    assert savings["saved_fraction"] == pytest.approx(1 - spent / (40 * 25 * LLM_PER_TOKEN))
    # The cost model prices the LLM at the SLM's 10 tokens, not the 25 it used: a lower estimate.
    modelled = 10 * 25 * LLM_PER_TOKEN + 30 * 10 * LLM_PER_TOKEN
    assert savings["saved_fraction_modelled"] == pytest.approx(1 - spent / modelled)


def test_savings_parts_against_a_direct_sum():
    lines, _, truth = _traffic(500, seed=3)
    savings = monitor.snapshot(lines, {}, window=500, epsilon=None)["savings"]
    tokens, kept, audit = truth["tokens"], truth["kept"], truth["audit"]
    llm_called = ~kept | audit
    spent = (SLM_PER_TOKEN * tokens).sum() + (LLM_PER_TOKEN * 2 * tokens)[llm_called].sum()
    assert savings["spent_cost"] == pytest.approx(spent)
    assert savings["spent_tokens"] == tokens.sum() + (2 * tokens)[llm_called].sum()
    shadowed = kept & audit
    per_request = (LLM_PER_TOKEN * 2 * tokens)[shadowed]
    alone = (LLM_PER_TOKEN * 2 * tokens)[llm_called].sum() + (kept & ~audit).sum() * per_request.mean()
    assert savings["llm_alone_cost"] == pytest.approx(alone)
    se = (kept & ~audit).sum() * per_request.std(ddof=1) / math.sqrt(shadowed.sum())
    assert savings["llm_alone_cost_standard_error"] == pytest.approx(se)
    low, high = savings["saved_fraction_interval"]
    assert low < savings["saved_fraction"] < high
    # The truth (every kept request's LLM cost, 2x the SLM's tokens) lies within the interval.
    true_alone = (LLM_PER_TOKEN * 2 * tokens).sum()
    assert low <= 1 - spent / true_alone <= high


def test_unanswered_and_other_models_lines_are_left_out():
    good = [_line(i, 0.9, 0.5) for i in range(5)]
    bad = [_line(10, 0.9, 0.5, finish="error"), _line(11, 0.9, 0.5, finish="cancelled"),
           _line(12, 0.9, 0.5, failed=True), _line(13, 0.9, 0.5, served="corea-slm")]
    labels = {f"r{i}": False for i in range(14)}
    result = monitor.snapshot(good + bad, labels, window=100, epsilon=0.1)
    assert result["decisions"] == dict(answered=5, left_out={"error": 1, "cancelled": 1, "failed": 1})
    assert result["labels"]["used"] == 5 and result["savings"]["requests"] == 5


def test_degraded_requests_keep_the_feedback_and_claim_no_saving():
    lines = [_line(0, 0.1, 0.5, llm_failed=True), _line(1, 0.9, 0.5)]
    result = monitor.snapshot(lines, {"r0": True, "r1": True}, window=10, epsilon=0.1)
    assert result["labels"]["feedback"] == 2 and result["risk"]["kept"] == 1
    part = result["savings"]["parts"]["not_as_planned"]
    assert part["requests"] == 1 and part["spent_cost"] == part["llm_alone_cost"] == 10 * SLM_PER_TOKEN


def test_risk_against_epsilon_and_the_current_tau():
    old = [_line(i, 0.9, 0.3, audit=True, agree=False) for i in range(50)]  # a bad old tau
    new = [_line(100 + i, 0.9 if i % 2 else 0.1, 0.5, audit=True, agree=i % 20 != 1) for i in range(200)]
    everything = monitor.snapshot(old + new, {}, window=1000, epsilon=0.05)
    assert everything["taus"] == {"0.3": 50, "0.5": 200}
    assert everything["risk"]["versus_epsilon"] == "exceeded"
    current = monitor.snapshot(old + new, {}, window=1000, epsilon=0.05, current_tau=0.5)["risk"]
    assert current["labels"] == 200 and current["kept_wrong"] == 10 and current["under_current_tau"]
    assert current["kept_error_share"]["value"] == 0.05 and current["versus_epsilon"] == "undecided"
    looser = monitor.snapshot(old + new, {}, window=1000, epsilon=0.2, current_tau=0.5)["risk"]
    assert looser["versus_epsilon"] == "within"
    deferring = [_line(i, 0.9, None, audit=True, agree=True) for i in range(5)]
    risk = monitor.snapshot(deferring, {}, window=10, epsilon=0.05, current_tau=math.inf)["risk"]
    assert risk["labels"] == 5 and risk["kept"] == 0 and risk["tau"] is None


@pytest.mark.parametrize("n", [1, 10, 40])
@pytest.mark.parametrize("p", [0.01, 0.1, 0.35])
def test_clopper_pearson_covers_at_its_level(n, p):
    """Exact coverage over every outcome k of Binomial(n, p): at least the level (CP is conservative)."""
    k = np.arange(n + 1)
    inside = [lo <= p <= hi for lo, hi in (monitor.binomial_interval(int(j), n, 0.9) for j in k)]
    coverage = stats.binom.pmf(k, n, p)[inside].sum()
    assert coverage >= 0.9 - 1e-9
    lo, hi = monitor.binomial_interval(3, 10, 0.95)
    assert (lo, hi) == pytest.approx((stats.beta.ppf(0.025, 3, 8), stats.beta.ppf(0.975, 4, 7)))


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="^window"):
        monitor.snapshot([], {}, window=0, epsilon=0.1)
    with pytest.raises(ValueError, match="^level"):
        monitor.binomial_interval(1, 2, 1.5)
    mixed = [_line(0, 0.9, 0.5), {**_line(1, 0.9, 0.5), "cost_model": "price"}]
    with pytest.raises(ValueError, match="^cost_model"):
        monitor.snapshot(mixed, {}, window=5, epsilon=0.1)
