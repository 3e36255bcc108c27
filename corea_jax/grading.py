"""From a model's text to a verdict: answer extraction, verbalized confidence, grading.

The response format (see `corea_jax.prompts`) is step-by-step reasoning, the final
answer in `\\boxed{}` and a last line `Confidence: <number between 0 and 1>`.

Public surface:
  extract_answer(response, task)  -> str | None   the answer text the grader will judge
  parse_confidence(response)      -> float | None a confidence in [0, 1]
  format_ok(response, ...)        -> bool         boxed answer (and confidence) present
  grade(response, gold, task)     -> bool         correct or not, time-bounded
  grade_batch(responses, golds, task) -> list[bool]
  shutdown()                      stop the math-verify worker processes

Safety and time: grading never evaluates model text. Symbolic equivalence goes
through math-verify's LaTeX parser only (its plain-expression parser calls sympy's
`parse_expr`, which `eval`s), and it runs in a separate worker process, started with
`subprocess` so it works from any thread, from daemonic worker processes and under any
multiprocessing start method. Each call is bounded by `timeout_s`: the worker
interrupts itself with a timer (math-verify's own `signal.alarm` only works in a main
thread, hence `parsing_timeout=None`), and if it is stuck in C code (a huge integer
power) the caller kills it after `timeout_s`, returns False and starts a replacement.
Most calls never reach the worker: exact and numeric comparisons settle them first.
The worker protocol waits on pipes with `select`, so grading is POSIX-only.
"""

from __future__ import annotations

import atexit
import bisect
import concurrent.futures
import functools
import json
import os
import re
import select
import subprocess
import sys
import threading
import time
from fractions import Fraction
from typing import Sequence

TASKS = ("math", "gsm8k", "choice")
DEFAULT_TIMEOUT_S = 3.0
# A cold worker imports sympy and the LaTeX parser once (about a second); this bound is
# for that start only and is kept apart from the per-call `timeout_s`.
_WORKER_START_TIMEOUT_S = 60.0
# Only the tail of a response can hold its final answer; the cap keeps regex work bounded.
_MAX_RESPONSE_CHARS = 200_000
# Answers longer or more deeply nested than any real MATH answer are not sent to sympy.
_MAX_ANSWER_CHARS = 1_000
_MAX_BRACE_DEPTH = 24
_MAX_NUMBER_DIGITS = 40


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got task={task!r}")


# ---------------------------------------------------------------------------
# Verbalized confidence
# ---------------------------------------------------------------------------

_NUMBER = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?!,\d)"
# One confidence value: a LaTeX fraction, or a number with an optional `/den` or percent.
_VALUE = (
    r"(?:\\[dt]?frac\s*\{\s*(?P<fnum>\d+)\s*\}\s*\{\s*(?P<fden>\d+)\s*\}"
    rf"|(?P<num>{_NUMBER})(?:\s*/\s*(?P<den>\d+(?:\.\d+)?))?\s*(?P<pct>\\?%|percent\b)?)"
)
# Between the keyword and the number we allow punctuation, LaTeX wrappers and a few
# glue words ("is", "level", "\boxed{"), but no other words: "Confidence: high" and
# "with confidence, the answer is 42" hold no confidence value.
_FILLER_WORDS = (
    "is|of|was|be|would|about|approximately|approx|around|roughly|level|score|rating|"
    "estimate|value|my|boxed|fbox|text|textbf|mathbf|mathrm"
)
_KEYWORD_RE = re.compile(
    rf"\bconfidence\b(?:[^\w\n.+\-]|\b(?:{_FILLER_WORDS})\b){{0,40}}?{_VALUE}", re.I
)
_TAG_RE = re.compile(rf"<confidence>\s*{_VALUE}\s*</confidence>", re.I)
_PERCENT_CONFIDENT_RE = re.compile(
    # The lookbehind anchors the number at its first digit: without it a long digit run
    # is rescanned from every position (quadratic time on adversarial text).
    r"(?<![\d.])(?P<num>\d+(?:\.\d+)?)\s*(?P<pct>\\?%|percent\b)\s*confiden(?:ce|t)\b", re.I
)
# Echoes of the instruction ("between 0 and 1", "(0-1)") hold digits that are not a value.
_RANGE_ECHO_RE = re.compile(
    r"\(\s*0(?:\.0+)?\s*(?:-|–|to|and|,)\s*1(?:\.0+)?\s*\)"
    r"|\[\s*0(?:\.0+)?\s*,\s*1(?:\.0+)?\s*\]"
    r"|\b(?:between|from)\s+0(?:\.0+)?\s+(?:and|to)\s+1(?:\.0+)?\b",
    re.I,
)
# A line that starts with the keyword is the confidence line: any box on it is not the answer.
_CONFIDENCE_LINE_RE = re.compile(r"^[ \t>*#_\-]*confidence\b[^\n]*", re.I | re.M)
_BARE_WRAPPERS_RE = re.compile(r"\\boxed\s*\{|\\fbox\s*\{|\\\(|\\\)|\\\[|\\\]|[${}*`\s]")


