"""The reproduction's figures: the paper-style table as a PNG, reliability diagrams of the SLM
before and after RLCC, the RL learning curves and the accuracy-cost frontier.

Pure functions of numbers already computed; every PNG is written atomically (`save`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from corea_jax import calibration
from corea_jax.files import save_figure
from corea_jax.reproduction.tables import COLUMNS, table_rows

RUN_COLORS = {"RLVR": "#4878d0", "RLCC-L1": "#6acc64", "RLCC-Brier": "#d65f5f"}


def new_figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save(fig, path: Path) -> Path:
    """`fig` as a PNG at `path`, written atomically (every figure of the reproduction's reports)."""
    return save_figure(fig, path, dpi=130)


def plot_table(systems: dict[str, dict], path: Path, title: str) -> Path:
    """The table of `markdown_table` as a PNG."""
    rows = table_rows(systems)
    fig = new_figure(11.0, 0.32 * len(rows) + 0.8)
    ax = fig.subplots()
    ax.axis("off")
    widths = [0.19] + [0.09] * len(COLUMNS)
    widths[2] = 0.14
    table = ax.table(cellText=rows, colLabels=["system"] + [t for _, t, _ in COLUMNS], loc="center",
                     cellLoc="center", colWidths=widths)
    table.auto_set_font_size(False)
    table.set_fontsize(10)
    table.scale(1.0, 1.5)
    for (r, c), cell in table.get_celld().items():
        if r == 0:
            cell.set_facecolor("#dde6f5")
            cell.set_text_props(weight="bold")
        elif rows[r - 1][0] in ("COREA", "COREA-risk"):
            cell.set_facecolor("#eaf5e6")
    ax.set_title(title, fontsize=11)
    return save(fig, path)


def _reliability_panel(ax, conf: np.ndarray, correct: np.ndarray, title: str, n_bins: int) -> None:
    bins = calibration.calibration_bins(conf, correct, n_bins)
    centers = (bins.edges[:-1] + bins.edges[1:]) / 2
    full = bins.count > 0
    width = 1.0 / n_bins
    ax.bar(centers[full], bins.accuracy[full], width=width, color="#4878d0", edgecolor="black", linewidth=0.6,
           label="accuracy in bin")
    ax.bar(centers[full], (bins.mean_confidence - bins.accuracy)[full], bottom=bins.accuracy[full], width=width,
           color="#d65f5f", alpha=0.35, edgecolor="#b03030", hatch="//", linewidth=0.6,
           label="gap to mean confidence")
    ax.plot([0, 1], [0, 1], "--", color="gray", linewidth=1.2, label="perfect calibration")
    for x, n, acc in zip(centers[full], bins.count[full], bins.accuracy[full]):
        # inside a bar tall enough for it, else just above the bar in black
        inside = acc >= 0.15
        ax.annotate(f"n={int(n)}", (x, 0.02 if inside else acc + 0.02), ha="center", va="bottom", fontsize=7,
                    rotation=90, color="white" if inside else "black")
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="stated confidence", ylabel="accuracy")
    ax.set_title(f"{title}\nECE {calibration.ece(conf, correct, n_bins):.3f}, "
                 f"AUROC {calibration.auroc(conf, correct):.3f}, accuracy {np.mean(correct):.1%}", fontsize=10)
    ax.grid(alpha=0.3, linewidth=0.5)
    ax.legend(loc="upper left", fontsize=8)


def plot_reliability(panels: Sequence[tuple[str, np.ndarray, np.ndarray]], path: Path, n_bins: int = 10) -> Path:
    """Side-by-side reliability diagrams: one (title, confidence [N], correct [N]) per panel."""
    fig = new_figure(5.0 * len(panels), 5.0)
    axes = np.atleast_1d(fig.subplots(1, len(panels), sharey=True))
    for ax, (title, conf, correct) in zip(axes, panels):
        _reliability_panel(ax, np.asarray(conf, float), np.asarray(correct, bool), title, n_bins)
    return save(fig, path)


def _smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over `window` steps, NaNs skipped."""
    out = np.full(len(values), np.nan)
    for i in range(len(values)):
        chunk = values[max(0, i - window + 1):i + 1]
        if np.isfinite(chunk).any():
            out[i] = np.nanmean(chunk)
    return out


def plot_learning_curves(runs: dict[str, list[dict]], path: Path, window: int = 10) -> Path:
    """Reward, accuracy, ECE and AUROC of the rollouts per step (the training batch's stated
    confidences against its correctness), one line per RL run (a trailing mean over `window`
    steps; the raw values faint behind it)."""
    fig = new_figure(17.0, 4.0)
    axes = fig.subplots(1, 4)
    for ax, (key, title) in zip(axes, (("reward_mean", "reward (own preset)"), ("accuracy", "rollout accuracy"),
                                       ("ece", "rollout ECE (stated confidence)"),
                                       ("auroc", "rollout AUROC (stated confidence)"))):
        for name, rows in runs.items():
            steps = np.array([r["step"] for r in rows])
            values = np.array([r.get(key, np.nan) for r in rows], float)
            color = RUN_COLORS.get(name)
            ax.plot(steps, values, color=color, alpha=0.2, linewidth=0.8)
            ax.plot(steps, _smooth(values, window), color=color, linewidth=2, label=name)
        ax.set(title=title, xlabel="RL step")
        ax.grid(alpha=0.3, linewidth=0.5)
        ax.legend(fontsize=8)
    return save(fig, path)


POINT_MARKERS = "o^sDvP*Xh"


def plot_frontier(curves: dict[str, tuple[np.ndarray, np.ndarray]], points: dict[str, tuple[float, float]],
                  path: Path, llm_cost: float) -> Path:
    """pass@1 against average cost (in units of the LLM's cost): one curve per confidence
    source (every tau), and the systems as points, each with its own marker and named in a
    legend beside the axes (labels on the plot overlap where systems share a point)."""
    fig = new_figure(9.5, 5.0)
    ax = fig.subplots()
    for name, (cost, acc) in curves.items():
        order = np.argsort(cost)
        ax.plot(np.asarray(cost)[order] / llm_cost, np.asarray(acc)[order], linewidth=1.6, label=name)
    for i, (name, (cost, acc)) in enumerate(points.items()):
        ax.scatter([cost / llm_cost], [acc], s=60, zorder=3 + i, edgecolor="black", linewidth=0.8,
                   marker=POINT_MARKERS[i % len(POINT_MARKERS)], color=f"C{(i + len(curves)) % 10}",
                   label=f"{name} ({acc:.1%}, cost {cost / llm_cost:.2f})")
    ax.set(xlabel="average cost per question (LLM alone = 1)", ylabel="pass@1 on test",
           title="Accuracy-cost frontier (thresholds swept on test)")
    ax.grid(alpha=0.3, linewidth=0.5)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    return save(fig, path)
