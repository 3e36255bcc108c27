"""Tests for corea_jax.grading.verdict and .equivalence: responses graded against real gold answers."""

import json
from functools import lru_cache

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from corea_jax import grading
from tests.helpers import SHARED_DATA

DATA = SHARED_DATA


@lru_cache(maxsize=None)
def _math500() -> tuple[dict, ...]:
    with open(DATA / "math500" / "test.jsonl", encoding="utf-8") as f:
        return tuple(json.loads(line) for line in f)


@lru_cache(maxsize=None)
def _gsm8k() -> tuple[dict, ...]:
    with open(DATA / "gsm8k" / "test.jsonl", encoding="utf-8") as f:
        return tuple(json.loads(line) for line in f)


def _gsm8k_number(record: dict) -> str:
    return record["answer"].rsplit("####", 1)[-1].strip()


def _boxed(answer: str, confidence: str = "0.8") -> str:
    return f"Let us think step by step.\nSo the final answer is $\\boxed{{{answer}}}$.\nConfidence: {confidence}"


# ---------------------------------------------------------------------------
# Hand-written cases on real gold answers
# ---------------------------------------------------------------------------

# (response answer, gold answer from MATH500, expected)
MATH_CASES = [
    # equivalent forms
    ("0.5", "\\frac{1}{2}", True),
    ("1/2", "\\frac{1}{2}", True),
    ("\\dfrac{1}{2}", "\\frac{1}{2}", True),
    ("\\frac{17}{50}", "\\dfrac{17}{50}", True),
    ("0.34", "\\dfrac{17}{50}", True),
    ("\\frac{5}{9}", "\\frac 59", True),
    ("\\frac{9}{19}", "\\frac9{19}", True),
    ("90", "90^\\circ", True),
    ("90^{\\circ}", "90^\\circ", True),
    ("145", "145^\\circ", True),
    ("10080", "10,\\!080", True),
    ("10,080", "10,\\!080", True),
    ("58500", "58,500", True),
    ("11111111100", "11,\\! 111,\\! 111,\\! 100", True),
    ("32348", "\\$32,\\!348", True),
    ("\\$18.90", "\\$18.90", True),
    ("18.9", "\\$18.90", True),
    ("5.4", "5.4 \\text{ cents}", True),
    ("\\frac{270}{7}", "\\frac{270}7\\text{ degrees}", True),
    ("1.8", "1\\frac{4}{5}", True),
    ("\\sqrt{117}", "3\\sqrt{13}", True),
    ("\\frac{1}{\\sqrt{3}}", "\\frac{\\sqrt{3}}{3}", True),
    ("-\\pi/6", "-\\frac{\\pi}{6}", True),
    ("(3, \\pi/2)", "\\left( 3, \\frac{\\pi}{2} \\right)", True),
    ("[-2,7]", "x \\in [-2,7]", True),
    ("7, 5, 3", "3, 5, 7", True),
    ("1-\\sqrt{19}, 1+\\sqrt{19}", "1 \\pm \\sqrt{19}", True),
    ("-6+3x+x^3", "x^3+3x-6", True),
    ("2(3r^2-2r-12)", "6r^2-4r-24", True),
    ("\\frac{11}{20}+\\frac{9a}{20}", "\\frac{11+9a}{20}", True),
    ("\\text{Evelyn}", "\\text{Evelyn}", True),
    ("E", "\\text{(E)}", True),
    ("(0,9)\\cup(9,36)", "(0,9) \\cup (9,36)", True),
    # wrong answers
    ("0.17", "\\dfrac{17}{50}", False),
    ("18.09", "\\$18.90", False),
    ("135^\\circ", "145^\\circ", False),
    ("3\\sqrt{12}", "3\\sqrt{13}", False),
    ("\\pi/6", "-\\frac{\\pi}{6}", False),
    ("(-\\infty,0)", "(-\\infty, 0]", False),
    ("x^3+3x+6", "x^3+3x-6", False),
    ("\\text{Navin}", "\\text{Evelyn}", False),
    ("(C)", "\\text{(E)}", False),
    ("(0,36)", "(0,9) \\cup (9,36)", False),
    ("10^{10^{10}}", "\\frac{14}{3}", False),
]