def _mask_range_echoes(text: str) -> str:
    """Blank out instruction echoes with spaces, keeping every other index in place."""
    return _RANGE_ECHO_RE.sub(lambda m: " " * len(m.group(0)), text)


def _value_of(match: re.Match) -> float | None:
    """The confidence a `_VALUE` match denotes, or None if it is not in [0, 1]."""
    groups = match.groupdict()
    try:
        if groups.get("fnum") is not None:
            den = float(groups["fden"])
            value = float(groups["fnum"]) / den if den else float("nan")
        else:
            value = float(groups["num"])
            if groups.get("den") is not None:
                den = float(groups["den"])
                value = value / den if den else float("nan")
            if groups.get("pct"):
                value /= 100.0
    except (ValueError, OverflowError):
        return None
    # NaN fails both comparisons, so it is rejected here too.
    return value if 0.0 <= value <= 1.0 else None


def _confidence_matches(text: str) -> list[re.Match]:
    """All confidence statements in `text` (already range-masked), in no particular order."""
    return [
        *_KEYWORD_RE.finditer(text),
        *_TAG_RE.finditer(text),
        *_PERCENT_CONFIDENT_RE.finditer(text),
    ]


def parse_confidence(response: str) -> float | None:
    """The verbalized confidence in `response`, a float in [0, 1], or None.

    Accepted: `Confidence: 0.85`, `.85`, `85%`, `85\\%`, `17/20`, `\\frac{17}{20}`,
    `<confidence>0.85</confidence>`, `Confidence: \\(\\boxed{0.6}\\)`,
    `the confidence is \\(\\boxed{1}\\)`, `90% confident`, and a response that is
    nothing but such a number (the reply to the two-turn follow-up). When several
    statements appear the last one counts, even if it is invalid. Out of range
    (`Confidence: 85` without `%`), NaN, negative, or words (`Confidence: high`)
    give None. A bare number inside a longer response is not a confidence, and the
    keyword and its value must share a line (only the tag form may span lines).
    """
    text = _mask_range_echoes(response[-_MAX_RESPONSE_CHARS:])
    matches = _confidence_matches(text)
    if matches:
        return _value_of(max(matches, key=lambda m: m.end()))
    bare = _BARE_WRAPPERS_RE.sub("", text).rstrip(".")
    if len(bare) > 64:
        return None
    match = re.fullmatch(_VALUE, bare)
    return _value_of(match) if match else None


def _confidence_spans(text: str) -> list[tuple[int, int]]:
    """Sorted, merged (start, end) spans of `text` that state a confidence."""
    masked = _mask_range_echoes(text)
    spans = [m.span() for m in _confidence_matches(masked)]
    spans += [m.span() for m in _CONFIDENCE_LINE_RE.finditer(text)]
    spans.sort()
    merged: list[tuple[int, int]] = []
    for start, end in spans:
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        else:
            merged.append((start, end))
    return merged


def _in_spans(index: int, spans: list[tuple[int, int]], starts: list[int]) -> bool:
    k = bisect.bisect_right(starts, index) - 1
    return k >= 0 and index < spans[k][1]


