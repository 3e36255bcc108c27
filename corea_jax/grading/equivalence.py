"""Answer equivalence: is an extracted answer the gold one, per task.

`answers_equal(pred, gold, task, timeout_s)` compares two answer strings (not whole
responses). Exact and numeric comparisons settle most pairs; the rest go to math-verify's
symbolic check in a worker process (`corea_jax.grading.pool`), bounded by `timeout_s`.
"""

from __future__ import annotations

import functools
import re
from fractions import Fraction

from corea_jax.grading import pool
from corea_jax.grading.extraction import answer_box
from corea_jax.grading.limits import MAX_BRACE_DEPTH, MAX_NUMBER_DIGITS

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
    if len(s) > 2 * MAX_NUMBER_DIGITS + 16:
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
    if _brace_depth(pred) > MAX_BRACE_DEPTH:
        return False
    # sympy expands a power tower exactly (10^{10^{10}} has 10^10 digits) and cannot be
    # interrupted while it does; one that the gold does not share is not worth the wait.
    if _POWER_TOWER_RE.search(pred) and not _POWER_TOWER_RE.search(gold):
        return False
    return pool.verify(gold, pred, timeout_s)


_GSM8K_STRIP_RE = re.compile(r"\\[!,;: ]|\\\$|\$|\*\*|\\%|%|\^\s*\{?\s*\\circ\s*\}?")
_GSM8K_VALUE_RE = re.compile(rf"({_PLAIN_NUMBER})\s*(?:[A-Za-z][A-Za-z .'/\-]*)?")


def _gsm8k_number(answer: str) -> Fraction | None:
    """A GSM8K answer (`1,000`, `$18.00`, `18 dollars`, `\\text{18 eggs}`) as a number."""
    s = _TEXT_RE.sub(r"\1", answer.replace("\u2212", "-"))
    s = _GSM8K_STRIP_RE.sub("", s).strip().rstrip(".").strip()
    s = re.sub(r"(?<=\d),(?=\d{3}(?!\d))", "", s)
    m = _GSM8K_VALUE_RE.fullmatch(s)
    if m and len(m.group(1)) <= MAX_NUMBER_DIGITS:
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


def _fraction_latex(value: Fraction) -> str:
    if value.denominator == 1:
        return str(value.numerator)
    return f"\\frac{{{value.numerator}}}{{{value.denominator}}}"


def answers_equal(pred: str, gold: str, task: str, timeout_s: float) -> bool:
    """True iff answer `pred` equals `gold` for `task` (see `grading.grade` for the golds).

    Raises ValueError for an unusable gold.
    """
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
        gold = answer_box(gold) or gold
    return _math_equal(gold, pred, timeout_s)
