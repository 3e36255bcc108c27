"""From a model's text to a verdict: answer extraction, verbalized confidence, grading.

The response format (see `corea_jax.prompts`) is step-by-step reasoning, the final
answer in `\\boxed{}` and a last line `Confidence: <number between 0 and 1>`.

Public surface:
  extract_answer(response, task)  -> str | None   the answer text the grader will judge
  extract_answer_span(response, task) -> (start, end) | None  where that answer sits
  parse_confidence(response)      -> float | None a confidence in [0, 1]
  format_ok(response, ...)        -> bool         boxed answer (and confidence) present
  grade(response, gold, task)     -> bool         correct or not, time-bounded
  grade_batch(responses, golds, task) -> list[bool]
  shutdown()                      stop the math-verify worker processes

One job a module: `verbalized` (confidence parsing), `extraction` (which text is the
answer), `equivalence` (is it the gold answer), `verdict` (the two together), `pool` and
`worker` (math-verify in bounded worker processes), `limits` (how much text is read).

Safety and time: grading never evaluates model text. Symbolic equivalence goes
through math-verify's LaTeX parser only (its plain-expression parser calls sympy's
`parse_expr`, which `eval`s), and it runs in a separate worker process with a wall-clock
timeout, an address-space limit and a CPU-time limit (see `corea_jax.grading.worker`).
Most calls never reach the worker: exact and numeric comparisons settle them first.
"""

from corea_jax.grading.extraction import TASKS, extract_answer, extract_answer_span, format_ok
from corea_jax.grading.pool import shutdown
from corea_jax.grading.verbalized import parse_confidence
from corea_jax.grading.verdict import DEFAULT_TIMEOUT_S, grade, grade_batch

__all__ = [
    "DEFAULT_TIMEOUT_S", "TASKS", "extract_answer", "extract_answer_span", "format_ok", "grade",
    "grade_batch", "parse_confidence", "shutdown",
]