# ---------------------------------------------------------------------------
# Answer extraction
# ---------------------------------------------------------------------------

_BOX_RE = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")


def _matching_braces(text: str) -> dict[int, int]:
    """Index of each `{` -> index of its `}`, in one linear pass; `\\{` and `\\}` are text."""
    close_of: dict[int, int] = {}
    stack: list[int] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch == "\\":
            i += 2
            continue
        if ch == "{":
            stack.append(i)
        elif ch == "}" and stack:
            close_of[stack.pop()] = i
        i += 1
    return close_of


def _boxes(text: str) -> list[tuple[int, str]]:
    """(start index, content) of each `\\boxed{...}`, `\\fbox{...}` and `\\boxed 5`, in order.

    A box whose braces never close is skipped.
    """
    close_of: dict[int, int] | None = None
    boxes = []
    for m in _BOX_RE.finditer(text):
        j = m.end()
        while j < len(text) and text[j] in " \t":
            j += 1
        if j < len(text) and text[j] == "{":
            if close_of is None:
                close_of = _matching_braces(text)
            end = close_of.get(j)
            if end is not None:
                boxes.append((m.start(), text[j + 1 : end]))
        elif j > m.end():
            token = re.match(r"[^\s$\\{}]+", text[j:])
            if token:
                boxes.append((m.start(), token.group(0).rstrip(".,")))
    return boxes


def _answer_box(text: str) -> str | None:
    """Content of the last box that is not part of a confidence statement."""
    boxes = _boxes(text)
    if not boxes:
        return None
    spans = _confidence_spans(text)
    starts = [s for s, _ in spans]
    for start, content in reversed(boxes):
        if not _in_spans(start, spans, starts):
            return content
    return None


def _strip_confidence(text: str) -> str:
    """`text` with its confidence statements blanked, so fallbacks never read them."""
    spans = _confidence_spans(text)
    if not spans:
        return text
    pieces, last = [], 0
    for start, end in spans:
        pieces += [text[last:start], " " * (end - start)]
        last = end
    pieces.append(text[last:])
    return "".join(pieces)


_GSM8K_HASHES_RE = re.compile(r"####\s*([^\n]*)")
_NUMBER_TOKEN = r"-?\$?\d[\d,]*(?:\.\d+)?"
_ANSWER_IS_RE = re.compile(rf"answer\s*(?:is|:)\s*[:=]?\s*\**\s*({_NUMBER_TOKEN})", re.I)
_LAST_NUMBER_RE = re.compile(_NUMBER_TOKEN)
_CHOICE_PHRASE_RE = re.compile(
    r"\b(?:answer|choice|option)\s*(?:is|:)?\s*[:=]?\s*\**\s*\(?((?-i:[A-E]))\)?(?![A-Za-z])", re.I
)


def extract_answer(response: str, task: str = "math") -> str | None:
    """The answer text `grade` judges, or None when there is none.

    All tasks: the last `\\boxed{}` / `\\fbox{}` / `\\boxed 5` that is not part of a
    confidence statement (`Confidence: \\boxed{0.6}` is the confidence, never the answer).
    Fallbacks when no such box exists, on the text with confidence statements removed:
      math:   none (the MATH convention; an unboxed answer is ungradeable).
      gsm8k:  the last `#### n`, then the last "answer is n" / "Answer: n", then the
              last number in the text (GSM8K's own solutions end in `#### n`).
      choice: the last "answer is (B)" / "Answer: B" / "option B".
    """
    _check_task(task)
    text = response[-_MAX_RESPONSE_CHARS:]
    boxed = _answer_box(text)
    if boxed is not None or task == "math":
        return boxed
    text = _strip_confidence(text)
    if task == "choice":
        found = _CHOICE_PHRASE_RE.findall(text)
        return found[-1] if found else None
    for regex in (_GSM8K_HASHES_RE, _ANSWER_IS_RE, _LAST_NUMBER_RE):
        found = regex.findall(text)
        answer = found[-1].strip().rstrip(".,") if found else ""
        if answer:
            return answer
    return None


