"""Confidence elicitation on a model: answers, grades, confidence sources, calibration metrics.

Two ways to ask for a confidence (see `corea_jax.prompts`):
  one_turn  the COREA prompt: reasoning, a boxed answer and a last `Confidence:` line.
  two_turn  the RLVR prompt for the answer, then a follow-up turn that asks only for the
            confidence, continuing the first turn's KV cache (`generate_followup`).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from corea_jax import confidence as confidence_lib
from corea_jax import grading, metrics, prompts
from corea_jax.generation import SamplingParams, generate, generate_followup

MODES = ("one_turn", "two_turn")


def elicit(model, questions: Sequence[str], golds: Sequence[str], *, task: str, mode: str,
           max_new_tokens: int = 256, followup_tokens: int = 24, batch_size: int = 32,
           progress: bool = True) -> list[dict]:
    """One greedy answer per question, graded, with every confidence source.

    Returns one record per question: question, gold, response, correct, format_ok,
    and a score per `confidence.SOURCES` entry (NaN where absent).
    """
    if mode not in MODES:
        raise ValueError(f"mode: expected one of {MODES}, found {mode!r}")
    if len(questions) != len(golds):
        raise ValueError(f"golds: expected {len(questions)} answers (one per question), found {len(golds)}")
    tok = model.tokenizer
    sampling = SamplingParams(max_new_tokens=max_new_tokens)
    records = []
    if mode == "one_turn":
        conversations = [prompts.build_messages(q, prompts.PROMPTS["corea"]) for q in questions]
        outputs = generate(model, conversations, sampling, batch_size=batch_size, progress=progress)
        pairs = [(out[0], out[0]) for out in outputs]
    else:
        conversations = [prompts.build_messages(q, prompts.PROMPTS["rlvr"]) for q in questions]
        outputs = generate_followup(model, conversations, prompts.followup_suffix, sampling,
                                    SamplingParams(max_new_tokens=followup_tokens),
                                    batch_size=batch_size, progress=progress)
        pairs = [out[0] for out in outputs]
    for question, gold, (answer, stated) in zip(questions, golds, pairs):
        scores = confidence_lib.confidence_scores(tok, answer.token_ids, answer.logprobs,
                                                  answer.text, task)
        verbal = grading.parse_confidence(stated.text)
        scores["verbal"] = math.nan if verbal is None else verbal
        records.append(dict(
            question=question, gold=gold, response=answer.text,
            confidence_text=stated.text if mode == "two_turn" else None,
            correct=grading.grade(answer.text, gold, task),
            format_ok=grading.extract_answer(answer.text, task) is not None,
            **scores))
    return records


def summarize(records: list[dict]) -> dict:
    """Accuracy, parse rates, and per-source coverage / ECE / Brier / AUROC."""
    correct = np.asarray([r["correct"] for r in records], bool)
    out = {"n": len(records), "accuracy": float(correct.mean()),
           "answer_parse_rate": float(np.mean([r["format_ok"] for r in records]))}
    for source in confidence_lib.SOURCES:
        values = np.asarray([r[source] for r in records], np.float64)
        have = ~np.isnan(values)
        entry = {"coverage": float(have.mean())}
        if have.any():
            conf, ok = np.clip(values[have], 0, 1), correct[have]
            entry.update(mean=float(conf.mean()), ece=metrics.ece(conf, ok),
                         brier=metrics.brier(conf, ok), auroc=metrics.auroc(conf, ok))
        out[source] = entry
    return out
