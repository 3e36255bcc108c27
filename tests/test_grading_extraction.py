"""Tests for corea_jax.grading.extraction: which text is the answer, where it sits, the format."""

import pytest

from corea_jax import grading
from corea_jax.grading import limits


@pytest.mark.parametrize(
    "response, expected",
    [
        ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
        ("first \\boxed{1} then \\boxed{2}", "2"),
        ("\\boxed{\\{1, 2\\}}", "\\{1, 2\\}"),
        ("\\boxed{{a}{b}}", "{a}{b}"),
        ("\\fbox{7}", "7"),
        ("so \\boxed 5.", "5"),
        ("\\boxed {x}", "x"),
        ("\\boxed{3} and an unclosed \\boxed{4", "3"),
        ("no box here, the answer is 5", None),
        ("\\boxed{42}\nConfidence: \\boxed{0.9}", "42"),
        ("\\boxed{42}. Confidence: 0.9", "42"),
        ("Confidence: \\(\\boxed{0.6}\\)", None),
        ("**Confidence:** \\boxed{high}", None),
        ("\\boxed{42}\n<confidence>\\boxed{0.8}</confidence>", "42"),
        ("With confidence, the answer is \\boxed{42}", "42"),
        ("\\boxed{7}\nthe confidence is \\(\\boxed{1}\\)", "7"),
    ],
)
def test_extract_answer_math(response, expected):
    assert grading.extract_answer(response, "math") == expected


@pytest.mark.parametrize(
    "response, expected",
    [
        ("blah\n#### 1,234", "1,234"),
        ("#### 5\nThe answer is 6", "5"),
        ("The answer is 12.", "12"),
        ("Answer: $1,000", "$1,000"),
        ("3 + 4 = 7 apples", "7"),
        ("It is 7.\nConfidence: 0.9", "7"),
        ("It is 7.\nConfidence: \\(\\boxed{0.6}\\)", "7"),
        ("nothing numeric", None),
    ],
)
def test_extract_answer_gsm8k_fallbacks(response, expected):
    assert grading.extract_answer(response, "gsm8k") == expected


def test_extract_answer_choice_fallbacks():
    assert grading.extract_answer("The answer is (C).", "choice") == "C"
    assert grading.extract_answer("Option B is right. Answer: D", "choice") == "D"
    assert grading.extract_answer("the answer is a trick", "choice") is None


@pytest.mark.parametrize(
    "response, require_confidence, expected",
    [
        ("\\boxed{3}\nConfidence: 0.6", True, True),
        ("\\boxed{3}", True, False),
        ("\\boxed{3}", False, True),
        ("3\nConfidence: \\(\\boxed{0.6}\\)", True, False),  # the only box is the confidence
        ("#### 3\nConfidence: 0.6", True, False),  # grading fallbacks are not the format
        ("\\boxed{3}\nConfidence: high", True, False),
    ],
)
def test_format_ok(response, require_confidence, expected):
    assert grading.format_ok(response, require_confidence=require_confidence) is expected


# The answer the grader reads is marked with [[ ]]; the marks are removed before extraction.
SPAN_CASES = [
    ("... so \\boxed{[[9]]}\nConfidence: 0.9", "math"),
    ("\\boxed{[[9]]}\nConfidence: \\boxed{0.9}", "math"),
    ("9 is it; \\boxed{9}. Then 9 again: \\boxed [[9]].\nConfidence: 0.9", "math"),
    ("\\boxed{[[ \\frac{9}{1} ]]}\nConfidence: 0.9", "math"),
    ("It is 9.\n####  [[9]] .\nConfidence: 0.9", "gsm8k"),
    ("The answer is [[9]] apples, I think 9.\nConfidence: 0.9", "gsm8k"),
    ("9 + 0 = [[9]]\nConfidence: 0.9", "gsm8k"),
    ("Option B? The answer is ([[B]]).\nConfidence: 0.9", "choice"),
]


@pytest.mark.parametrize("marked, task", SPAN_CASES)
def test_span_is_where_the_extracted_answer_sits(marked, task):
    start = marked.index("[[")
    end = marked.index("]]") - 2
    response = marked.replace("[[", "").replace("]]", "")
    assert grading.extract_answer_span(response, task) == (start, end)
    assert grading.extract_answer(response, task) == response[start:end]


def test_span_of_the_box_not_of_the_confidence():
    response = "3 * 3 = 9, so the answer is \\boxed{9}\nConfidence: 0.9"
    assert grading.extract_answer_span(response, "math") == (response.index("9}"), response.index("9}") + 1)


def test_span_offsets_are_into_the_whole_response_past_the_tail_cut():
    response = "x" * (limits.MAX_RESPONSE_CHARS + 123) + " \\boxed{42}\nConfidence: 0.5"
    start, end = grading.extract_answer_span(response, "math")
    assert response[start:end] == "42" and start > limits.MAX_RESPONSE_CHARS


def test_no_answer_has_no_span():
    assert grading.extract_answer_span("no box, the answer is 5", "math") is None
    assert grading.extract_answer_span("Confidence: \\boxed{0.6}", "gsm8k") is None
    with pytest.raises(ValueError, match="task"):
        grading.extract_answer_span("\\boxed{1}", "MATH")