def format_ok(response: str, require_confidence: bool = True) -> bool:
    """True iff the response follows the prompt's format.

    That is a boxed answer outside the confidence line and, if `require_confidence`,
    a parseable confidence. The lenient gsm8k/choice fallbacks of `extract_answer` do
    not count here: they exist to grade, not to reward the format.
    """
    text = response[-_MAX_RESPONSE_CHARS:]
    if _answer_box(text) is None:
        return False
    return not require_confidence or parse_confidence(text) is not None


# ---------------------------------------------------------------------------
# Normalization and fast comparisons
# ---------------------------------------------------------------------------

_DELIMITERS_RE = re.compile(r"^\s*(?:\$+|\\\(|\\\[)\s*(.*?)\s*(?:\$+|\\\)|\\\])\s*$", re.S)
_SPACING_RE = re.compile(r"\\left(?![a-zA-Z])|\\right(?![a-zA-Z])|\\[!,;:> ]|\\displaystyle|~")
_DEGREES_RE = re.compile(r"\^\s*\{?\s*\\circ\s*\}?|°|\\degree")
_TEXT_RE = re.compile(r"\\(?:text|textbf|mbox|mathrm)\s*\{([^{}]*)\}")
_PLAIN_NUMBER = r"-?(?:\d+(?:\.\d+)?|\.\d+)"
_FRACTION_RES = (
    re.compile(r"(-?)\\frac\{(-?\d+)\}\{(-?\d+)\}"),
    re.compile(r"(-?)\\frac(\d)(\d)"),
    re.compile(r"(-?)\\frac\{(-?\d+)\}(\d)"),
    re.compile(r"(-?)\\frac(\d)\{(-?\d+)\}"),
    re.compile(r"(-?)(\d+)/(\d+)"),
)
_UNIT_SUFFIX_RE = re.compile(
    r"^(" + _PLAIN_NUMBER + r"|-?\\frac\{?\d+\}?\{?\d+\}?)\s*\\(?:text|mbox|mathrm)\{\s*[A-Za-z][A-Za-z .]*\}$"
)
_THOUSANDS_RE = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?")


@functools.lru_cache(maxsize=8192)
def _normalize_math(answer: str) -> str:
    """A canonical spelling for exact comparison: spacing, delimiters, degrees, `\\$`,
    `\\dfrac`, `\\text{}` wrappers, text units after a number and thousands commas go.
    `\\%` stays (50\\% and 0.5 are equal to math-verify, not as strings).
    """
    s = answer.strip()
    m = _DELIMITERS_RE.match(s)
    if m:
        s = m.group(1)
    s = s.replace("\u2212", "-")
    s = _SPACING_RE.sub("", s)
    s = re.sub(r"\\[dt]frac", r"\\frac", s)
    s = _DEGREES_RE.sub("", s)
    s = s.replace("\\$", "").replace("$", "")
    s = s.strip()
    unit = _UNIT_SUFFIX_RE.match(s)
    if unit:
        s = unit.group(1)
    s = _TEXT_RE.sub(r"\1", s)
    s = re.sub(r"\s+", "", s)
    if _THOUSANDS_RE.fullmatch(s):
        s = s.replace(",", "")
    return s.rstrip(".")


def _as_number(s: str) -> Fraction | None:
    """`s` as an exact rational if it is a plain number or numeric fraction, else None.

    Exponents are never expanded (`1e9999999` is not a number here), and long digit
    strings are refused, so this is always fast.
    """
    if len(s) > 2 * _MAX_NUMBER_DIGITS + 16:
        return None
    if re.fullmatch(_PLAIN_NUMBER, s):
        return Fraction(s)
    for regex in _FRACTION_RES:
        m = regex.fullmatch(s)
        if m:
            sign, num, den = m.groups()
            if int(den) == 0:
                return None
            value = Fraction(int(num), int(den))
            return -value if sign else value
    return None


