"""The cost of a record: FLOPs (with the LM head), price, time; what the report says it counts."""

from types import SimpleNamespace

import numpy as np
import pytest

from configs.cascade import qwen_coder_gsm8k_cpu
from corea_jax.cascade import costs
from corea_jax.cascade import report as report_lib

# Qwen2.5-Coder-0.5B / 1.5B: non-embedding parameters (as the CPU run recorded them) and the
# LM head, hidden_size x vocab_size.
NON_EMBEDDING = {"slm": 357_898_112, "llm": 1_310_340_608}
HEAD = {"slm": 896 * 151_936, "llm": 1536 * 151_936}


def _record(model, prompt_tokens=200, generated_tokens=100, seconds=1.0):
    return dict(model=model, prompt_tokens=prompt_tokens, generated_tokens=generated_tokens, seconds=seconds)


def test_flops_count_the_lm_head_once_per_generated_token():
    cost = costs.CostModel("flops", params=NON_EMBEDDING, head_params=HEAD)
    n, h = NON_EMBEDDING["slm"], HEAD["slm"]
    assert cost(_record("slm", 200, 100)) == 2 * n * 300 + 2 * h * 100
    # Per generated token, the 0.5B's head is 28% of its matmul FLOPs, the 1.5B's 15%, so the
    # SLM / LLM ratio is 0.32, not the 0.27 of the non-embedding parameters alone.
    per_token = {m: cost(_record(m, 0, 1)) for m in ("slm", "llm")}
    assert 2 * h / per_token["slm"] == pytest.approx(0.276, abs=1e-3)
    assert 2 * HEAD["llm"] / per_token["llm"] == pytest.approx(0.151, abs=1e-3)
    assert per_token["slm"] / per_token["llm"] == pytest.approx(0.320, abs=1e-3)
    assert NON_EMBEDDING["slm"] / NON_EMBEDDING["llm"] == pytest.approx(0.273, abs=1e-3)


def test_lm_head_params_of_a_model_config_and_the_cpu_config():
    config = SimpleNamespace(vocab_size=151_936, hidden_size=896, tie_word_embeddings=True)
    assert costs.lm_head_params(config) == HEAD["slm"]  # tied weights: the matmul still runs
    cpu = qwen_coder_gsm8k_cpu.get_config()
    assert {role: cpu[role].lm_head_params for role in ("slm", "llm")} == HEAD


def test_flops_without_a_head_size_say_so_and_bad_sizes_name_the_field():
    cost = costs.CostModel("flops", params=NON_EMBEDDING, head_params={"slm": HEAD["slm"]})
    assert cost(_record("llm", 200, 100)) == 2 * NON_EMBEDDING["llm"] * 300
    text = cost.describe()
    assert "LM head counted for slm 136.1M" in text and "NOT counted for llm" in text
    assert "llm.lm_head_params" in text
    assert "NOT" not in costs.CostModel("flops", head_params=HEAD).describe()
    with pytest.raises(ValueError, match=r"llm\.lm_head_params: expected a number > 0"):
        costs.CostModel("flops", head_params={"llm": -1})


def test_report_costs_with_the_configs_heads_and_states_what_it_counts():
    config = qwen_coder_gsm8k_cpu.get_config()
    config.bootstrap = 0
    rng = np.random.default_rng(0)
    records = []
    for split, n in (("calibration", 40), ("test", 60)):
        for k in range(n):
            for model, tokens in (("slm", 90), ("llm", 230)):
                records.append(dict(
                    id=f"{split}/{k}", model=model, split=split, task="gsm8k", gold="1", response="",
                    answer="1", correct=bool(rng.random() < (0.3 if model == "slm" else 0.6)),
                    format_ok=True, confidence=dict(verbal=float(rng.random()), answer_mean_prob=None,
                                                    answer_min_prob=None, sequence_mean_prob=None),
                    confidence_text=None, prompt_tokens=200, generated_tokens=tokens, seconds=1.0,
                    cost=None, cost_model="flops", failed=False, error=None))
    rep, _ = report_lib.compute_report(config, records, costs.CostModel("flops", params=NON_EMBEDDING))
    expected = {m: 2 * NON_EMBEDDING[m] * (200 + t) + 2 * HEAD[m] * t for m, t in (("slm", 90), ("llm", 230))}
    assert rep["systems"]["SLM"]["avg_cost"] == pytest.approx(expected["slm"])
    assert rep["systems"]["LLM"]["avg_cost"] == pytest.approx(expected["llm"])
    assert "LM head counted for slm 136.1M, llm 233.4M" in rep["cost_definition"]
    rep["runtime_s"] = 0.0
    assert rep["cost_definition"] in report_lib.render_markdown(rep)
