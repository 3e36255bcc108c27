"""Real pretrained models for tests: fetched HF directories and a fixed chat-templated batch."""

from __future__ import annotations

from pathlib import Path

import numpy as np

SMOLLM2 = "smollm2-135m-instruct"
QWEN_05B = "qwen2.5-coder-0.5b-instruct"

# Row 0 runs past the prompt length and is cut; row 1 is shorter and left-padded.
_MESSAGES = [
    [{"role": "system", "content": "You are a careful Python programmer. Answer with code only."},
     {"role": "user", "content": "Write a function `fib(n)` that returns the n-th Fibonacci number "
                                 "iteratively, with a docstring, type hints and two doctests, and "
                                 "explain why the iterative version is faster than naive recursion."}],
    [{"role": "user", "content": "What is 17 * 23?"}],
]


def fetched_dir(name: str) -> Path:
    """The registry model's HF directory in the corea_jax cache (written on first use)."""
    from corea_jax.models import fetch

    return fetch.fetch_model(name, fetch.default_model_dir(name))


def chat_prompt_batch(tokenizer, length: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """(ids [2, length], mask [2, length]) of two chat-templated prompts, left-padded or cut."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = np.full((len(_MESSAGES), length), pad, np.int64)
    mask = np.zeros((len(_MESSAGES), length), np.int64)
    for row, messages in enumerate(_MESSAGES):
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        tokens = tokenizer(text, add_special_tokens=False)["input_ids"][:length]
        ids[row, length - len(tokens):] = tokens
        mask[row, length - len(tokens):] = 1
    assert mask[0].all() and not mask[1].all(), "prompts no longer cover the cut and padded cases"
    return ids, mask

