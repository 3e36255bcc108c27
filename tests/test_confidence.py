"""Confidence sources, the two-turn follow-up that reuses the KV cache, and elicitation summaries."""

import math

import numpy as np
import pytest

import corea_jax
from corea_jax import confidence, elicitation, prompts
from corea_jax.generation import generate_followup
from corea_jax.data.toy import ToyTokenizer
from tests.fetched_models import QWEN_05B, SMOLLM2, fetched_dir



@pytest.fixture(scope="module")
def smol():
    return corea_jax.load_model(fetched_dir(SMOLLM2))


@pytest.mark.real_model
def test_answer_token_span_covers_the_boxed_answer(smol):
    tok = smol.tokenizer
    text = "12 * 7 = 84, so the answer is \\boxed{84}.\nConfidence: \\boxed{0.9}"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    start, end = confidence.answer_token_span(tok, ids, "gsm8k")
    spelled = tok.decode(ids[start:end])
    assert "84" in spelled and "0.9" not in spelled and len(spelled) <= 6


@pytest.mark.real_model
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


@pytest.mark.real_model
@pytest.mark.slow
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


@pytest.mark.real_model
def test_followup_rejects_bad_settings(smol):
    conv = [prompts.build_messages("1+1?", prompts.PROMPTS["rlvr"])]
    with pytest.raises(ValueError, match="followup_sampling.n"):
        generate_followup(smol, conv, prompts.followup_suffix, corea_jax.SamplingParams(max_new_tokens=4),
                          corea_jax.SamplingParams(max_new_tokens=4, n=2), progress=False)


@pytest.mark.real_model
@pytest.mark.slow
def test_elicit_and_summarize_on_a_real_model(smol):
    records = elicitation.elicit(smol, ["What is 2 + 3?", "What is 10 - 4?"], ["5", "6"],
                                task="gsm8k", mode="two_turn", max_new_tokens=24,
                                followup_tokens=8, progress=False)
    assert len(records) == 2 and all(isinstance(r["correct"], bool) for r in records)
    summary = elicitation.summarize(records)
    assert summary["n"] == 2 and 0 <= summary["accuracy"] <= 1
    assert set(confidence.SOURCES) <= set(summary)
    with pytest.raises(ValueError, match="mode"):
        elicitation.elicit(smol, ["q"], ["a"], task="gsm8k", mode="three_turn")
    with pytest.raises(ValueError, match="golds"):
        elicitation.elicit(smol, ["q", "r"], ["a"], task="gsm8k", mode="one_turn")


# ---------------------------------------------------------------------------
# answer_token_span on tokenizers alone: byte-level BPE, SentencePiece, the toy vocabulary
# ---------------------------------------------------------------------------

_CORPUS = ["The answer is 42. Confidence: 0.9", "so the final answer is \\boxed{9}",
           "Le résultat est déjà là", "numbers 0 1 2 3 4 5 6 7 8 9 and more words here"]
_TEXTS = [  # (completion, task, the answer's text)
    ("3 * 3 = 9, so the answer is \\boxed{9}\nConfidence: 0.9", "math", "9"),
    ("Donc la réponse est \\boxed{é9} 😀\nConfidence: 0.9", "math", "é9"),
    ("答案是 \\boxed{九十}。\nConfidence: 0.95", "math", "九十"),
    ("It costs 9 dollars, 😀 answer is 19.\nConfidence: 0.9", "gsm8k", "19"),
]


@pytest.fixture(scope="module")
def sentencepiece_tokenizer(tmp_path_factory):
    """A Llama-style SentencePiece BPE with byte fallback, trained here (no download)."""
    import io

    import sentencepiece as spm
    from transformers import LlamaTokenizer

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_CORPUS * 20), model_writer=model, vocab_size=300, model_type="bpe",
        byte_fallback=True, character_coverage=1.0, split_digits=True, minloglevel=2)
    directory = tmp_path_factory.mktemp("spm")
    (directory / "tokenizer.model").write_bytes(model.getvalue())
    (directory / "tokenizer_config.json").write_text('{"tokenizer_class": "LlamaTokenizer"}')
    tok = LlamaTokenizer.from_pretrained(str(directory))
    assert "<0xE7>" in tok.convert_ids_to_tokens(tok("答", add_special_tokens=False)["input_ids"])
    return tok


class _DecodeOnly:
    """An HF tokenizer seen through `decode` alone (the duck-typed path), counting the ids it decodes."""

    def __init__(self, tok):
        self._tok, self.calls = tok, []

    def decode(self, ids, skip_special_tokens=True):
        self.calls.append(len(ids))
        return self._tok.decode(ids, skip_special_tokens=skip_special_tokens)


def _check_span(tok, text, task, answer, eos=None):
    ids = tok(text, add_special_tokens=False)["input_ids"] + ([eos] if eos is not None else [])
    start, end = confidence.answer_token_span(tok, ids, task)
    assert answer in tok.decode(ids[start:end])
    # Minimal: without its first or last token the span no longer spells the answer.
    assert answer not in tok.decode(ids[start + 1:end]) and answer not in tok.decode(ids[start:end - 1])
    duck = _DecodeOnly(tok)
    assert confidence.answer_token_span(duck, ids, task) == (start, end)
    assert len(duck.calls) <= 2 * len(ids) and max(duck.calls) <= 8  # a sliding window, not prefixes


@pytest.mark.parametrize("text, task, answer", _TEXTS)
def test_answer_span_on_a_sentencepiece_tokenizer(sentencepiece_tokenizer, text, task, answer):
    _check_span(sentencepiece_tokenizer, text, task, answer, eos=sentencepiece_tokenizer.eos_token_id)


@pytest.mark.real_model
@pytest.mark.parametrize("name", [SMOLLM2, QWEN_05B])
def test_answer_span_on_real_byte_level_tokenizers(name, monkeypatch):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(fetched_dir(name))
    for text, task, answer in _TEXTS:
        _check_span(tok, text, task, answer, eos=tok.eos_token_id)
    # The HF path is one incremental decode: tokenizer.decode is never called.
    monkeypatch.setattr(type(tok), "decode", lambda *a, **k: pytest.fail("decode called"))
    ids = tok(_TEXTS[0][0], add_special_tokens=False)["input_ids"]
    assert confidence.answer_token_span(tok, ids, "math") is not None


def test_answer_span_on_the_toy_tokenizer():
    tok = ToyTokenizer(num_answers=10)
    ids = tok.encode_completion("9", 0.9)  # [\boxed{9}, \nConfidence: 0.9, <eos>]
    assert confidence.answer_token_span(tok, ids, "gsm8k") == (0, 1)
    assert confidence.answer_token_span(tok, [tok.confidence_ids[9], 2], "gsm8k") is None
