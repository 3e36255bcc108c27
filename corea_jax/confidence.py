"""Confidence sources for a completion: the verbalized number, and the answer's token probabilities.

COREA defers on the SLM's verbalized confidence. Before RLCC training that number is nearly
uninformative on small models, while the probability the model gave its own answer tokens
often separates right from wrong; both are kept so the cascade can use either.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from corea_jax import grading

SOURCES = ("verbal", "answer_mean_prob", "answer_min_prob", "sequence_mean_prob")


def answer_token_span(tokenizer, token_ids: Sequence[int], task: str = "math") -> tuple[int, int] | None:
    """[start, end) indices of the tokens that spell the final answer, or None without one.

    The answer is what `grading.extract_answer` reads (the last box off the confidence line,
    or the task's fallback); its last occurrence in the decoded text is mapped back to tokens.
    """
    text = tokenizer.decode(list(token_ids), skip_special_tokens=True)
    answer = grading.extract_answer(text, task)
    if not answer:
        return None
    begin = text.rfind(answer)
    if begin < 0:
        return None
    end_char = begin + len(answer)
    # Character offset where each token's text ends, from incremental decoding.
    ends = [len(tokenizer.decode(list(token_ids[:k + 1]), skip_special_tokens=True))
            for k in range(len(token_ids))]
    start = next(k for k, e in enumerate(ends) if e > begin)
    stop = next((k for k, e in enumerate(ends) if e >= end_char), len(ends) - 1)
    return start, stop + 1


def confidence_scores(tokenizer, token_ids: Sequence[int], logprobs: Sequence[float], text: str,
                      task: str = "math") -> dict[str, float]:
    """Every source for one completion; NaN where a source has nothing to read."""
    scores = {source: math.nan for source in SOURCES}
    verbal = grading.parse_confidence(text)
    if verbal is not None:
        scores["verbal"] = verbal
    probs = np.exp(np.asarray(logprobs, np.float64))
    if probs.size:
        scores["sequence_mean_prob"] = float(probs.mean())
    span = answer_token_span(tokenizer, token_ids, task)
    if span is not None:
        answer_probs = probs[span[0]:span[1]]
        scores["answer_mean_prob"] = float(answer_probs.mean())
        scores["answer_min_prob"] = float(answer_probs.min())
    return scores
