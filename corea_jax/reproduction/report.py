"""The reproduction's report: the paper-style table (markdown and PNG), reliability diagrams of
the SLM before and after RLCC, the RL learning curves and the accuracy-cost frontier.

Pure functions of numbers already computed (the cascade's per-system metrics, the trainer's
metrics.jsonl, per-item confidences and grades); every PNG is written atomically.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np

from corea_jax import calibration

SYSTEMS = ("SFT-SLM", "RLVR-SLM", "RLVR-SLM-AvgProb", "Brier-SLM", "RLCC-SLM", "LLM", "COREA", "COREA-risk")
COLUMNS = (("pass_at_1", "pass@1", "{:.1%}"), ("avg_cost", "avg cost (FLOPs)", "{:.3g}"),
           ("cost_vs_llm", "cost / LLM", "{:.0%}"),
           ("llm_usage", "LLM usage", "{:.1%}"), ("ece", "ECE", "{:.3f}"), ("auroc", "AUROC", "{:.3f}"),
           ("brier", "Brier", "{:.3f}"), ("tau", "tau", "{:.2f}"))
RUN_COLORS = {"RLVR": "#4878d0", "RLCC-L1": "#6acc64", "RLCC-Brier": "#d65f5f"}


def _cell(value, fmt: str) -> str:
    return "-" if value is None or (isinstance(value, float) and np.isnan(value)) else fmt.format(value)


def table_rows(systems: dict[str, dict]) -> list[list[str]]:
    """[system, pass@1, avg cost, LLM usage, ECE, AUROC, Brier, tau] rows, in SYSTEMS order."""
    names = [n for n in SYSTEMS if n in systems] + [n for n in systems if n not in SYSTEMS]
    llm_cost = systems.get("LLM", {}).get("avg_cost")
    rows = []
    for name in names:
        entry = dict(systems[name])
        entry["cost_vs_llm"] = entry["avg_cost"] / llm_cost if llm_cost else None
        rows.append([name] + [_cell(entry.get(key), fmt) for key, _, fmt in COLUMNS])
    return rows


def markdown_table(systems: dict[str, dict]) -> str:
    header = ["system"] + [title for _, title, _ in COLUMNS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(systems)]
    return "\n".join(lines)


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: Path) -> Path:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}-", suffix=".png")
    try:
        with os.fdopen(fd, "wb") as f:
            fig.savefig(f, format="png", dpi=130)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return path


def plot_table(systems: dict[str, dict], path: Path, title: str) -> Path:
    """The table of `markdown_table` as a PNG."""
    rows = table_rows(systems)
    fig = _figure(11.0, 0.32 * len(rows) + 0.8)
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
    return _save(fig, path)


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
    fig = _figure(5.0 * len(panels), 5.0)
    axes = np.atleast_1d(fig.subplots(1, len(panels), sharey=True))
    for ax, (title, conf, correct) in zip(axes, panels):
        _reliability_panel(ax, np.asarray(conf, float), np.asarray(correct, bool), title, n_bins)
    return _save(fig, path)


def read_metrics(path: Path) -> list[dict]:
    """The trainer's metrics.jsonl rows."""
    with Path(path).open() as f:
        return [json.loads(line) for line in f if line.strip()]


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
    fig = _figure(17.0, 4.0)
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
    return _save(fig, path)


POINT_MARKERS = "o^sDvP*Xh"


def plot_frontier(curves: dict[str, tuple[np.ndarray, np.ndarray]], points: dict[str, tuple[float, float]],
                  path: Path, llm_cost: float) -> Path:
    """pass@1 against average cost (in units of the LLM's cost): one curve per confidence
    source (every tau), and the systems as points, each with its own marker and named in a
    legend beside the axes (labels on the plot overlap where systems share a point)."""
    fig = _figure(9.5, 5.0)
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
    return _save(fig, path)


# --------------------------------------------------------------------------- composition

