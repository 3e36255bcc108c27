"""A tokenizer trained on task text behaves like a real model's: chat template, eos, round trips."""

import pytest

from corea_jax.data import chains, tokenizer_training


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    problems = chains.make_problems(300, seed=0, max_ops=4, max_digits=2)
    out = tmp_path_factory.mktemp("tok")
    tokenizer_training.train_tokenizer([p.question for p in problems] + [p.solution for p in problems]
                                       + ["user", "assistant"], out, vocab_size=300)
    return out


def test_loads_as_a_transformers_tokenizer_with_chat_template(tokenizer_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    assert len(tok) <= 300
    assert tok.eos_token == tokenizer_training.IM_END and tok.pad_token == tokenizer_training.PAD_TOKEN
    text = tok.apply_chat_template([{"role": "user", "content": "a=4;b=a+3;b?"}], tokenize=False,
                                   add_generation_prompt=True)
    assert text == "<|im_start|>user\na=4;b=a+3;b?<|im_end|>\n<|im_start|>assistant\n"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert ids.count(tok.convert_tokens_to_ids(tokenizer_training.IM_START)) == 2


def test_round_trips_unseen_text_and_spells_digits(tokenizer_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    text = "z=907-15=892\nThe final answer is \\boxed{892}.\nConfidence: 0.35"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids + [tok.eos_token_id], skip_special_tokens=True) == text
    pieces = tok.convert_ids_to_tokens(tok("892", add_special_tokens=False)["input_ids"])
    assert pieces == ["8", "9", "2"]


def test_too_small_a_vocabulary_is_refused(tmp_path):
    with pytest.raises(ValueError, match="vocab_size"):
        tokenizer_training.train_tokenizer(["a"], tmp_path, vocab_size=100)
