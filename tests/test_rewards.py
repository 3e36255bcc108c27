"""Tests for corea_jax.rewards: each preset on hand-computed groups, validation, texts."""

import dataclasses
import math

import numpy as np
import pytest

from corea_jax import rewards

NAN = float("nan")

# Two questions, G = 4. Row 0: half right, one malformed. Row 1: all right.
CORRECT = np.array([[1, 1, 0, 0], [1, 1, 1, 1]], dtype=bool)
CONFIDENCE = np.array([[0.9, 0.5, 0.2, NAN], [1.0, 0.8, 0.0, 0.6]])
FORMAT_OK = np.array([[1, 1, 1, 0], [1, 1, 1, 1]], dtype=bool)
# Group accuracy: row 0 -> 0.5, row 1 -> 1.0.

EXPECTED_TOTALS = {
    # correctness + 0.5 * format
    "rlvr": [[1.5, 1.5, 0.5, 0.0], [1.5, 1.5, 1.5, 1.5]],
    # correctness + 0.5 * format - |c - group_acc|, malformed: correctness - 1
    "rlcc_l1": [
        [1 + 0.5 - 0.4, 1 + 0.5 - 0.0, 0 + 0.5 - 0.3, 0 - 1.0],
        [1 + 0.5 - 0.0, 1 + 0.5 - 0.2, 1 + 0.5 - 1.0, 1 + 0.5 - 0.4],
    ],
    # correctness + 0.5 * format - (c - group_acc)^2
    "rlcc_brier": [
        [1 + 0.5 - 0.16, 1 + 0.5 - 0.0, 0 + 0.5 - 0.09, 0 - 1.0],
        [1 + 0.5 - 0.0, 1 + 0.5 - 0.04, 1 + 0.5 - 1.0, 1 + 0.5 - 0.16],
    ],
    # correctness - (c - correct)^2, malformed: correctness - 1
    "rlcr": [
        [1 - 0.01, 1 - 0.25, 0 - 0.04, 0 - 1.0],
        [1 - 0.0, 1 - 0.04, 1 - 1.0, 1 - 0.16],
    ],
}


@pytest.mark.parametrize("name", sorted(rewards.PRESETS))
def test_preset_totals_on_hand_computed_groups(name):
    cfg = rewards.get_preset(name)
    out = rewards.compute_rewards(CORRECT, CONFIDENCE if cfg.requires_confidence else None, FORMAT_OK, cfg)
    np.testing.assert_allclose(out["total"], EXPECTED_TOTALS[name], rtol=0, atol=1e-12)
    np.testing.assert_array_equal(out["correctness"], CORRECT.astype(float))
    np.testing.assert_array_equal(out["format"], FORMAT_OK.astype(float))
    assert out["total"].dtype == np.float64


def test_target_is_the_group_accuracy_per_row_or_the_own_correctness():
    cfg = rewards.get_preset("rlcc_l1")
    out = rewards.compute_rewards(CORRECT, CONFIDENCE, FORMAT_OK, cfg)
    np.testing.assert_array_equal(out["target"], [[0.5] * 4, [1.0] * 4])
    out = rewards.compute_rewards(CORRECT, CONFIDENCE, FORMAT_OK, rewards.get_preset("rlcr"))
    np.testing.assert_array_equal(out["target"], CORRECT.astype(float))


def test_malformed_completion_gets_penalty_and_no_calibration():
    cfg = rewards.get_preset("rlcc_l1")
    out = rewards.compute_rewards(CORRECT, CONFIDENCE, FORMAT_OK, cfg)
    assert out["calibration"][0, 3] == 0.0
    assert out["format"][0, 3] == 0.0
    assert out["total"][0, 3] == cfg.format_penalty