# (response, GSM8K record index, expected)
GSM8K_CASES = [
    ("She makes 9 * 2 = $18 every day.\n#### 18", 0, True),
    ("Janet earns \\boxed{18} dollars.\nConfidence: 0.9", 0, True),
    ("Janet earns \\boxed{\\$18.00}.\nConfidence: 0.9", 0, True),
    ("Janet earns \\boxed{18 \\text{ dollars}}.\nConfidence: 0.9", 0, True),
    ("The answer is 18 dollars.", 0, True),
    ("9 eggs at $2 each is 18", 0, True),
    ("Janet earns \\boxed{\\frac{36}{2}}.", 0, True),
    ("Janet earns \\boxed{16}.\nConfidence: 0.9", 0, False),
    ("He makes \\boxed{70,000} dollars.\nConfidence: 0.7", 2, True),
    ("He makes \\boxed{70000.0} dollars.", 2, True),
    ("He makes \\boxed{7000}.", 2, False),
    ("Johnny picked up \\boxed{2,125} pieces.", 146, True),
    ("Johnny picked up \\boxed{2125} pieces.", 146, True),
    ("Johnny picked up \\boxed{2.125} pieces.", 146, False),
    ("Sue ate 5,600 more calories.\n#### 5,600", 249, True),
    # Qwen2.5-Coder-0.5B style: the confidence boxed instead of the answer.
    ("It takes 2 + 1 = 3 bolts.\nConfidence: \\(\\boxed{0.6}\\)", 1, True),
    ("It takes 3 bolts.\nthe confidence is \\(\\boxed{1}\\)", 1, True),
    ("It takes \\boxed{3} bolts.\nConfidence: \\(\\boxed{0.6}\\)", 1, True),
    ("It takes \\boxed{2} bolts.\nConfidence: \\(\\boxed{3}\\)", 1, False),
]


@pytest.mark.parametrize("pred, gold, expected", MATH_CASES)
def test_math_cases(pred, gold, expected):
    assert grading.grade(_boxed(pred), gold, "math") is expected


@pytest.mark.parametrize("response, index, expected", GSM8K_CASES)
def test_gsm8k_cases(response, index, expected):
    record = _gsm8k()[index]
    # The gold may be the full solution or the bare number: both must agree.
    assert grading.grade(response, record["answer"], "gsm8k") is expected
    assert grading.grade(response, _gsm8k_number(record), "gsm8k") is expected


def test_hand_cases_use_real_gold_answers():
    golds = {record["answer"] for record in _math500()}
    assert len(MATH_CASES) + len(GSM8K_CASES) >= 40
    assert [gold for _, gold, _ in MATH_CASES if gold not in golds] == []


@pytest.mark.parametrize(
    "response, gold, expected",
    [
        ("The answer is \\boxed{B}.\nConfidence: 0.7", "B", True),
        ("\\boxed{(B)}", "B", True),
        ("\\boxed{\\text{(C)}}", "\\text{(C)}", True),
        ("\\boxed{B) 23}", "(B)", True),
        ("\\boxed{b}", "B", True),
        ("The answer is (D).", "D", True),
        ("Answer: E", "E", True),
        ("\\boxed{A}", "B", False),
        ("The answer is a prime.", "A", False),
        ("I cannot tell.", "A", False),
    ],
)
def test_choice_cases(response, gold, expected):
    assert grading.grade(response, gold, "choice") is expected


# ---------------------------------------------------------------------------
# Every gold answer graded against itself
# ---------------------------------------------------------------------------

# Gold answers that do not grade as correct against themselves, with the reason. Empty:
# every MATH500 and GSM8K test answer passes. A change here must be deliberate.
SELF_GRADING_EXCEPTIONS: list[str] = []


