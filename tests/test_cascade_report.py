"""The report as a pure function of records: systems, costs, intervals, files, failures."""

import json
import math

import numpy as np
import pytest

from configs.cascade import qwen_coder_gsm8k_cpu
from corea_jax.cascade import report as report_lib
from corea_jax.cascade.costs import CostModel

PARAMS = {"slm": 1e8, "llm": 1e9}


def _record(item_id, model, split, correct, verbal=None, minp=None, hidden=None, failed=False):
    r = dict(id=item_id, model=model, split=split, task="gsm8k", gold="1", response="", answer="1",
             correct=bool(correct), format_ok=True,
             confidence=dict(verbal=verbal, answer_mean_prob=minp, answer_min_prob=minp,
                             sequence_mean_prob=0.5),
             confidence_text=None, prompt_tokens=100, generated_tokens=50 if model == "slm" else 80,
             seconds=1.0 if model == "slm" else 4.0, cost=None, cost_model="flops", failed=failed,
             error="boom" if failed else None)
    if hidden is not None:
        r["hidden"] = hidden
    return r


def _records(n_cal=120, n_test=200, seed=0, hidden=True):
    """A population where min-prob is informative and verbal is noise; the LLM is better."""
    rng = np.random.default_rng(seed)
    out = []
    for split, n in (("calibration", n_cal), ("test", n_test)):
        for k in range(n):
            p = rng.random()
            slm_ok, llm_ok = rng.random() < p, rng.random() < 0.7
            feat = [float(p + 0.1 * rng.normal()), float(rng.normal())] if hidden else None
            out.append(_record(f"{split}/{k}", "slm", split, slm_ok, verbal=float(rng.choice([0.8, 0.9])),
                               minp=p, hidden=feat))
            out.append(_record(f"{split}/{k}", "llm", split, llm_ok))
    return out


def _config(**overrides):
    config = qwen_coder_gsm8k_cpu.get_config()
    config.bootstrap = 200
    config.threshold.epsilon = 0.1
    for key, value in overrides.items():
        config[key] = value
    return config


def test_systems_metrics_costs_and_invariants():
    records = _records()
    rep, _ = report_lib.compute_report(_config(), records, CostModel("flops", PARAMS))
    systems = rep["systems"]
    assert set(systems) == set(report_lib.SYSTEMS) and rep["n_test"] == 200 and rep["n_calibration"] == 120
    for name, m in systems.items():
        assert set(m) == set(report_lib.FIELDS), name
        for field in ("pass_at_1", "llm_usage", "ece", "auroc", "brier"):
            assert m[field] is None or 0 <= m[field] <= 1, (name, field)
    head = {role: _config()[role].lm_head_params for role in ("slm", "llm")}  # from the config
    slm_cost, llm_cost = 2 * 1e8 * 150 + 2 * head["slm"] * 50, 2 * 1e9 * 180 + 2 * head["llm"] * 80
    assert systems["SLM"]["avg_cost"] == pytest.approx(slm_cost)
    assert systems["LLM"]["avg_cost"] == pytest.approx(llm_cost)
    corea = systems["COREA"]  # a deferred item pays both calls
    assert corea["avg_cost"] == pytest.approx(slm_cost + corea["llm_usage"] * llm_cost)
    cal_llm = np.mean([r["correct"] for r in records if r["model"] == "llm" and r["split"] == "calibration"])
    assert corea["tau"] == pytest.approx(cal_llm)  # the paper's rule
    best = max(m["pass_at_1"] for n, m in systems.items() if n != "Oracle")
    assert systems["Oracle"]["pass_at_1"] >= best
    random = systems["Random"]
    assert random["llm_usage"] == pytest.approx(corea["llm_usage"])
    lo, hi = sorted([systems["SLM"]["pass_at_1"], systems["LLM"]["pass_at_1"]])
    assert lo <= random["pass_at_1"] <= hi
    # Min-prob is informative here, verbal is not; the probe learns it from the hidden state.
    assert systems["Cascade-MinProb"]["auroc"] > 0.7 and systems["Cascade-Probe"]["auroc"] > 0.7
    assert abs(systems["COREA"]["auroc"] - 0.5) < 0.15
    for name in ("SLM", "COREA", "Cascade-MinProb"):
        ci = rep["intervals"][name]
        assert ci["pass_at_1"][0] <= systems[name]["pass_at_1"] <= ci["pass_at_1"][1]
        assert ci["cost_saving"][0] <= rep["cost_saving"][name] <= ci["cost_saving"][1]
    assert rep["accuracy_drop"]["LLM"] == 0 and rep["cost_saving"]["LLM"] == 0


def test_rescoring_with_another_cost_model_needs_only_the_records():
    records = _records(seed=1)
    flops, _ = report_lib.compute_report(_config(), records, CostModel("flops", PARAMS))
    price, _ = report_lib.compute_report(_config(), records, CostModel(
        "price", prices={"slm": (0.1, 0.4), "llm": (1.0, 4.0)}))
    time_, _ = report_lib.compute_report(_config(), records, CostModel("time"))
    for name in report_lib.SYSTEMS:
        assert flops["systems"][name]["pass_at_1"] == price["systems"][name]["pass_at_1"]
    assert price["systems"]["LLM"]["avg_cost"] == pytest.approx((100 * 1.0 + 80 * 4.0) / 1e6)
    assert time_["systems"]["LLM"]["avg_cost"] == pytest.approx(4.0)
    with pytest.raises(ValueError, match="llm.price_per_million"):
        report_lib.compute_report(_config(), records, CostModel("price", prices={"slm": (0.1, 0.4)}))


def test_failed_items_are_excluded_and_reported_never_wrong():
    records = _records(seed=2)
    records.append(_record("test/3", "llm", "test", False, failed=True))  # supersedes the good one
    rep, _ = report_lib.compute_report(_config(), records, CostModel("flops", PARAMS))
    assert rep["n_test"] == 199 and rep["failed"]["llm/test"] == 1


def test_deferred_mode_reports_no_llm_alone():
    records = [r for r in _records(seed=3) if not (r["model"] == "llm" and r["split"] == "test"
                                                   and int(r["id"].split("/")[1]) % 2)]
    config = _config(llm_on="deferred")
    deferred = report_lib.deferred_ids(config, records)
    records = [r for r in records if not (r["model"] == "llm" and r["split"] == "test")] + \
              [_record(i, "llm", "test", True) for i in deferred]
    rep, _ = report_lib.compute_report(config, records, CostModel("flops", PARAMS))
    assert rep["systems"]["LLM"] is None and rep["systems"]["Oracle"] is None
    assert rep["systems"]["COREA"] is not None and any("deferred" in n for n in rep["notes"])


def test_files_are_written_and_read_well(tmp_path):
    from corea_jax.cascade.datasets import Item

    records = _records(seed=4)
    cal = [Item(f"calibration/{k}", "q", "1", "gsm8k") for k in range(120)]
    test = [Item(f"test/{k}", "q", "1", "gsm8k") for k in range(200)]
    rep = report_lib.write_report(_config(), tmp_path, records, cal, test, CostModel("flops", PARAMS))
    on_disk = json.loads((tmp_path / "report.json").read_text())
    assert on_disk["systems"] == rep["systems"]
    assert {"systems", "n_test", "n_calibration", "cost_model", "runtime_s"} <= set(on_disk)
    text = (tmp_path / "report.md").read_text()
    for name in report_lib.SYSTEMS:
        assert f"| {name} |" in text
    assert "verbal confidence parsed" in text
    for png in ("frontier.png", "reliability_slm_verbal.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not math.isnan(on_disk["runtime_s"])
