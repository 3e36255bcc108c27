"""Tiny chat models for the cascade tests: a byte-level BPE tokenizer trained on the prompts,
a chat template, and random qwen2 weights (so nothing is downloaded)."""

from __future__ import annotations

from pathlib import Path

from tests.helpers import SHARED_DATA, save_random_hf_model  # noqa: F401 (SHARED_DATA re-exported)

CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def tiny_tokenizer(vocab_size: int = 1200):
    """A trained byte-level BPE tokenizer with a chat template and an <|end|> EOS token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from corea_jax import prompts

    corpus = [prompts.instruction(prompts.PROMPTS[p]) for p in prompts.PROMPTS]
    corpus += ["Janet has 3 apples and buys 5 more. How many apples? \\boxed{8} Confidence: 0.7"] * 5
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    special = ["<|pad|>", "<|bos|>", "<|end|>", "<|user|>", "<|assistant|>", "<|system|>"]
    tok.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<|pad|>", bos_token="<|bos|>",
                                   eos_token="<|end|>")
    fast.chat_template = CHAT_TEMPLATE
    return fast


def save_tiny_chat_model(out: Path, seed: int = 0, **overrides) -> Path:
    """A random qwen2 with the tiny tokenizer, saved as an HF directory `out`."""
    tokenizer = tiny_tokenizer()
    save_random_hf_model("qwen2", out, seed=seed, vocab_size=len(tokenizer), pad_token_id=0,
                         bos_token_id=1, eos_token_id=2, max_position_embeddings=1024, **overrides)
    tokenizer.save_pretrained(out)
    return out