# report.json system -> (SLM run, system of that run's cascade report, confidence source of
# its ECE / AUROC / Brier). The "-SLM" systems are the SLM answering alone.
SYSTEM_SOURCES = {
    "SFT-SLM": ("sft", "SLM", "verbal"),
    "RLVR-SLM": ("rlvr", "SLM", "verbal"),
    "RLVR-SLM-AvgProb": ("rlvr", "SLM", "answer_mean_prob"),
    "Brier-SLM": ("brier", "SLM", "verbal"),
    "RLCC-SLM": ("rlcc", "SLM", "verbal"),
    "LLM": ("rlcc", "LLM", None),
    "COREA": ("rlcc", "COREA", "verbal"),
    "COREA-risk": ("rlcc", "COREA-risk", "verbal"),
}
CONFIDENCE_SYSTEM = {"verbal": "COREA", "answer_mean_prob": "Cascade-AvgProb"}


def compose_systems(cascades: dict[str, dict]) -> dict[str, dict]:
    """report.json's systems from each SLM run's cascade report ({run: report.json})."""
    systems = {}
    for name, (run, system, source) in SYSTEM_SOURCES.items():
        # A cascade system is null where its SLM never stated a parseable confidence.
        entry = dict(cascades[run]["systems"][system] or dict.fromkeys(cascades[run]["systems"]["LLM"]))
        if system == "SLM" and source is not None:
            # The SLM alone, scored with `source`: the cascade report holds that source's
            # ECE / AUROC / Brier on its cascade system (same test items, same SLM correctness).
            scored = cascades[run]["systems"][CONFIDENCE_SYSTEM[source]] or {}
            entry.update({k: scored.get(k) for k in ("ece", "auroc", "brier")}, tau=None)
        systems[name] = entry
    return systems


def cascade_rows(cascades: dict[str, dict]) -> dict[str, dict]:
    """Each SLM run's own cascade at the paper's tau (verbal confidence), for report.md."""
    labels = {"sft": "SFT-SLM -> LLM", "rlvr": "RLVR-SLM -> LLM", "brier": "Brier-SLM -> LLM",
              "rlcc": "RLCC-SLM -> LLM (COREA)"}
    return {labels[run]: cascades[run]["systems"]["COREA"] for run in labels
            if run in cascades and cascades[run]["systems"]["COREA"] is not None}


def _read_records(path: Path) -> list[dict]:
    with Path(path).open() as f:
        return [json.loads(line) for line in f if line.strip()]


def _test_split(records: list[dict], cost_model_name: str):
    """The cascade's test Split (per-item correctness, costs, confidences) of one SLM's records."""
    from corea_jax.cascade import report as cascade_report, CostModel

    params = {}
    for r in records:
        params.setdefault(r["model"], r.get("non_embedding_params"))
    return cascade_report.build_split(records, "test", CostModel(cost_model_name, params=params))