def _close(a: Fraction, b: Fraction) -> bool:
    """Near enough that math-verify's rounding might call them equal (0.333333 vs 1/3)."""
    return abs(a - b) <= Fraction(1, 10**4) * max(1, abs(a), abs(b))


_POWER_TOWER_RE = re.compile(r"\^\s*\{[^{}]*\^|\^\s*\d+\s*\^|\*\*[^*]*\*\*")


def _brace_depth(s: str) -> int:
    depth = deepest = 0
    for ch in s:
        if ch == "{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch == "}":
            depth = max(0, depth - 1)
    return deepest


def _math_equal(gold: str, pred: str, timeout_s: float) -> bool:
    """True iff `pred` equals `gold` as a MATH answer (both are answer strings, not texts)."""
    if pred == gold:
        return True
    g, p = _normalize_math(gold), _normalize_math(pred)
    if g == p:
        return bool(p)
    g_num, p_num = _as_number(g), _as_number(p)
    if g_num is not None and p_num is not None:
        if g_num == p_num:
            return True
        if not _close(g_num, p_num):
            return False
    if _brace_depth(pred) > _MAX_BRACE_DEPTH:
        return False
    # sympy expands a power tower exactly (10^{10^{10}} has 10^10 digits) and cannot be
    # interrupted while it does; one that the gold does not share is not worth the wait.
    if _POWER_TOWER_RE.search(pred) and not _POWER_TOWER_RE.search(gold):
        return False
    return _POOL.equal(gold, pred, timeout_s)


_GSM8K_STRIP_RE = re.compile(r"\\[!,;: ]|\\\$|\$|\*\*|\\%|%|\^\s*\{?\s*\\circ\s*\}?")
_GSM8K_VALUE_RE = re.compile(rf"({_PLAIN_NUMBER})\s*(?:[A-Za-z][A-Za-z .'/\-]*)?")


def _gsm8k_number(answer: str) -> Fraction | None:
    """A GSM8K answer (`1,000`, `$18.00`, `18 dollars`, `\\text{18 eggs}`) as a number."""
    s = _TEXT_RE.sub(r"\1", answer.replace("\u2212", "-"))
    s = _GSM8K_STRIP_RE.sub("", s).strip().rstrip(".").strip()
    s = re.sub(r"(?<=\d),(?=\d{3}(?!\d))", "", s)
    m = _GSM8K_VALUE_RE.fullmatch(s)
    if m and len(m.group(1)) <= _MAX_NUMBER_DIGITS:
        return Fraction(m.group(1))
    return _as_number(_normalize_math(s))


@functools.lru_cache(maxsize=8192)
def _gsm8k_gold(gold: str) -> Fraction:
    """The number of a GSM8K gold: a full solution ending in `#### n`, or `n` itself."""
    tail = gold.rsplit("####", 1)[-1]
    value = _gsm8k_number(tail.strip())
    if value is None:
        raise ValueError(f"gsm8k gold is not a number: gold={gold[-200:]!r}")
    return value


_CHOICE_LETTER_RE = re.compile(r"(?:option|choice)?\s*\(?([A-E])\)?(?:$|[\s.:)].*)", re.S | re.I)


def _choice_letter(answer: str) -> str | None:
    """`B`, `(B)`, `B) 42`, `\\text{(B)}`, `option B` -> `B`; anything else -> None."""
    s = _TEXT_RE.sub(r"\1", answer).replace("$", "").replace("*", "").strip()
    m = _CHOICE_LETTER_RE.fullmatch(s)
    if not m or (m.group(1).islower() and len(s) > 1):
        return None
    return m.group(1).upper()


