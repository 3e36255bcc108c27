"""Grading: a response and a gold answer in, correct or not out (extraction, then equivalence)."""

from __future__ import annotations

import concurrent.futures
import os
from typing import Sequence

from corea_jax.grading.equivalence import answers_equal
from corea_jax.grading.extraction import check_task, extract_answer
from corea_jax.grading.limits import MAX_ANSWER_CHARS

DEFAULT_TIMEOUT_S = 3.0


def grade(response: str, gold: str, task: str = "math", *, timeout_s: float = DEFAULT_TIMEOUT_S) -> bool:
    """True iff the answer in `response` equals `gold`.

    Args:
      response: the model's full output text.
      gold: math: the reference answer (`\\frac{1}{2}`), or a full solution whose last
        box is it; gsm8k: a solution ending in `#### n`, or `n`; choice: a letter A-E
        (`B`, `(B)`, `\\text{(B)}`).
      task: "math" (symbolic equivalence via math-verify), "gsm8k" (numeric, commas and
        units tolerated), or "choice" (option letter).
      timeout_s: seconds allowed for the math-verify step; past it the answer is
        judged incorrect. (A worker's one-time start is bounded separately.)

    Raises ValueError for an unknown task or an unusable gold; never for the response.
    """
    check_task(task)
    pred = extract_answer(response, task)
    if pred is None:
        return False
    if len(pred) > MAX_ANSWER_CHARS:
        # No real answer is this long; refusing it keeps normalization's regexes cheap.
        return pred.strip() == gold.strip()
    return answers_equal(pred, gold, task, timeout_s)


def grade_batch(
    responses: Sequence[str],
    golds: Sequence[str],
    task: str = "math",
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    max_workers: int | None = None,
) -> list[bool]:
    """`grade` over pairs [N] -> [N] bools, math-verify calls spread over worker processes.

    max_workers: concurrent graders (each may own one worker process); defaults to
    min(8, CPU count). Results are in input order.
    """
    check_task(task)
    if len(responses) != len(golds):
        raise ValueError(
            f"responses and golds must have the same length, got {len(responses)} and {len(golds)}"
        )
    workers = max_workers or min(8, os.cpu_count() or 1)
    if workers <= 1 or len(responses) <= 1:
        return [grade(r, g, task, timeout_s=timeout_s) for r, g in zip(responses, golds)]
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda rg: grade(rg[0], rg[1], task, timeout_s=timeout_s), zip(responses, golds)))
