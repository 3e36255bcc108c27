"""The sampled protocol's splits and claim margins, without a model."""

import json

from corea_jax.reproduction import cascade_stages
from corea_jax.reproduction.report import claims


def test_sampled_splits_repeat_each_question_sample_major(tmp_path):
    task, out = tmp_path / "task", tmp_path / "out"
    task.mkdir()
    out.mkdir()
    for split, n in (("calibration", 2), ("test", 3)):
        (task / f"{split}.jsonl").write_text("".join(
            json.dumps({"id": f"{split}-{i}", "question": f"q{i}", "answer": str(i), "digits": 1}) + "\n"
            for i in range(n)))
    assert cascade_stages.sampled_splits(task, 4, out) == {"calibration": 2, "test": 3}
    rows = [json.loads(line) for line in (out / "test.jsonl").read_text().splitlines()]
    assert len(rows) == 12
    # row j * N + i: sample j of question i (the cascade's item id "test/<row>")
    assert [(r["sample"], r["question_index"], r["question"]) for r in rows[3:6]] == [(1, 0, "q0"), (1, 1, "q1"),
                                                                                    (1, 2, "q2")]


def _systems(sft, rlvr, rlcc, corea=0.94, llm=0.95):
    entry = lambda acc, ece=0.1, auroc=0.9, cost=1.0: dict(pass_at_1=acc, ece=ece, auroc=auroc, avg_cost=cost)  # noqa: E731
    return {"SFT-SLM": entry(sft, ece=0.4), "RLVR-SLM": entry(rlvr, ece=0.3), "RLCC-SLM": entry(rlcc, ece=0.05),
            "LLM": entry(llm, cost=10.0), "COREA": entry(corea, cost=6.0)}


def test_claim_margins_are_the_distance_to_each_bound():
    rows = {r["claim"]: r for r in claims(_systems(0.56, 0.59, 0.555))}
    assert abs(rows["RLVR-SLM pass@1 > SFT-SLM's"]["margin"] - 0.03) < 1e-12
    assert rows["RLVR-SLM pass@1 > SFT-SLM's"]["holds"]
    assert abs(rows["RLCC-SLM pass@1 > SFT-SLM's"]["margin"] + 0.005) < 1e-12
    assert not rows["RLCC-SLM pass@1 > SFT-SLM's"]["holds"]
    assert abs(rows["COREA cost <= 80% of the LLM's"]["margin"] - 0.2) < 1e-12
    assert abs(rows["COREA pass@1 within 2 points of the LLM's"]["margin"] - 0.01) < 1e-12
    # a tie fails a strict claim and holds a non-strict one
    tie = {r["claim"]: r for r in claims(_systems(0.56, 0.56, 0.57, corea=0.93))}
    assert not tie["RLVR-SLM pass@1 > SFT-SLM's"]["holds"]
    assert tie["COREA pass@1 within 2 points of the LLM's"]["holds"]
