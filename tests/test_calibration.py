"""Tests for corea_jax.calibration (ECE, AUROC, Brier, reliability diagrams) against scikit-learn and plain-loop numpy references."""

import math
import os
from fractions import Fraction

import numpy as np
import pytest
from sklearn.metrics import brier_score_loss, roc_auc_score

from corea_jax import calibration


def _sample(seed: int, n: int = 2000, ties: bool = False):
    rng = np.random.default_rng(seed)
    conf = rng.uniform(0, 1, n)
    if ties:  # verbalized confidences are coarse: 0.0, 0.1, ..., 1.0
        conf = np.round(conf, 1)
    correct = rng.uniform(size=n) < conf**1.5
    return conf, correct


def _exact_bin(c: float, n_bins: int) -> int:
    """min(floor(c * n_bins), n_bins - 1) in exact rationals, c read as its shortest decimal."""
    return min(math.floor(Fraction(repr(float(c))) * n_bins), n_bins - 1)


def _ece_reference(conf, correct, n_bins):
    """Equal-width bins by exact rational arithmetic, last bin closed."""
    index = np.array([_exact_bin(c, n_bins) for c in conf])
    total = 0.0
    for b in range(n_bins):
        in_bin = index == b
        if in_bin.any():
            total += in_bin.mean() * abs(correct[in_bin].mean() - conf[in_bin].mean())
    return total


def _adaptive_ece_reference(conf, correct, n_bins):
    """Equal-mass bins by index arithmetic: the first N mod n_bins bins hold one more."""
    order = np.argsort(conf, kind="stable")
    n = conf.size
    size, extra = divmod(n, n_bins)
    start, total = 0, 0.0
    for b in range(n_bins):
        stop = start + size + (1 if b < extra else 0)
        idx = order[start:stop]
        if idx.size:
            total += idx.size / n * abs(correct[idx].mean() - conf[idx].mean())
        start = stop
    return total


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("ties", [False, True])
def test_brier_matches_sklearn(seed, ties):
    conf, correct = _sample(seed, ties=ties)
    assert calibration.brier(conf, correct) == pytest.approx(brier_score_loss(correct, conf), abs=1e-9)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("ties", [False, True])
def test_auroc_matches_sklearn_including_ties(seed, ties):
    conf, correct = _sample(seed, ties=ties)
    assert calibration.auroc(conf, correct) == pytest.approx(roc_auc_score(correct, conf), abs=1e-9)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("n_bins", [1, 10, 15])
@pytest.mark.parametrize("ties", [False, True])
def test_ece_matches_reference(seed, n_bins, ties):
    conf, correct = _sample(seed, ties=ties)
    expected = _ece_reference(conf, correct.astype(float), n_bins)
    assert calibration.ece(conf, correct, n_bins) == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("n", [7, 2000, 2003])
@pytest.mark.parametrize("n_bins", [10, 15])
def test_adaptive_ece_matches_reference(seed, n, n_bins):
    conf, correct = _sample(seed, n=n)
    expected = _adaptive_ece_reference(conf, correct.astype(float), n_bins)
    assert calibration.adaptive_ece(conf, correct, n_bins) == pytest.approx(expected, abs=1e-9)


def test_ece_by_hand():
    # Bin [0.2, 0.3): conf 0.2, 0.25, acc 1/2 -> gap 0.275. Last bin: conf 1.0 and 0.95, acc 1 -> gap 0.025.
    conf = [0.2, 0.25, 1.0, 0.95]
    correct = [1, 0, 1, 1]
    assert calibration.ece(conf, correct) == pytest.approx(0.5 * 0.275 + 0.5 * 0.025, abs=1e-12)


def test_decimal_confidences_on_an_edge_fall_in_the_bin_they_open():
    # 0.3 is bin 3 of ten, not bin 2: 0.3 correct and 0.2 wrong are 0.7 and 0.2 off.
    conf = [0.3] * 10 + [0.2] * 10
    correct = [1] * 10 + [0] * 10
    assert calibration.ece(conf, correct) == pytest.approx(0.5 * 0.7 + 0.5 * 0.2, abs=1e-12)
    assert calibration.calibration_bins(conf, correct).count.tolist() == [0, 0, 10, 10, 0, 0, 0, 0, 0, 0]


