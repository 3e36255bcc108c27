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
from corea_jax import calibration


def elicit(model, questions: Sequence[str], golds: Sequence[str], *, task: str, mode: str,
           max_new_tokens: int = 256, followup_tokens: int = 24, batch_size: int = 32,
           progress: bool = True) -> list[dict]:
    """One greedy answer per question, graded, with every confidence source.

    The cascade's local backend asks the questions (`cascade.backends.LocalBackend`, the COREA
    prompt; two-turn: without its confidence line, then the follow-up), so a question scores
    the same here and in a cascade. Returns one record per question: question, gold, response,
    confidence_text (the follow-up reply, two-turn only), correct, format_ok, and a score per
    `confidence.SOURCES` entry (NaN where absent).
    """
    from corea_jax.cascade import MODES, LocalBackend, Item

    if mode not in MODES:
        raise ValueError(f"mode: expected one of {MODES}, found {mode!r}")
    if len(questions) != len(golds):
        raise ValueError(f"golds: expected {len(questions)} answers (one per question), found {len(golds)}")
    backend = LocalBackend(model, name="elicit", mode=mode, prompt="corea", max_new_tokens=max_new_tokens,
                           followup_tokens=followup_tokens, batch_size=batch_size, progress=progress)
    items = [Item(id=str(i), question=q, gold=str(g), task=task) for i, (q, g) in enumerate(zip(questions, golds))]
    records = []
    for item, answer in zip(items, backend.answer(items)):
        scores = {source: math.nan if answer.confidence.get(source) is None else answer.confidence[source]
                  for source in confidence_lib.SOURCES}
        records.append(dict(question=item.question, gold=item.gold, response=answer.response,
                            confidence_text=answer.confidence_text, correct=answer.correct,
                            format_ok=answer.format_ok, **scores))
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
            entry.update(mean=float(conf.mean()), ece=calibration.ece(conf, ok),
                         brier=calibration.brier(conf, ok), auroc=calibration.auroc(conf, ok))
        out[source] = entry
    return out