def test_kl_distance_by_hand():
    cfg = rewards.RewardConfig(
        correctness_weight=0.0, calibration_weight=1.0, calibration_distance="kl", kl_eps=1e-3
    )
    correct = np.array([[1, 0], [1, 1]], dtype=bool)
    confidence = np.array([[0.9, 0.0], [1.0, 0.5]])
    out = rewards.compute_rewards(correct, confidence, np.ones_like(correct), cfg)
    # Row 0: p = 0.5; c = 0.9 and c = 0 (clipped to 1e-3). Row 1: p = 1.
    kl_half = lambda c: 0.5 * math.log(0.5 / c) + 0.5 * math.log(0.5 / (1 - c))  # noqa: E731
    expected = [[-kl_half(0.9), -kl_half(1e-3)], [-math.log(1 / (1 - 1e-3)), -math.log(1 / 0.5)]]
    np.testing.assert_allclose(out["calibration"], expected, rtol=1e-12)
    np.testing.assert_allclose(out["total"], expected, rtol=1e-12)
    assert np.isfinite(out["total"]).all()


def test_self_target_with_l1():
    cfg = rewards.RewardConfig(calibration_weight=2.0, calibration_target="self", format_weight=0.25)
    out = rewards.compute_rewards(np.array([[1, 0]]), np.array([[0.75, 0.75]]), np.array([[1, 1]]), cfg)
    np.testing.assert_allclose(out["total"], [[1 + 0.25 - 2 * 0.25, 0 + 0.25 - 2 * 0.75]])


def test_weights_come_from_the_config():
    cfg = rewards.RewardConfig(
        correctness_weight=3.0, format_weight=0.0, calibration_weight=0.5, format_penalty=-0.25
    )
    out = rewards.compute_rewards(CORRECT, CONFIDENCE, FORMAT_OK, cfg)
    expected = 3.0 * out["correctness"] + 0.5 * out["calibration"] - 0.25 * (1 - out["format"])
    np.testing.assert_allclose(out["total"], expected)


@pytest.mark.parametrize("name", sorted(rewards.PRESETS))
def test_a_malformed_completion_is_never_better(name):
    # For either correctness, the malformed total is <= every well-formed total.
    cfg = rewards.get_preset(name)
    confidences = np.linspace(0, 1, 11)
    for correct in (0, 1):
        for accuracy_row in ([0, 0, 0, 0], [1, 1, 1, 1], [1, 0, 1, 0]):
            row = np.array([correct] + accuracy_row[1:], dtype=bool)
            malformed = rewards.compute_rewards(
                row[None], np.array([[NAN, 0.5, 0.5, 0.5]]), np.array([[0, 1, 1, 1]], bool), cfg
            )["total"][0, 0]
            for c in confidences:
                formed = rewards.compute_rewards(
                    row[None], np.full((1, 4), c), np.ones((1, 4), bool), cfg
                )["total"][0, 0]
                assert malformed <= formed + 1e-12, (correct, accuracy_row, c)


def test_any_leading_shape_works():
    cfg = rewards.get_preset("rlcc_l1")
    out = rewards.compute_rewards(CORRECT[None], CONFIDENCE[None], FORMAT_OK[None], cfg)
    np.testing.assert_allclose(out["total"][0], EXPECTED_TOTALS["rlcc_l1"])


def test_validation_errors():
    cfg = rewards.get_preset("rlcc_l1")
    with pytest.raises(ValueError, match="NaN where format_ok"):
        rewards.compute_rewards(CORRECT, CONFIDENCE, np.ones_like(FORMAT_OK), cfg)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        rewards.compute_rewards(CORRECT, np.where(FORMAT_OK, 1.5, NAN), FORMAT_OK, cfg)
    with pytest.raises(ValueError, match="format_ok shape"):
        rewards.compute_rewards(CORRECT, CONFIDENCE, FORMAT_OK[:, :2], cfg)
    with pytest.raises(ValueError, match="confidence shape"):
        rewards.compute_rewards(CORRECT, CONFIDENCE[:, :2], FORMAT_OK, cfg)
    with pytest.raises(ValueError, match="confidence is required"):
        rewards.compute_rewards(CORRECT, None, FORMAT_OK, cfg)
    with pytest.raises(ValueError, match="correct must hold"):
        rewards.compute_rewards(CORRECT * 2, CONFIDENCE, FORMAT_OK, cfg)


