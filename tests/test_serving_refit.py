"""Re-fitting tau from a server's live log: each rule on a synthetic records.jsonl, the evidence
written with it, and refusals that name what is missing."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from corea_jax.cascade import thresholds
from corea_jax.serving.refit import read_threshold
from corea_jax.serving.refit import describe, refit


def _line(i: int, confidence: float, *, audit=False, agree=None, llm_correct=None, served="corea") -> dict:
    llm = None if agree is None and llm_correct is None else {"model": "llm", "correct": llm_correct, "failed": False}
    return dict(id=f"r{i}", request_id=f"r{i}", model="slm", split="live", served_model=served, failed=False,
                correct=None, confidence={"verbal": confidence}, audit=audit, agree=agree, llm=llm)


def _write(path, lines) -> None:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))


def test_usage_rule_sends_the_target_share_to_the_llm(tmp_path):
    rng = np.random.default_rng(0)
    confidences = rng.uniform(size=200).round(3)
    lines = [_line(i, float(c), served="corea" if i % 2 else "corea-slm") for i, c in enumerate(confidences)]
    lines.append({**_line(999, 0.0), "failed": True})  # a failed call is no evidence
    _write(tmp_path / "records.jsonl", lines)
    result = refit(tmp_path, "usage", target_usage=0.25)
    assert result["items"] == 200 and result["rule"] == "usage"
    assert result["evidence"]["llm_share_at_tau"] == pytest.approx(0.25, abs=0.01)
    assert result["tau"] == thresholds.usage_threshold(confidences.tolist(), 0.25)
    assert read_threshold(tmp_path)["tau"] == result["tau"]  # what the server loads on SIGHUP
    assert "usage rule on 200 logged requests" in describe(result)


def test_risk_rule_certifies_agreement_on_audited_requests(tmp_path):
    rng = np.random.default_rng(1)
    n = 400
    confidences = rng.uniform(size=n)
    agree = rng.uniform(size=n) < confidences  # the SLM agrees with the LLM more when confident
    audited = rng.uniform(size=n) < 0.5
    lines = [_line(i, float(c), audit=bool(a), agree=bool(g) if a else None)
             for i, (c, g, a) in enumerate(zip(confidences, agree, audited))]
    _write(tmp_path / "records.jsonl", lines)
    result = refit(tmp_path, "risk", epsilon=0.1, delta=0.1)
    used = audited
    want = thresholds.risk_controlled_threshold(confidences[used], agree[used], np.ones(used.sum(), bool),
                                                epsilon=0.1, delta=0.1)
    assert result["tau"] == want and 0 < want < 1 and result["items"] == used.sum()
    kept = confidences[used] >= want
    assert (kept & ~agree[used]).mean() <= 0.1  # the certified risk holds on the fitting sample
    assert "with probability >= 0.9" in result["guarantee"] and result["epsilon"] == 0.1


def test_risk_rule_with_no_certifiable_tau_defers_everything(tmp_path):
    lines = [_line(i, 0.9, audit=True, agree=False) for i in range(30)]
    _write(tmp_path / "records.jsonl", lines)
    result = refit(tmp_path, "risk", epsilon=0.05, delta=0.1)
    assert result["tau"] is None and result["defer_everything"] and "no tau is certified" in result["reason"]
    json.loads((tmp_path / "threshold.json").read_text(), parse_constant=pytest.fail)  # plain JSON
    assert read_threshold(tmp_path)["tau"] == math.inf
    assert "defer everything" in describe(result)


def test_paper_rule_needs_graded_llm_answers(tmp_path):
    _write(tmp_path / "records.jsonl", [_line(i, 0.5) for i in range(30)])
    with pytest.raises(ValueError, match=r"^min_items: 0 records with a graded LLM answer"):
        refit(tmp_path, "paper")
    lines = [_line(i, 0.5, llm_correct=i % 4 != 0) for i in range(40)]
    _write(tmp_path / "records.jsonl", lines)
    assert refit(tmp_path, "paper")["tau"] == 0.75


def test_too_few_requests_and_unknown_rules_are_refused(tmp_path):
    _write(tmp_path / "records.jsonl", [_line(i, 0.5) for i in range(5)])
    with pytest.raises(ValueError, match=r"^min_items: 5 SLM answers"):
        refit(tmp_path, "usage")
    with pytest.raises(ValueError, match=r"^min_items: 0 audited corea requests .*raise shadow_rate"):
        refit(tmp_path, "risk", min_items=1)
    with pytest.raises(ValueError, match=r"^rule: expected one of"):
        refit(tmp_path, "median")
    assert not (tmp_path / "threshold.json").exists()


def test_launch_refit_writes_the_threshold_and_names_a_missing_field(tmp_path):
    import subprocess
    import sys

    from tests.helpers import REPO

    _write(tmp_path / "records.jsonl", [_line(i, i / 10) for i in range(10)])
    run = lambda *flags: subprocess.run([sys.executable, "-m", "launch.refit", f"--workdir={tmp_path}", *flags],  # noqa: E731
                                        cwd=REPO, capture_output=True, text=True, timeout=300)
    done = run("--rule=usage", "--target_usage=0.3", "--min_items=5")
    assert done.returncode == 0, done.stderr[-1000:]
    assert "tau = 0.3000 by the usage rule on 10 logged requests" in done.stdout
    assert read_threshold(tmp_path)["tau"] == 0.3
    refused = run("--rule=risk", "--min_items=5")
    assert refused.returncode != 0 and "min_items: 0 audited corea requests" in refused.stderr
