"""Verbalized confidence: the number a response states, and where confidence statements sit.

`parse_confidence(response) -> float | None` reads the stated confidence;
`confidence_spans(text)` gives the character spans of confidence statements, which answer
extraction skips (`Confidence: \\boxed{0.6}` is the confidence, never the answer).
"""

from __future__ import annotations

import re

from corea_jax.grading.limits import MAX_RESPONSE_CHARS

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
    text = _mask_range_echoes(response[-MAX_RESPONSE_CHARS:])
    matches = _confidence_matches(text)
    if matches:
        return _value_of(max(matches, key=lambda m: m.end()))
    bare = _BARE_WRAPPERS_RE.sub("", text).rstrip(".")
    if len(bare) > 64:
        return None
    match = re.fullmatch(_VALUE, bare)
    return _value_of(match) if match else None


def confidence_spans(text: str) -> list[tuple[int, int]]:
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
