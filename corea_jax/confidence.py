"""Confidence sources for a completion: the verbalized number, and the answer's token probabilities.

COREA defers on the SLM's verbalized confidence. Before RLCC training that number is nearly
uninformative on small models, while the probability the model gave its own answer tokens
often separates right from wrong; both are kept so the cascade can use either.
"""

from __future__ import annotations

import bisect
import itertools
import math
from typing import Sequence

import numpy as np

from corea_jax import grading

SOURCES = ("verbal", "answer_mean_prob", "answer_min_prob", "sequence_mean_prob")


def _decode_pieces(tokenizer, token_ids: Sequence[int]) -> list[str]:
    """The text each token adds when the completion is decoded left to right, in one pass.

    A token that ends inside a character (byte-level BPE, SentencePiece byte fallback) adds
    "" and the token that completes the character adds it. HF tokenizers use the tokenizers
    library's incremental decoder; a duck-typed tokenizer with only `decode` (the toy one)
    is decoded over a sliding window of the last few tokens, as vLLM's detokenizer does:
    the text a token adds is the window's text with it minus the window's text without it.
    """
    ids = [int(t) for t in token_ids]
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        from tokenizers.decoders import DecodeStream

        stream = DecodeStream(skip_special_tokens=True)
        return [stream.step(backend, t) or "" for t in ids]
    pieces, prefix, read = [], 0, 0  # window ids[prefix:read] is decoded; ids[read:] pending
    for k in range(len(ids)):
        before = tokenizer.decode(ids[prefix:read], skip_special_tokens=True)
        after = tokenizer.decode(ids[prefix:k + 1], skip_special_tokens=True)
        if len(after) > len(before) and not after.endswith("\ufffd"):
            pieces.append(after[len(before):])
            prefix, read = read, k + 1
        else:
            pieces.append("")
    return pieces


def answer_token_span(tokenizer, token_ids: Sequence[int], task: str = "math") -> tuple[int, int] | None:
    """[start, end) indices of the tokens that spell the final answer, or None without one.

    The answer is the one `grading.extract_answer_span` locates in the decoded completion
    (the last box off the confidence line, or the task's fallback), so for
    `\\boxed{9}\\nConfidence: 0.9` it is the tokens of `9`, never the confidence's. Its
    character span maps to the tokens that overlap it; tokens that hold only part of the
    answer's first character (a split multi-byte character) count too.
    """
    pieces = _decode_pieces(tokenizer, token_ids)
    span = grading.extract_answer_span("".join(pieces), task)
    if span is None or span[0] == span[1]:
        return None
    ends = list(itertools.accumulate(len(piece) for piece in pieces))
    start = bisect.bisect_right(ends, span[0])  # the first token whose text passes span[0]
    while start > 0 and not pieces[start - 1]:
        start -= 1
    stop = bisect.bisect_left(ends, span[1])  # the first token whose text reaches span[1]
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