def claims(systems: dict[str, dict]) -> list[dict]:
    """COREA's claims on this run, each {claim, value, target, margin, holds}: an overconfident SFT
    SLM; RLCC calibrating it (ECE halved, below RLVR's) with confidences that rank right above
    wrong (AUROC); RL raising pass@1; the cascade at the paper's tau within 2 points of the
    LLM at <= 80% of its cost; an LLM clearly stronger than the SFT SLM. A claim whose numbers
    are missing (a system without a stated confidence) has value null and does not hold; its
    margin (how far the value clears its bound; negative where it fails) is null too."""
    def get(name, key):
        return systems.get(name, {}).get(key)

    def rel(name, key, base, ratio=False):
        a, b = get(name, key), get(*base)
        return None if a is None or b is None else (a / b if ratio else a - b)

    sft_ece, rlvr_ece, sft_acc = get("SFT-SLM", "ece"), get("RLVR-SLM", "ece"), get("SFT-SLM", "pass_at_1")
    half = None if sft_ece is None else sft_ece / 2
    # (claim, value, relation, bound): the claim holds where `value relation bound`
    rows = [
        ("SFT-SLM ECE > 0.15 (overconfident)", sft_ece, ">", 0.15),
        ("RLCC-SLM ECE <= half of SFT-SLM's", get("RLCC-SLM", "ece"), "<=", half),
        ("RLCC-SLM ECE < RLVR-SLM's", get("RLCC-SLM", "ece"), "<", rlvr_ece),
        ("RLCC-SLM AUROC >= 0.75", get("RLCC-SLM", "auroc"), ">=", 0.75),
        ("RLVR-SLM pass@1 > SFT-SLM's", get("RLVR-SLM", "pass_at_1"), ">", sft_acc),
        ("RLCC-SLM pass@1 > SFT-SLM's", get("RLCC-SLM", "pass_at_1"), ">", sft_acc),
        ("COREA pass@1 within 2 points of the LLM's", rel("COREA", "pass_at_1", ("LLM", "pass_at_1")), ">=", -0.02),
        ("COREA cost <= 80% of the LLM's", rel("COREA", "avg_cost", ("LLM", "avg_cost"), ratio=True), "<=", 0.8),
        ("LLM pass@1 >= SFT-SLM's + 15 points", rel("LLM", "pass_at_1", ("SFT-SLM", "pass_at_1")), ">=", 0.15),
    ]
    out = []
    for claim, value, relation, bound in rows:
        # margin: how far the value lies on the holding side of its bound (negative: fails by
        # that much); a non-strict bound holds at margin 0 up to float rounding
        margin = None if value is None or bound is None else (
            float(value) - bound if relation.startswith(">") else bound - float(value))
        holds = margin is not None and (margin > 0 if len(relation) == 1 else margin >= -1e-12)
        target = f"{relation} {'?' if bound is None else format(bound, '.3f')}"
        out.append({"claim": claim, "value": None if value is None else float(value), "target": target,
                    "margin": margin, "holds": holds})
    return out


