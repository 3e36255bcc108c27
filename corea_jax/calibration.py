"""Calibration and discrimination metrics of verbalized confidence.

Inputs everywhere: `conf` float [N] in [0, 1] (the stated confidence) and `correct`
[N] booleans or 0/1 (the graded answer). Computed in float64 numpy; matplotlib is
imported only by `reliability_diagram`.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import numpy as np

from corea_jax.files import save_figure


def _validate(conf, correct) -> tuple[np.ndarray, np.ndarray]:
    """Both inputs as float64 [N]; ValueError naming the offending argument."""
    conf = np.asarray(conf, dtype=np.float64)
    correct = np.asarray(correct)
    if conf.ndim != 1:
        raise ValueError(f"conf must be 1-D, got shape {conf.shape}")
    if correct.ndim != 1:
        raise ValueError(f"correct must be 1-D, got shape {correct.shape}")
    if conf.shape != correct.shape:
        raise ValueError(f"conf and correct must have the same length, got {conf.size} and {correct.size}")
    if conf.size == 0:
        raise ValueError("conf and correct are empty")
    if np.isnan(conf).any():
        raise ValueError("conf holds NaN (drop unparsed confidences first)")
    if ((conf < 0) | (conf > 1)).any():
        raise ValueError("conf must lie in [0, 1]")
    if not np.isin(correct, (0, 1)).all():
        raise ValueError("correct must hold booleans or 0/1")
    return conf, correct.astype(np.float64)


def _check_bins(n_bins: int) -> None:
    if int(n_bins) != n_bins or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}")


class CalibrationBins(NamedTuple):
    """Per-bin statistics; `mean_confidence` and `accuracy` are NaN in empty bins.

    edges [n_bins + 1]; count, mean_confidence, accuracy [n_bins].
    """

    edges: np.ndarray
    count: np.ndarray
    mean_confidence: np.ndarray
    accuracy: np.ndarray


# Float products miss exact bin edges by ~1e-16 relative (0.57 * 100 is 56.99999999999999):
# a position this close below an integer counts as on it. Verbalized confidences have a few
# digits, so none lies genuinely within 1e-9 of a bin below an edge.
_EDGE_TOLERANCE = 1e-9


def bin_index(conf, n_bins: int = 10) -> np.ndarray:
    """The equal-width bin of each confidence: min(floor(c * n_bins), n_bins - 1), int64 [N].

    Exact for decimal confidences: 0.3, 0.6 and 0.7 fall in bins 3, 6 and 7 of ten (a
    float edge such as `linspace(0, 1, 11)[3] = 0.30000000000000004` would put 0.3 in
    bin 2), while 0.29999999 stays in bin 2. A value within `_EDGE_TOLERANCE` bin widths
    below an edge counts as on the edge.
    """
    _check_bins(n_bins)
    position = np.asarray(conf, dtype=np.float64) * n_bins
    return np.clip(np.floor(position + _EDGE_TOLERANCE), 0, n_bins - 1).astype(np.int64)


def calibration_bins(conf, correct, n_bins: int = 10) -> CalibrationBins:
    """Equal-width bins [0, 1/n), [1/n, 2/n), ..., [(n-1)/n, 1] by `bin_index`: 1.0 is in the last."""
    conf, correct = _validate(conf, correct)
    index = bin_index(conf, n_bins)
    edges = np.arange(n_bins + 1) / n_bins
    count = np.bincount(index, minlength=n_bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_confidence = np.bincount(index, weights=conf, minlength=n_bins) / count
        accuracy = np.bincount(index, weights=correct, minlength=n_bins) / count
    return CalibrationBins(edges, count.astype(np.int64), mean_confidence, accuracy)


def _weighted_gap(count: np.ndarray, mean_confidence: np.ndarray, accuracy: np.ndarray) -> float:
    """sum_b (n_b / N) |acc_b - conf_b| over non-empty bins."""
    full = count > 0
    weights = count[full] / count.sum()
    return float(np.sum(weights * np.abs(accuracy[full] - mean_confidence[full])))


def ece(conf, correct, n_bins: int = 10) -> float:
    """Expected calibration error over the equal-width bins of `calibration_bins`, weighted by
    bin frequency. Every ECE the package reports (evaluation, the trainer's metrics.jsonl,
    the reliability diagram's legend) is this function or its bins."""
    bins = calibration_bins(conf, correct, n_bins)
    return _weighted_gap(bins.count, bins.mean_confidence, bins.accuracy)


def adaptive_ece(conf, correct, n_bins: int = 10) -> float:
    """ECE over equal-mass bins: samples sorted by confidence, split into n_bins runs.

    Runs differ in size by at most one (the first N mod n_bins are one longer, as in
    `np.array_split`); with N < n_bins, each sample is its own bin. Tied confidences
    may fall in neighbouring bins; the stable sort keeps the split deterministic.
    """
    conf, correct = _validate(conf, correct)
    _check_bins(n_bins)
    order = np.argsort(conf, kind="stable")
    runs = [run for run in np.array_split(order, n_bins) if run.size]
    count = np.array([run.size for run in runs], dtype=np.float64)
    mean_confidence = np.array([conf[run].mean() for run in runs])
    accuracy = np.array([correct[run].mean() for run in runs])
    return _weighted_gap(count, mean_confidence, accuracy)


def brier(conf, correct) -> float:
    """Mean squared error of confidence against correctness, in [0, 1]."""
    conf, correct = _validate(conf, correct)
    return float(np.mean((conf - correct) ** 2))


def auroc(conf, correct) -> float:
    """Area under the ROC curve of confidence as a score for "correct".

    The Mann-Whitney statistic: the probability that a random correct sample has
    higher confidence than a random incorrect one, ties counting one half (average
    ranks). Returns NaN when only one class is present: the AUROC is undefined there,
    and NaN lets a sweep over subsets carry on (use np.nanmean) instead of stopping.
    """
    conf, correct = _validate(conf, correct)
    positive = correct == 1
    n_pos = int(positive.sum())
    n_neg = conf.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    _, inverse, counts = np.unique(conf, return_inverse=True, return_counts=True)
    # A tie group occupying 1-based ranks a..b gets their mean, (a + b) / 2.
    average_rank = np.cumsum(counts) - (counts - 1) / 2.0
    ranks = average_rank[inverse]
    u = ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def reliability_diagram(conf, correct, path: str | os.PathLike, n_bins: int = 10, title: str | None = None) -> str:
    """Write a reliability diagram PNG to `path`; returns the path.

    Top panel: accuracy per confidence bin (bars), the gap to the bin's mean
    confidence (red: above the bar is overconfidence), the diagonal of perfect
    calibration, ECE in the legend. Bottom panel: samples per bin, with counts. The
    file is written to a temporary name and renamed, so readers never see half a PNG.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    bins = calibration_bins(conf, correct, n_bins)
    error = _weighted_gap(bins.count, bins.mean_confidence, bins.accuracy)
    centers = (bins.edges[:-1] + bins.edges[1:]) / 2.0
    width = 1.0 / n_bins
    full = bins.count > 0

    fig = Figure(figsize=(6.0, 7.0), layout="constrained")
    FigureCanvasAgg(fig)
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    top.bar(centers[full], bins.accuracy[full], width=width, color="#4878d0", edgecolor="black",
            linewidth=0.6, label="Accuracy")
    top.bar(centers[full], (bins.mean_confidence - bins.accuracy)[full], bottom=bins.accuracy[full],
            width=width, color="#d65f5f", alpha=0.35, edgecolor="#b03030", hatch="//", linewidth=0.6,
            label=f"Gap to confidence (ECE = {error:.3f})")
    top.plot([0, 1], [0, 1], linestyle="--", color="gray", linewidth=1.2, label="Perfect calibration")
    top.set(xlim=(0, 1), ylim=(0, 1), ylabel="Accuracy")
    top.set_title(title or f"Reliability diagram (N = {int(bins.count.sum())})")
    top.legend(loc="upper left", fontsize=8, frameon=True)
    top.grid(alpha=0.3, linewidth=0.5)

    bottom.bar(centers, bins.count, width=width, color="#8c8c8c", edgecolor="black", linewidth=0.6)
    for x, n in zip(centers[full], bins.count[full]):
        bottom.annotate(str(int(n)), (x, n), ha="center", va="bottom", fontsize=7,
                        xytext=(0, 1), textcoords="offset points")
    bottom.set(xlim=(0, 1), xlabel="Confidence", ylabel="Count")
    bottom.set_ylim(0, bins.count.max() * 1.25)
    bottom.set_xticks(bins.edges if n_bins <= 10 else np.linspace(0, 1, 11))
    bottom.grid(axis="y", alpha=0.3, linewidth=0.5)

    return os.fspath(save_figure(fig, path))