# ---------------------------------------------------------------------------
# Public grading
# ---------------------------------------------------------------------------


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
    _check_task(task)
    pred = extract_answer(response, task)
    if pred is None:
        return False
    if len(pred) > _MAX_ANSWER_CHARS:
        # No real answer is this long; refusing it keeps normalization's regexes cheap.
        return pred.strip() == gold.strip()
    if task == "choice":
        gold_letter = _choice_letter(gold)
        if gold_letter is None:
            raise ValueError(f"choice gold must be a letter A-E, got gold={gold!r}")
        return _choice_letter(pred) == gold_letter
    if task == "gsm8k":
        gold_value = _gsm8k_gold(gold)
        pred_value = _gsm8k_number(pred)
        if pred_value is not None:
            return pred_value == gold_value
        # Not a plain number (`\frac{36}{2}`, `9 \times 2`): let math-verify judge it.
        return _math_equal(_fraction_latex(gold_value), pred, timeout_s)
    if "\\boxed" in gold or "\\fbox" in gold:
        gold = _answer_box(gold) or gold
    return _math_equal(gold, pred, timeout_s)


def _fraction_latex(value: Fraction) -> str:
    if value.denominator == 1:
        return str(value.numerator)
    return f"\\frac{{{value.numerator}}}{{{value.denominator}}}"


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
    _check_task(task)
    if len(responses) != len(golds):
        raise ValueError(
            f"responses and golds must have the same length, got {len(responses)} and {len(golds)}"
        )
    workers = max_workers or min(8, os.cpu_count() or 1)
    if workers <= 1 or len(responses) <= 1:
        return [grade(r, g, task, timeout_s=timeout_s) for r, g in zip(responses, golds)]
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda rg: grade(rg[0], rg[1], task, timeout_s=timeout_s), zip(responses, golds)))


def shutdown() -> None:
    """Stop every math-verify worker process; the next call starts a fresh one."""
    _POOL.shutdown()


# ---------------------------------------------------------------------------
# math-verify worker processes
# ---------------------------------------------------------------------------

# Loads this file by path, not `corea_jax.grading`, so the worker never imports the
# package (and jax with it). The empty-string path entry (cwd) goes first, so a stray
# `sympy.py` in the caller's directory cannot shadow the real one.
_WORKER_BOOT = (
    "import sys; del sys.path[0]; import importlib.util as u; "
    "s = u.spec_from_file_location('_corea_grading_worker', sys.argv[1]); "
    "m = u.module_from_spec(s); s.loader.exec_module(m); m._serve()"
)


def _serve() -> None:
    """Worker loop: one JSON request per stdin line, one JSON reply per stdout line.

    Request {"gold", "pred", "budget_s"} -> reply {"equal": bool}. The first line out is
    {"ready": true} or {"ready": false, "error": ...}.
    """
    import logging
    import signal

    channel = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # stray prints from libraries must not corrupt the protocol
    logging.disable(logging.CRITICAL)
    try:
        from math_verify import LatexExtractionConfig, parse, verify
        from math_verify.errors import TimeoutException
    except BaseException as e:  # noqa: BLE001 -- reported to the parent, which raises
        channel.write(json.dumps({"ready": False, "error": repr(e)}) + "\n")
        return
    config = [LatexExtractionConfig()]

    armed = [False]

    def on_alarm(signum, frame):
        if armed[0]:
            raise TimeoutException("grading budget spent")

    signal.signal(signal.SIGALRM, on_alarm)

    gold_cache: dict[str, list] = {}  # the G completions of a question share one gold

    def parse_gold(gold: str) -> list:
        if gold not in gold_cache:
            parsed = parse("\\boxed{" + gold + "}", extraction_config=config, parsing_timeout=None)
            if not parsed:  # maybe a timeout that parse swallowed: do not remember it
                return parsed
            if len(gold_cache) >= 1024:
                gold_cache.clear()
            gold_cache[gold] = parsed
        return gold_cache[gold]

    def equal(gold: str, pred: str) -> bool:
        gold_parsed = parse_gold(gold)
        pred_parsed = parse("\\boxed{" + pred + "}", extraction_config=config, parsing_timeout=None)
        return bool(gold_parsed and pred_parsed and verify(gold_parsed, pred_parsed, timeout_seconds=None))

    channel.write(json.dumps({"ready": True}) + "\n")
    for line in sys.stdin:
        result = False
        try:
            request = json.loads(line)
            # The timer repeats after the budget so that a TimeoutException swallowed by
            # a library's `except` is raised again until control returns here.
            armed[0] = True
            signal.setitimer(signal.ITIMER_REAL, float(request["budget_s"]), 0.05)
            try:
                result = equal(request["gold"], request["pred"])
            finally:
                armed[0] = False
                signal.setitimer(signal.ITIMER_REAL, 0)
        except BaseException:  # noqa: BLE001 -- any failure, timeout included, is "not equal"
            armed[0] = False
            result = False
        channel.write(json.dumps({"equal": result}) + "\n")