def _claims_markdown(rows: list[dict]) -> list[str]:
    lines = ["| claim | value | target | holds |", "|---|---|---|---|"]
    lines += [f"| {r['claim']} | {_cell(r['value'], '{:.3f}')} | {r['target']} | {'yes' if r['holds'] else '**no**'} |"
              for r in rows]
    return lines


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
        cells = [f"{'yes' if run[i]['holds'] else '**no**'} ({_cell(run[i]['value'], '{:.3f}')})" for run in per_run]
        lines.append(f"| {row['claim']} | " + " | ".join(cells) + " |")
    lines += ["", "Each claim's margin (how far its value clears its bound; negative: fails), its minimum "
              "over the runs and where:", "", "| claim | min margin | run | holds in |", "|---|---|---|---|"]
    for i, row in enumerate(per_run[0]):
        margins = [run[i]["margin"] for run in per_run]
        known = [(m, label) for m, label in zip(margins, labels) if m is not None]
        low = min(known) if known else (None, "-")
        held = sum(run[i]["holds"] for run in per_run)
        lines.append(f"| {row['claim']} | {_cell(low[0], '{:+.3f}')} | {low[1]} | {held} of {len(per_run)} |")
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
    fig = _figure(5.0 * cols, 3.0 * ((n + cols - 1) // cols))
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
    return _save(fig, path)


RUN_LABELS = {"sft": "SFT-SLM", "rlvr": "RLVR-SLM", "brier": "Brier-SLM", "rlcc": "RLCC-SLM"}


def by_difficulty(records: dict[str, list[dict]], groups: dict[str, str]) -> dict[str, dict]:
    """Test pass@1 and mean stated (verbal) confidence of every SLM run and of the LLM, per
    difficulty group ({item id: group}, e.g. "1-digit"): {system: {group: {n, pass_at_1,
    confidence_mean}}}; a confidence mean is null where no answer stated one."""
    rows = {label: [r for r in records[run] if r["model"] == "slm" and r["split"] == "test"]
            for run, label in RUN_LABELS.items() if run in records}
    rows["LLM"] = [r for r in next(iter(records.values())) if r["model"] == "llm" and r["split"] == "test"]
    out: dict[str, dict] = {}
    for system, recs in rows.items():
        table: dict[str, dict] = {}
        for group in sorted(set(groups.values())):
            mine = [r for r in recs if groups.get(r["id"]) == group and not r.get("failed")]
            conf = [(r.get("confidence") or {}).get("verbal") for r in mine]
            conf = [c for c in conf if c is not None]
            table[group] = {"n": len(mine), "pass_at_1": float(np.mean([bool(r["correct"]) for r in mine])) if mine else None,
                            "confidence_mean": float(np.mean(conf)) if conf and system != "LLM" else None}
        out[system] = table
    return out


def _difficulty_markdown(table: dict[str, dict]) -> list[str]:
    groups = sorted({g for row in table.values() for g in row})
    lines = ["| system | " + " | ".join(f"{g}: pass@1 | {g}: confidence" for g in groups) + " |",
             "|---|" + "---|---|" * len(groups)]
    for system, row in table.items():
        cells = []
        for g in groups:
            cells += [_cell(row[g]["pass_at_1"], "{:.1%}"), _cell(row[g]["confidence_mean"], "{:.2f}")]
        lines.append(f"| {system} | " + " | ".join(cells) + " |")
    return lines


def render_markdown(report: dict, cascades: dict[str, dict]) -> str:
    s = report["systems"]
    llm, corea = s["LLM"], s["COREA"]
    lines = [
        "# COREA reproduced on a toy: chain arithmetic, from-scratch Qwen2-family models", "",
        f"{report['n_test']} test questions, {report['n_calibration']} calibration questions (thresholds); "
        f"cost model `{report['cost_model']}` ({report.get('cost_definition') or 'see corea_jax/cascade/costs.py'}); "
        f"{report['runtime_s']:.0f} s of stage time from an empty workdir; {report['provenance']}.", "",
        f"Protocol of every number below unless a section says otherwise: {report['protocol']}.", "",
        markdown_table(s), "",
        f"COREA (RLCC-SLM -> LLM at tau = {_cell(corea['tau'], '{:.2f}')}, the LLM's calibration pass@1): "
        f"pass@1 {corea['pass_at_1']:.1%} vs the LLM's {llm['pass_at_1']:.1%} "
        f"({100 * (corea['pass_at_1'] - llm['pass_at_1']):+.1f} points) at "
        f"{corea['avg_cost'] / llm['avg_cost']:.0%} of its cost; the LLM answers "
        f"{corea['llm_usage']:.0%} of the questions.", "",
        "The `-SLM` rows are the small model answering alone, with its verbalized confidence "
        "(RLVR-SLM-AvgProb: the mean probability of its answer tokens) scored against its correctness.", "",
        "## Each SLM in the cascade (verbal confidence, the paper's tau)", "",
        markdown_table(cascade_rows(cascades)), "",
        "Per-SLM cascade reports (intervals, parse rates, every baseline): `cascade_<run>/report.md`.", ""]
    lines += ["## COREA's claims on this run", "", *_claims_markdown(report["claims"]), ""]
    if report.get("by_difficulty"):
        lines += [f"## By difficulty (test pass@1 and mean stated confidence, {report['protocol_short']})", "",
                  *_difficulty_markdown(report["by_difficulty"]), ""]
    if report.get("greedy"):
        g = report["greedy"]
        lines += ["## Greedy decoding, alongside (temperature 0: one answer per question)", "",
                  markdown_table(g["systems"]), "", *_claims_markdown(g["claims"]), ""]
        if g.get("by_difficulty"):
            lines += [*_difficulty_markdown(g["by_difficulty"]), ""]
    lines += [
        "![table](table.png)", "", "![reliability](reliability.png)", "",
        "![learning curves](learning_curves.png)", "", "![frontier](frontier.png)", "",
        "## Stage times (s)", "", "| stage | seconds |", "|---|---|"]
    lines += [f"| {name} | {sec:.1f} |" for name, sec in report["stage_seconds"].items()]
    return "\n".join(lines) + "\n"


def write_all(workdir: Path, cascades: dict[str, dict], curves: dict[str, list[dict]],
              records: dict[str, Path], *, runtime_s: float, stage_seconds: dict[str, float],
              groups: dict[str, str] | None = None, provenance: str = "",
              protocol: str = "greedy decoding, one answer per question", protocol_short: str = "greedy",
              questions: dict[str, int] | None = None, greedy: dict | None = None) -> dict:
    """report.json, report.md, table.png, reliability.png, learning_curves.png, frontier.png.
    `groups` ({test item id: difficulty}) adds the by-difficulty table; `provenance` says
    where the models came from and on which machine (report.md's first line); `protocol`
    how the SLMs answered (every number and claim of the report uses it). `greedy`
    ({"cascades", "records", "groups"} of greedy cascades) adds a greedy section alongside
    a sampled protocol; `questions` ({split: questions}) counts questions where items are samples."""
    first = cascades["rlcc"]
    report = {"protocol": protocol, "protocol_short": protocol_short,
              "systems": compose_systems(cascades),
              "n_test": (questions or {}).get("test", first["n_test"]), "n_test_items": first["n_test"],
              "n_calibration": (questions or {}).get("calibration", first["n_calibration"]),
              "cost_model": first["cost_model"],
              "cost_definition": first.get("cost_definition"),
              "runtime_s": runtime_s, "stage_seconds": stage_seconds, "provenance": provenance,
              "claims": None,
              "by_difficulty": by_difficulty({run: _read_records(path) for run, path in records.items()},
                                             groups) if groups else {}}
    report["claims"] = claims(report["systems"])
    if greedy:
        systems = compose_systems(greedy["cascades"])
        report["greedy"] = {"systems": systems, "claims": claims(systems),
                            "by_difficulty": by_difficulty({run: _read_records(path) for run, path
                                                            in greedy["records"].items()}, greedy["groups"])
                            if greedy.get("groups") else {}}
    tmp = workdir / "report.json.tmp"
    tmp.write_text(json.dumps(report, indent=2, allow_nan=False) + "\n")
    os.replace(tmp, workdir / "report.json")
    tmp = workdir / "report.md.tmp"
    tmp.write_text(render_markdown(report, cascades))
    os.replace(tmp, workdir / "report.md")

    plot_table(report["systems"], workdir / "table.png",
               f"COREA on chain arithmetic ({report['n_test']} test questions)")
    splits = {run: _test_split(_read_records(path), report["cost_model"]) for run, path in records.items()}
    panels = []
    for run, title in (("sft", "SFT-SLM (before RL)"), ("rlcc", "RLCC-SLM (after RLCC)")):
        verbal = splits[run].confidence["verbal"]
        have = ~np.isnan(verbal)
        panels.append((f"{title}, verbal confidence", verbal[have], splits[run].slm_correct[have] > 0.5))
    plot_reliability(panels, workdir / "reliability.png")
    if curves:
        plot_learning_curves(curves, workdir / "learning_curves.png")

    from corea_jax.cascade import report as cascade_report

    sources = {"SFT-SLM": ("sft", "verbal"), "RLVR-SLM": ("rlvr", "verbal"),
               "RLVR-SLM-AvgProb": ("rlvr", "answer_mean_prob"), "Brier-SLM": ("brier", "verbal"),
               "RLCC-SLM (COREA)": ("rlcc", "verbal")}
    lines = {}
    for label, (run, source) in sources.items():
        if run in splits and not np.isnan(splits[run].confidence[source]).all():
            points = cascade_report.frontier(splits[run], source)
            lines[f"{label} -> LLM"] = (np.array([p[1] for p in points]), np.array([p[2] for p in points]))
    s = report["systems"]
    points = {name: (s[name]["avg_cost"], s[name]["pass_at_1"])
              for name in ("SFT-SLM", "RLVR-SLM", "RLCC-SLM", "LLM", "COREA", "COREA-risk")}
    plot_frontier(lines, points, workdir / "frontier.png", llm_cost=s["LLM"]["avg_cost"])
    return report
