"""SFT targets' stated confidence: a constant, or seeded draws from config.sft.confidence_choices."""

import pytest

from corea_jax.rl import policy
from corea_jax.rl.config import defaults, validate


def test_constant_by_default_and_seeded_draws_from_choices():
    c = defaults()
    assert policy.sft_confidences(c.sft, 0, 3, 4) == [0.9] * 4
    c.sft.confidence_choices = (0.9, 0.9, 0.5, 0.1)
    a = policy.sft_confidences(c.sft, 0, 3, 200)
    assert a == policy.sft_confidences(c.sft, 0, 3, 200)  # a resumed run repeats its step
    assert a != policy.sft_confidences(c.sft, 0, 4, 200) and set(a) == {0.9, 0.5, 0.1}
    assert 0.4 < a.count(0.9) / 200 < 0.6


def test_choices_outside_zero_one_are_refused():
    c = defaults()
    c.sft.confidence_choices = (0.5, 1.5)
    with pytest.raises(ValueError, match=r"sft.confidence_choices\[1\]"):
        validate(c)
