"""Several reproduction runs side by side (`launch.summarize_reproductions`): each system's
numbers as mean [min, max] over the runs, which claims held where, and each claim's margin per
run as a figure."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from corea_jax.reproduction.figures import new_figure, save
from corea_jax.reproduction.report import claims
from corea_jax.reproduction.tables import format_cell


def summarize_seeds(reports: dict[str, dict]) -> str:
    """Markdown: each system's pass@1, cost / LLM, ECE and AUROC as mean [min, max] over the
    runs ({label: report.json}), then which claims held in how many runs."""
    labels = list(reports)
    systems = list(next(iter(reports.values()))["systems"])

    def stat(values, fmt):
        values = [v for v in values if v is not None]
        if not values:
            return "-"
        return f"{fmt.format(np.mean(values))} [{fmt.format(min(values))}, {fmt.format(max(values))}]"

    cpus = sorted({r["provenance"].split("CPU: ", 1)[1] for r in reports.values()
                   if "CPU: " in r.get("provenance", "")})
    where = f" CPU: {'; '.join(cpus)}." if cpus else ""
    protocols = sorted({r.get("protocol", "greedy decoding, one answer per question") for r in reports.values()})
    lines = [f"Mean [min, max] over {len(labels)} runs ({', '.join(labels)}).{where}", "",
             f"Protocol: {' / '.join(protocols)}.", "",
             "| system | pass@1 | cost / LLM | ECE | AUROC |", "|---|---|---|---|---|"]
    for name in systems:
        rows = [r["systems"][name] for r in reports.values()]
        cost = [row["avg_cost"] / r["systems"]["LLM"]["avg_cost"] for row, r in zip(rows, reports.values())]
        lines.append(f"| {name} | {stat([row['pass_at_1'] for row in rows], '{:.1%}')} | {stat(cost, '{:.0%}')} | "
                     f"{stat([row.get('ece') for row in rows], '{:.3f}')} | "
                     f"{stat([row.get('auroc') for row in rows], '{:.3f}')} |")
    lines += ["", "| claim | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
    per_run = [claims(r["systems"]) for r in reports.values()]
    for i, row in enumerate(per_run[0]):
        cells = [f"{'yes' if run[i]['holds'] else '**no**'} ({format_cell(run[i]['value'], '{:.3f}')})" for run in per_run]
        lines.append(f"| {row['claim']} | " + " | ".join(cells) + " |")
    lines += ["", "Each claim's margin (how far its value clears its bound; negative: fails), its minimum "
              "over the runs and where:", "", "| claim | min margin | run | holds in |", "|---|---|---|---|"]
    for i, row in enumerate(per_run[0]):
        margins = [run[i]["margin"] for run in per_run]
        known = [(m, label) for m, label in zip(margins, labels) if m is not None]
        low = min(known) if known else (None, "-")
        held = sum(run[i]["holds"] for run in per_run)
        lines.append(f"| {row['claim']} | {format_cell(low[0], '{:+.3f}')} | {low[1]} | {held} of {len(per_run)} |")
    lines += ["", "RL's pass@1 gain over the SFT SLM (points): mean over the runs with its 95% interval "
              "(Student t), and the smallest:", "", "| run | mean gain | 95% interval | min |", "|---|---|---|---|"]
    for name in ("RLVR-SLM", "RLCC-SLM", "Brier-SLM"):
        gains = [100 * (r["systems"][name]["pass_at_1"] - r["systems"]["SFT-SLM"]["pass_at_1"])
                 for r in reports.values() if name in r["systems"]]
        if gains:
            low, high = mean_interval(gains)
            lines.append(f"| {name} | {np.mean(gains):+.2f} | [{low:+.2f}, {high:+.2f}] | {min(gains):+.2f} |")
    return "\n".join(lines) + "\n"


def mean_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """The Student-t interval of the mean of `values` (NaNs for fewer than two)."""
    from scipy import stats

    values = np.asarray(values, float)
    if values.size < 2:
        return float("nan"), float("nan")
    half = stats.t.ppf(0.5 + level / 2, values.size - 1) * values.std(ddof=1) / np.sqrt(values.size)
    return float(values.mean() - half), float(values.mean() + half)


def plot_claim_margins(reports: dict[str, dict], path: Path) -> Path:
    """One panel per claim: its margin in each run ({label: report.json}), bars above zero
    where it holds, below where it fails (pass@1 margins in points)."""
    labels = list(reports)
    per_run = [claims(r["systems"]) for r in reports.values()]
    n = len(per_run[0])
    cols = 3
    fig = new_figure(5.0 * cols, 3.0 * ((n + cols - 1) // cols))
    axes = np.atleast_1d(fig.subplots((n + cols - 1) // cols, cols)).ravel()
    for i, ax in enumerate(axes):
        if i >= n:
            ax.axis("off")
            continue
        claim = per_run[0][i]["claim"]
        points = "pass@1" in claim
        margins = np.array([np.nan if run[i]["margin"] is None else run[i]["margin"] for run in per_run])
        margins = 100 * margins if points else margins
        colors = ["#6acc64" if run[i]["holds"] else "#d65f5f" for run in per_run]
        ax.bar(np.arange(len(labels)), np.nan_to_num(margins), color=colors, edgecolor="black", linewidth=0.5)
        ax.axhline(0, color="black", linewidth=0.8)
        if claim.startswith(("RLVR-SLM pass@1", "RLCC-SLM pass@1")):
            ax.axhline(2, color="gray", linestyle="--", linewidth=1, label="2 points")
            ax.legend(fontsize=7, loc="upper right")
        ax.set_xticks(np.arange(len(labels)), labels, rotation=45, fontsize=7)
        ax.set_title(claim, fontsize=9)
        ax.set_ylabel("margin (points)" if points else "margin")
        ax.grid(axis="y", alpha=0.3, linewidth=0.5)
    return save(fig, path)
