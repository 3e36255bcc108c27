"""The cascade report's accuracy-cost frontier figure (frontier.png)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from corea_jax.files import save_figure


def plot_frontier(plot: dict, path: Path, unit: str) -> None:
    """Accuracy against relative cost for every confidence source's tau sweep, with the random
    and oracle curves and the SLM / LLM / chosen-tau points. plot: the report's figure data
    (`report.compute_report`: test, systems, has_llm, and curves: source -> the sweep's
    (llm_usage, avg_cost, pass@1) points)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    test, systems = plot["test"], plot["systems"]
    llm_cost = float(np.mean(test.llm_cost)) if plot["has_llm"] else float(np.mean(test.slm_cost))
    rel = lambda c: c / llm_cost  # noqa: E731
    fig = Figure(figsize=(7.5, 5.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    colors = {"verbal": "#d62728", "answer_mean_prob": "#1f77b4", "answer_min_prob": "#2ca02c",
              "probe": "#9467bd"}
    labels = {"verbal": "verbal confidence", "answer_mean_prob": "answer-token mean prob",
              "answer_min_prob": "answer-token min prob", "probe": "hidden-state probe"}
    if plot["has_llm"]:
        for source, pts in plot["curves"].items():
            ax.plot([rel(c) for _, c, _ in pts], [a for _, _, a in pts], "-", color=colors[source],
                    linewidth=1.3, alpha=0.85, label=f"sweep: {labels[source]}")
        slm_acc, llm_acc = test.slm_correct.mean(), test.llm_correct.mean()
        slm_c = test.slm_cost.mean()
        u = np.linspace(0, 1, 21)
        ax.plot(rel(slm_c + u * llm_cost), (1 - u) * slm_acc + u * llm_acc, "--", color="gray",
                label="random deferral")
        oracle = systems["Oracle"]
        ax.plot([rel(slm_c), rel(oracle.cost.mean()), rel(slm_c + llm_cost)],
                [slm_acc, oracle.correct.mean(), llm_acc], ":", color="black", label="oracle")
    markers = {"SLM": ("s", "#444444"), "LLM": ("D", "#000000"), "COREA": ("*", "#d62728"),
               "COREA-risk": ("P", "#ff7f0e"), "Cascade-AvgProb": ("o", "#1f77b4"),
               "Cascade-MinProb": ("o", "#2ca02c"), "Cascade-Probe": ("o", "#9467bd")}
    for name, (marker, color) in markers.items():
        if name in systems:
            o = systems[name]
            ax.plot(rel(o.cost.mean()), o.correct.mean(), marker, color=color, markersize=11 if marker == "*" else 8,
                    markeredgecolor="black", linestyle="none", label=f"{name} (chosen tau)" if o.tau is not None else name)
    ax.set_xlabel(f"cost per item relative to the LLM alone ({unit})")
    ax.set_ylabel("pass@1 on the test items")
    ax.set_title(f"Accuracy-cost frontier (N = {test.n} test items)")
    ax.grid(alpha=0.3, linewidth=0.5)
    ax.legend(fontsize=7.5, loc="lower right", frameon=True)
    save_figure(fig, path)