class _WorkerDied(Exception):
    pass


class _Worker:
    """One math-verify subprocess, used by one thread at a time."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _WORKER_BOOT, os.path.abspath(__file__)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            close_fds=True,
        )
        self._buffer = bytearray()
        self._ready = False

    def _readline(self, deadline: float) -> bytes | None:
        """The next line from the worker, or None at the deadline or if it died."""
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                return None
            chunk = os.read(fd, 65536)
            if not chunk:
                return None
            self._buffer += chunk
        line, _, rest = bytes(self._buffer).partition(b"\n")
        self._buffer = bytearray(rest)
        return line

    def _wait_ready(self) -> None:
        line = self._readline(time.monotonic() + _WORKER_START_TIMEOUT_S)
        reply = json.loads(line) if line else {"ready": False, "error": "no reply"}
        if not reply.get("ready"):
            raise RuntimeError(f"math-verify grading worker failed to start: {reply.get('error')}")
        self._ready = True

    def equal(self, gold: str, pred: str, timeout_s: float) -> bool:
        """math-verify's verdict; raises _WorkerDied on timeout or death."""
        if not self._ready:
            self._wait_ready()
        # The worker stops itself a little early so a reply arrives inside timeout_s.
        request = {"gold": gold, "pred": pred, "budget_s": max(0.05, timeout_s - 0.25)}
        try:
            self.proc.stdin.write(json.dumps(request).encode() + b"\n")
            self.proc.stdin.flush()
        except OSError as e:
            raise _WorkerDied from e
        line = self._readline(time.monotonic() + timeout_s)
        if line is None:
            raise _WorkerDied
        return bool(json.loads(line)["equal"])

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                stream.close()
            except OSError:
                pass


class _WorkerPool:
    """Idle workers shared by all threads; created lazily, replaced when killed."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle: list[_Worker] = []
        self._live: set[_Worker] = set()

    def _take(self) -> _Worker:
        with self._lock:
            if self._idle:
                return self._idle.pop()
        worker = _Worker()
        with self._lock:
            self._live.add(worker)
        return worker

    def _give(self, worker: _Worker) -> None:
        with self._lock:
            if worker in self._live:
                self._idle.append(worker)
                return
        worker.kill()  # shut down while busy

    def _discard(self, worker: _Worker) -> None:
        with self._lock:
            self._live.discard(worker)
        worker.kill()

    def equal(self, gold: str, pred: str, timeout_s: float) -> bool:
        worker = self._take()
        try:
            result = worker.equal(gold, pred, timeout_s)
        except _WorkerDied:
            self._discard(worker)
            # Start the replacement now so its import overlaps the caller's other work.
            self._give(self._take())
            return False
        except BaseException:
            self._discard(worker)
            raise
        self._give(worker)
        return result

    def shutdown(self) -> None:
        with self._lock:
            workers, self._live, self._idle = list(self._live), set(), []
        for worker in workers:
            worker.kill()

    def forget_after_fork(self) -> None:
        """In a forked child: drop the parent's workers (they are the parent's to stop).

        Closing our copies of their pipes lets a worker see EOF when the parent exits.
        """
        for worker in self._live:
            for stream in (worker.proc.stdin, worker.proc.stdout):
                try:
                    stream.close()
                except OSError:
                    pass
            # Popen would otherwise try to reap a process that is not our child.
            worker.proc.returncode = -1
        self._lock = threading.Lock()
        self._idle, self._live = [], set()


_POOL = _WorkerPool()
atexit.register(_POOL.shutdown)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_POOL.forget_after_fork)
