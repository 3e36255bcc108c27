"""A byte-level BPE tokenizer trained on a task's text, saved as a transformers tokenizer.

The reproduction trains its models from scratch, so it trains their tokenizer too; saved
as a `PreTrainedTokenizerFast` with a ChatML chat template (Qwen2's), it is loaded by
`AutoTokenizer.from_pretrained` and used through the same interface (chat template, special
tokens, decode) as a real model's. Digits are split one per token so that numbers are
spelled, as in Llama's and Qwen2's tokenizers, and every number is representable.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

PAD_TOKEN = "<|endoftext|>"
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = (PAD_TOKEN, IM_START, IM_END)

# Qwen2's ChatML template without the default system turn.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def train_tokenizer(texts: Iterable[str], out_dir: str | os.PathLike, *, vocab_size: int = 512):
    """Trains byte-level BPE on `texts` and saves it to `out_dir`; returns the transformers
    tokenizer (eos = `<|im_end|>`, the end of an assistant turn; pad = `<|endoftext|>`).

    `vocab_size` counts the 256 byte tokens, the merges and the special tokens.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if vocab_size < 256 + len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size: expected at least {256 + len(SPECIAL_TOKENS)} (bytes and special "
                         f"tokens), found {vocab_size}")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token=IM_END, pad_token=PAD_TOKEN,
                                   additional_special_tokens=[IM_START], chat_template=CHAT_TEMPLATE)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(out_dir))
    return fast