def test_every_gold_answer_grades_against_itself():
    failures = []
    for record in _math500():
        answer = record["answer"]
        if not grading.grade(_boxed(answer), answer, "math"):
            failures.append(f"math500 boxed: {answer}")
        # The full solution's last box is the answer; the solution is also a valid gold.
        if not grading.grade(record["solution"], answer, "math"):
            failures.append(f"math500 solution: {answer}")
        if not grading.grade(_boxed(answer), record["solution"], "math"):
            failures.append(f"math500 solution as gold: {answer}")
    for record in _gsm8k():
        number = _gsm8k_number(record)
        if not grading.grade(record["answer"], record["answer"], "gsm8k"):
            failures.append(f"gsm8k solution: {number}")
        if not grading.grade(_boxed(number), record["answer"], "gsm8k"):
            failures.append(f"gsm8k boxed: {number}")
    assert failures == SELF_GRADING_EXCEPTIONS


def test_gsm8k_gold_is_not_confused_with_a_neighbour():
    # Self-grading alone would pass if everything graded True.
    records = _gsm8k()
    for a, b in zip(records[:200], records[1:201]):
        same = _gsm8k_number(a).replace(",", "") == _gsm8k_number(b).replace(",", "")
        assert grading.grade(a["answer"], b["answer"], "gsm8k") is same


# ---------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------


def test_bad_task_names_task_and_valid_values():
    with pytest.raises(ValueError, match=r"task.*math.*gsm8k.*choice.*'algebra'"):
        grading.grade("\\boxed{1}", "1", "algebra")
    with pytest.raises(ValueError, match="task"):
        grading.extract_answer("\\boxed{1}", "MATH")


def test_bad_gold_raises():
    with pytest.raises(ValueError, match="gsm8k gold"):
        grading.grade("\\boxed{1}", "#### twelve", "gsm8k")
    with pytest.raises(ValueError, match="choice gold"):
        grading.grade("\\boxed{A}", "Z", "choice")


def test_grade_batch_matches_grade_and_checks_lengths():
    responses = [_boxed(pred) for pred, _, _ in MATH_CASES]
    golds = [gold for _, gold, _ in MATH_CASES]
    assert grading.grade_batch(responses, golds, "math", max_workers=2) == [e for _, _, e in MATH_CASES]
    with pytest.raises(ValueError, match="same length"):
        grading.grade_batch(responses, golds[:-1], "math")


# ---------------------------------------------------------------------------
# Property: no exception on any text
# ---------------------------------------------------------------------------

_PIECES = [
    "\\boxed{", "\\fbox{", "\\boxed ", "{", "}", "\\{", "\\}", "Confidence:", "confidence is ",
    "<confidence>", "</confidence>", "0.", "9", "85", "%", "\\%", "/", "-", "^", "^{", "\\frac", "\\sqrt",
    "\\dfrac{1}{2}", "\\text{", "\\left(", "\\right)", "####", "The answer is ", "Answer: ", "\n", "$",
    "\\(", "\\)", "10^{10^{10}}", "(10^{10})!", "1e999999", "__import__('os')", "lambda: 0", "∞", "\\infty",
    "x", "\\pi", "(", ")", ",", "A", "(B)", "nan", "inf", "\x00", "\ud800",
]
_ADVERSARIAL = st.lists(st.sampled_from(_PIECES), max_size=60).map("".join)
_RESPONSES = st.one_of(st.text(max_size=300), _ADVERSARIAL)
_GOLDS = {"math": "\\frac{14}{3}", "gsm8k": "#### 18", "choice": "B"}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_RESPONSES)
@example("x" * 100_000)
@example("\\boxed{" * 20_000)
@example("{" * 50_000 + "\\boxed{3}" + "}" * 50_000)
@example("Confidence: " * 10_000)
@example("9" * 100_000 + "% confident")
@example("\\boxed{" + "9" * 100_000 + "}")
@example("def f():\n    return __import__('os').system('echo hi')\n\\boxed{f()}\nConfidence: 0.5")
def test_property_grade_and_parse_never_raise(response):
    for task, gold in _GOLDS.items():
        assert isinstance(grading.grade(response, gold, task), bool)
        answer = grading.extract_answer(response, task)
        assert answer is None or isinstance(answer, str)
    confidence = grading.parse_confidence(response)
    assert confidence is None or 0.0 <= confidence <= 1.0
    assert isinstance(grading.format_ok(response), bool)
