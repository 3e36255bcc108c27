"""Tests for corea_jax.grading.verbalized: reading the stated confidence."""

import pytest

from corea_jax import grading


@pytest.mark.parametrize(
    "response, expected",
    [
        ("0.85", 0.85),
        (".85", 0.85),
        ("85%", 0.85),
        ("\\boxed{0.85}", 0.85),
        ("Confidence: 0.85", 0.85),
        ("confidence:0.85", 0.85),
        ("CONFIDENCE = 0.85.", 0.85),
        ("**Confidence:** 0.85", 0.85),
        ("Confidence level: 85%", 0.85),
        ("Confidence: 85\\%", 0.85),
        ("Confidence: 17/20", 0.85),
        ("Confidence: \\frac{17}{20}", 0.85),
        ("Confidence: $0.85$", 0.85),
        ("<confidence>0.85</confidence>", 0.85),
        ("<confidence>\n0.85\n</confidence>", 0.85),
        ("Confidence: \\(\\boxed{0.6}\\)", 0.6),
        ("the confidence is \\(\\boxed{1}\\)", 1.0),
        ("My confidence is about 0.7", 0.7),
        ("I am 90% confident.", 0.9),
        ("Confidence (0-1): 0.3", 0.3),
        ("Confidence between 0 and 1: 0.3", 0.3),
        ("Confidence: 0", 0.0),
        ("Confidence: 1.0", 1.0),
        ("Confidence: 0.2\nmore text\nConfidence: 0.7", 0.7),
        ("\\boxed{12}\nConfidence: 0.4", 0.4),
        # rejected
        ("Confidence: high", None),
        ("Confidence: very high", None),
        ("Confidence: 85", None),
        ("Confidence: 1.5", None),
        ("Confidence: 150%", None),
        ("Confidence: -0.5", None),
        ("Confidence: nan", None),
        ("Confidence: NaN", None),
        ("Confidence: inf", None),
        ("Confidence: 0,85", None),
        ("Confidence: 0.7\nConfidence: 2", None),  # the last one counts, even if invalid
        ("Confidence: <number between 0 and 1>", None),
        ("The answer is 0.5", None),  # a bare number inside prose is not a confidence
        ("\\boxed{12}", None),
        ("", None),
    ],
)
def test_parse_confidence(response, expected):
    value = grading.parse_confidence(response)
    if expected is None:
        assert value is None
    else:
        assert value == pytest.approx(expected, abs=1e-12)
