"""Confidence sources, the two-turn follow-up that reuses the KV cache, and elicitation summaries."""

import math

import numpy as np
import pytest

import corea_jax
from corea_jax import confidence, evaluation, prompts
from corea_jax.generation import generate_followup
from tests.fetched_models import SMOLLM2, fetched_dir

pytestmark = pytest.mark.real_model  # every test reads SmolLM2


@pytest.fixture(scope="module")
def smol():
    return corea_jax.load_model(fetched_dir(SMOLLM2))


def test_answer_token_span_covers_the_boxed_answer(smol):
    tok = smol.tokenizer
    text = "12 * 7 = 84, so the answer is \\boxed{84}.\nConfidence: \\boxed{0.9}"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    start, end = confidence.answer_token_span(tok, ids, "gsm8k")
    spelled = tok.decode(ids[start:end])
    assert "84" in spelled and "0.9" not in spelled and len(spelled) <= 6


def test_confidence_scores_read_every_source(smol):
    tok = smol.tokenizer
    text = "So \\boxed{19}.\nConfidence: 0.75"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    logprobs = np.log(np.linspace(0.2, 0.9, len(ids)))
    scores = confidence.confidence_scores(tok, ids, logprobs, text, "gsm8k")
    assert scores["verbal"] == 0.75
    start, end = confidence.answer_token_span(tok, ids, "gsm8k")
    assert scores["answer_min_prob"] == pytest.approx(np.exp(logprobs[start:end]).min())
    assert scores["answer_mean_prob"] == pytest.approx(np.exp(logprobs[start:end]).mean())
    assert scores["sequence_mean_prob"] == pytest.approx(np.exp(logprobs).mean())
    none = confidence.confidence_scores(tok, ids[:2], logprobs[:2], "no answer here", "math")
    assert math.isnan(none["verbal"]) and math.isnan(none["answer_mean_prob"])


def test_followup_turn_on_the_cache_equals_reencoding_the_conversation(smol):
    """Continuing the first turn's KV cache gives the tokens a full re-encode gives."""
    questions = ["What is 12 times 7?", "Tom has 3 apples and buys 5 more. How many now?",
                 "Name a prime number bigger than 10."]
    conversations = [prompts.build_messages(q, prompts.PROMPTS["rlvr"]) for q in questions]
    out = generate_followup(smol, conversations, prompts.followup_suffix,
                            corea_jax.SamplingParams(max_new_tokens=40),  # some rows hit the limit
                            corea_jax.SamplingParams(max_new_tokens=12), progress=False)
    assert any(pair[0][0].finish_reason == "length" for pair in out)
    full = [prompts.followup_messages(c, pair[0][0].text) for c, pair in zip(conversations, out)]
    reference = corea_jax.generate(smol, full, corea_jax.SamplingParams(max_new_tokens=12),
                                   progress=False)
    for pair, ref in zip(out, reference):
        first, follow = pair[0]
        assert follow.token_ids == ref[0].token_ids
        assert np.allclose(follow.logprobs, ref[0].logprobs, atol=1e-4)
        assert follow.num_prompt_tokens > first.num_prompt_tokens


def test_followup_rejects_bad_settings(smol):
    conv = [prompts.build_messages("1+1?", prompts.PROMPTS["rlvr"])]
    with pytest.raises(ValueError, match="followup_sampling.n"):
        generate_followup(smol, conv, prompts.followup_suffix, corea_jax.SamplingParams(max_new_tokens=4),
                          corea_jax.SamplingParams(max_new_tokens=4, n=2), progress=False)


def test_elicit_and_summarize_on_a_real_model(smol):
    records = evaluation.elicit(smol, ["What is 2 + 3?", "What is 10 - 4?"], ["5", "6"],
                                task="gsm8k", mode="two_turn", max_new_tokens=24,
                                followup_tokens=8, progress=False)
    assert len(records) == 2 and all(isinstance(r["correct"], bool) for r in records)
    summary = evaluation.summarize(records)
    assert summary["n"] == 2 and 0 <= summary["accuracy"] <= 1
    assert set(confidence.SOURCES) <= set(summary)
    with pytest.raises(ValueError, match="mode"):
        evaluation.elicit(smol, ["q"], ["a"], task="gsm8k", mode="three_turn")
    with pytest.raises(ValueError, match="golds"):
        evaluation.elicit(smol, ["q", "r"], ["a"], task="gsm8k", mode="one_turn")