def test_config_validation_and_preset_lookup():
    with pytest.raises(ValueError, match="calibration_distance"):
        rewards.RewardConfig(calibration_distance="l3")
    with pytest.raises(ValueError, match="calibration_target"):
        rewards.RewardConfig(calibration_target="oracle")
    with pytest.raises(ValueError, match=r"'corea'.*\['rlcc_brier', 'rlcc_l1', 'rlcr', 'rlvr'\]"):
        rewards.get_preset("corea")
    with pytest.raises(dataclasses.FrozenInstanceError):
        rewards.get_preset("rlvr").format_weight = 2.0
    assert not rewards.get_preset("rlvr").requires_confidence
    assert rewards.get_preset("rlcc_l1").requires_confidence


def test_a_preset_with_its_own_weights():
    """reward_config replaces the weights given (None keeps the preset's), and the total
    follows them: a calibration term at half weight costs half as much."""
    half = rewards.reward_config("rlcc_l1", calibration_weight=0.5, correctness_weight=None)
    assert half == dataclasses.replace(rewards.get_preset("rlcc_l1"), calibration_weight=0.5)
    assert rewards.reward_config("rlvr") == rewards.get_preset("rlvr")
    correct, confidence, format_ok = np.array([[1, 0]]), np.array([[1.0, 1.0]]), np.array([[1, 1]])
    full = rewards.compute_rewards(correct, confidence, format_ok, rewards.get_preset("rlcc_l1"))
    halved = rewards.compute_rewards(correct, confidence, format_ok, half)
    # group accuracy 0.5: |1 - 0.5| = 0.5 off each, 0.25 at half weight
    np.testing.assert_allclose(halved["total"] - full["total"], [[0.25, 0.25]])
    with pytest.raises(ValueError, match="calibration_weight must be a finite number >= 0, got -1"):
        rewards.reward_config("rlcc_l1", calibration_weight=-1)
    with pytest.raises(ValueError, match=r"unknown reward weights \['kl_eps'\]"):
        rewards.reward_config("rlcc_l1", kl_eps=0.1)


def test_rewards_from_texts_on_a_gsm8k_group():
    responses = [
        [
            "2 + 1 = 3 bolts. \\boxed{3}\nConfidence: 0.9",
            "\\boxed{3}\nConfidence: 60%",
            "\\boxed{4}\nConfidence: 0.5",
            "It takes 3.\nConfidence: \\(\\boxed{0.6}\\)",  # right answer, but no answer box
        ],
        ["\\boxed{18}\nConfidence: 1", "\\boxed{18}", "\\boxed{20}\nConfidence: 0", "\\boxed{18} Confidence: high"],
    ]
    golds = ["#### 3", "Janet makes $18.\n#### 18"]
    out = rewards.rewards_from_texts(responses, golds, "gsm8k", rewards.get_preset("rlcc_l1"))
    np.testing.assert_array_equal(out["correct"], [[1, 1, 0, 1], [1, 1, 0, 1]])
    np.testing.assert_array_equal(out["format_ok"], [[1, 1, 1, 0], [1, 0, 1, 0]])
    np.testing.assert_allclose(out["confidence"], [[0.9, 0.6, 0.5, 0.6], [1.0, NAN, 0.0, NAN]])
    # Group accuracy 0.75 in both rows.
    expected = [
        [1 + 0.5 - 0.15, 1 + 0.5 - 0.15, 0 + 0.5 - 0.25, 1 - 1.0],
        [1 + 0.5 - 0.25, 1 - 1.0, 0 + 0.5 - 0.75, 1 - 1.0],
    ]
    np.testing.assert_allclose(out["total"], expected, atol=1e-12)


def test_rewards_from_texts_checks_group_sizes():
    with pytest.raises(ValueError, match="same number of completions"):
        rewards.rewards_from_texts([["a", "b"], ["c"]], ["1", "2"], "gsm8k", rewards.get_preset("rlvr"))
    with pytest.raises(ValueError, match="groups"):
        rewards.rewards_from_texts([["a"]], ["1", "2"], "gsm8k", rewards.get_preset("rlvr"))
