"""The reproduction's paper-style table: one row per system (pass@1, cost, LLM usage, ECE,
AUROC, Brier, tau), as markdown cells; report.py writes it, figures.py draws it."""

from __future__ import annotations

import numpy as np

SYSTEMS = ("SFT-SLM", "RLVR-SLM", "RLVR-SLM-AvgProb", "Brier-SLM", "RLCC-SLM", "LLM", "COREA", "COREA-risk")
COLUMNS = (("pass_at_1", "pass@1", "{:.1%}"), ("avg_cost", "avg cost (FLOPs)", "{:.3g}"),
           ("cost_vs_llm", "cost / LLM", "{:.0%}"),
           ("llm_usage", "LLM usage", "{:.1%}"), ("ece", "ECE", "{:.3f}"), ("auroc", "AUROC", "{:.3f}"),
           ("brier", "Brier", "{:.3f}"), ("tau", "tau", "{:.2f}"))


def format_cell(value, fmt: str) -> str:
    return "-" if value is None or (isinstance(value, float) and np.isnan(value)) else fmt.format(value)


def table_rows(systems: dict[str, dict]) -> list[list[str]]:
    """[system, pass@1, avg cost, LLM usage, ECE, AUROC, Brier, tau] rows, in SYSTEMS order."""
    names = [n for n in SYSTEMS if n in systems] + [n for n in systems if n not in SYSTEMS]
    llm_cost = systems.get("LLM", {}).get("avg_cost")
    rows = []
    for name in names:
        entry = dict(systems[name])
        entry["cost_vs_llm"] = entry["avg_cost"] / llm_cost if llm_cost else None
        rows.append([name] + [format_cell(entry.get(key), fmt) for key, _, fmt in COLUMNS])
    return rows


def markdown_table(systems: dict[str, dict]) -> str:
    header = ["system"] + [title for _, title, _ in COLUMNS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(systems)]
    return "\n".join(lines)