@pytest.mark.parametrize("n_bins", [1, 3, 5, 7, 10, 15, 20, 100])
def test_bin_index_is_exact_on_every_three_digit_decimal(n_bins):
    decimals = [i / 1000 for i in range(1001)]
    expected = [_exact_bin(c, n_bins) for c in decimals]
    assert calibration.bin_index(decimals, n_bins).tolist() == expected


def test_just_below_an_edge_stays_below():
    assert calibration.bin_index([0.29999999, 0.2999, 0.69999, 0.3, 0.6, 0.7, 0.99999999, 1.0]).tolist() == [
        2, 2, 6, 3, 6, 7, 9, 9]


def test_reliability_diagram_uses_the_same_bins(tmp_path, monkeypatch):
    seen = []
    original = calibration.calibration_bins
    monkeypatch.setattr(calibration, "calibration_bins", lambda *a, **k: seen.append(original(*a, **k)) or seen[-1])
    calibration.reliability_diagram([0.3] * 3 + [0.7], [1, 1, 0, 1], tmp_path / "r.png")
    assert seen[0].count.tolist() == [0, 0, 0, 3, 0, 0, 0, 1, 0, 0]


def test_confidence_one_falls_in_the_last_bin_and_zero_in_the_first():
    bins = calibration.calibration_bins([0.0, 1.0, 1.0, 0.5], [0, 1, 1, 1], n_bins=10)
    assert bins.count.tolist() == [1, 0, 0, 0, 0, 1, 0, 0, 0, 2]
    assert bins.accuracy[9] == 1.0 and bins.mean_confidence[9] == 1.0
    assert math.isnan(bins.accuracy[3])


def test_perfectly_calibrated_and_overconfident_samples():
    conf = np.repeat([0.25, 0.75], 4)
    correct = np.array([1, 0, 0, 0, 1, 1, 1, 0])
    assert calibration.ece(conf, correct) == pytest.approx(0.0, abs=1e-12)
    assert calibration.ece(np.full(8, 0.95), correct) == pytest.approx(0.95 - 0.5, abs=1e-12)


def test_auroc_by_hand_and_single_class():
    # Pairs (pos, neg): (0.9, 0.1) win, (0.9, 0.5) win, (0.5, 0.1) win, (0.5, 0.5) tie -> 3.5 / 4.
    assert calibration.auroc([0.9, 0.5, 0.5, 0.1], [1, 1, 0, 0]) == pytest.approx(0.875, abs=1e-12)
    assert math.isnan(calibration.auroc([0.2, 0.8], [1, 1]))
    assert math.isnan(calibration.auroc([0.2, 0.8], [False, False]))


@pytest.mark.parametrize("fn", [calibration.ece, calibration.adaptive_ece, calibration.brier, calibration.auroc])
def test_validation_names_the_argument(fn):
    with pytest.raises(ValueError, match="same length"):
        fn([0.1, 0.2], [1])
    with pytest.raises(ValueError, match="conf holds NaN"):
        fn([0.1, float("nan")], [1, 0])
    with pytest.raises(ValueError, match=r"conf must lie in \[0, 1\]"):
        fn([0.1, 1.2], [1, 0])
    with pytest.raises(ValueError, match="correct must hold"):
        fn([0.1, 0.2], [1, 2])
    with pytest.raises(ValueError, match="conf must be 1-D"):
        fn([[0.1, 0.2]], [1, 0])
    with pytest.raises(ValueError, match="empty"):
        fn([], [])


def test_bad_n_bins():
    with pytest.raises(ValueError, match="n_bins"):
        calibration.ece([0.5], [1], n_bins=0)
    with pytest.raises(ValueError, match="n_bins"):
        calibration.adaptive_ece([0.5], [1], n_bins=2.5)


def test_reliability_diagram_writes_a_png_atomically(tmp_path):
    conf, correct = _sample(0)
    path = tmp_path / "reliability.png"
    path.write_bytes(b"old")
    returned = calibration.reliability_diagram(conf, correct, path, title="Calibrated")
    assert returned == str(path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert os.listdir(tmp_path) == ["reliability.png"]  # no temporary left behind
    assert path.stat().st_mode & 0o777 == 0o644


def test_reliability_diagram_leaves_nothing_on_failure(tmp_path):
    with pytest.raises(ValueError):
        calibration.reliability_diagram([0.5, 2.0], [1, 0], tmp_path / "x.png")
    assert os.listdir(tmp_path) == []
