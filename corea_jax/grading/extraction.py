"""Answer extraction: which part of a response is its final answer, and where it sits.

`extract_answer_span(response, task)` gives the answer's [start, end) character offsets in
the full response (the cascade maps them to the answer's tokens); `extract_answer` is the
text there; `format_ok` asks whether the response followed the prompt's format.
"""

from __future__ import annotations

import bisect
import re

from corea_jax.grading.limits import MAX_RESPONSE_CHARS
from corea_jax.grading.verbalized import confidence_spans, parse_confidence

TASKS = ("math", "gsm8k", "choice")


def check_task(task: str) -> None:
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got task={task!r}")


def _in_spans(index: int, spans: list[tuple[int, int]], starts: list[int]) -> bool:
    k = bisect.bisect_right(starts, index) - 1
    return k >= 0 and index < spans[k][1]


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


def _boxes(text: str) -> list[tuple[int, int, int]]:
    """(box start, content start, content end) of each `\\boxed{...}`, `\\fbox{...}` and
    `\\boxed 5`, in order. A box whose braces never close is skipped.
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
                boxes.append((m.start(), j + 1, end))
        elif j > m.end():
            token = re.match(r"[^\s$\\{}]+", text[j:])
            if token:
                boxes.append((m.start(), j, j + len(token.group(0).rstrip(".,"))))
    return boxes


def _answer_box_span(text: str) -> tuple[int, int] | None:
    """Content span of the last box that is not part of a confidence statement."""
    boxes = _boxes(text)
    if not boxes:
        return None
    spans = confidence_spans(text)
    starts = [s for s, _ in spans]
    for box_start, start, end in reversed(boxes):
        if not _in_spans(box_start, spans, starts):
            return start, end
    return None


def answer_box(text: str) -> str | None:
    """Content of the last box that is not part of a confidence statement (no task fallbacks)."""
    span = _answer_box_span(text)
    return None if span is None else text[span[0]:span[1]]


def _strip_confidence(text: str) -> str:
    """`text` with its confidence statements blanked, so fallbacks never read them.

    Blanks are spaces of the same length: every other index stays where it was.
    """
    spans = confidence_spans(text)
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


def _last_match_span(regex: re.Pattern, text: str) -> tuple[int, int] | None:
    """Span of the last match's answer (group 1, or the whole match) without surrounding
    space and trailing `.`/`,` (`#### 9 .` -> `9`); None if the last match leaves nothing."""
    last = None
    for last in regex.finditer(text):
        pass
    if last is None:
        return None
    start, end = last.span(1 if regex.groups else 0)
    found = text[start:end]
    start += len(found) - len(found.lstrip())
    end = start + len(found.strip().rstrip(".,").rstrip())
    return (start, end) if end > start else None


def extract_answer_span(response: str, task: str = "math") -> tuple[int, int] | None:
    """[start, end) character offsets in `response` of the answer `grade` judges, or None.

    All tasks: the content of the last `\\boxed{}` / `\\fbox{}` / `\\boxed 5` that is not
    part of a confidence statement (`Confidence: \\boxed{0.6}` is the confidence, never the
    answer). Fallbacks when no such box exists, on the text with confidence statements
    removed:
      math:   none (the MATH convention; an unboxed answer is ungradeable).
      gsm8k:  the last `#### n`, then the last "answer is n" / "Answer: n", then the
              last number in the text (GSM8K's own solutions end in `#### n`).
      choice: the letter of the last "answer is (B)" / "Answer: B" / "option B".
    Only the last `MAX_RESPONSE_CHARS` characters are read; offsets are into the whole
    `response` all the same.
    """
    check_task(task)
    offset = max(0, len(response) - MAX_RESPONSE_CHARS)
    text = response[offset:]
    span = _answer_box_span(text)
    if span is None and task != "math":
        text = _strip_confidence(text)
        regexes = (_CHOICE_PHRASE_RE,) if task == "choice" else (
            _GSM8K_HASHES_RE, _ANSWER_IS_RE, _LAST_NUMBER_RE)
        for regex in regexes:
            span = _last_match_span(regex, text)
            if span is not None:
                break
    return None if span is None else (offset + span[0], offset + span[1])


def extract_answer(response: str, task: str = "math") -> str | None:
    """The answer text `grade` judges, or None: `response` at `extract_answer_span`."""
    span = extract_answer_span(response, task)
    return None if span is None else response[span[0]:span[1]]


def format_ok(response: str, require_confidence: bool = True) -> bool:
    """True iff the response follows the prompt's format.

    That is a boxed answer outside the confidence line and, if `require_confidence`,
    a parseable confidence. The lenient gsm8k/choice fallbacks of `extract_answer` do
    not count here: they exist to grade, not to reward the format.
    """
    text = response[-MAX_RESPONSE_CHARS:]
    if _answer_box_span(text) is None:
        return False
    return not require_confidence or parse_confidence(text) is not None
