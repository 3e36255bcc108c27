"""One reproduction run's report: report.json (the systems composed from each SLM's cascade
report, COREA's claims, the by-difficulty table), report.md, and the PNGs of figures.py.

Pure functions of numbers already computed (the cascade's per-system metrics, the trainer's
metrics.jsonl, per-item confidences and grades); every file is written atomically.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from corea_jax.files import write_atomic
from corea_jax.reproduction.figures import plot_frontier, plot_learning_curves, plot_reliability, plot_table
from corea_jax.reproduction.tables import format_cell, markdown_table


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


def read_jsonl(path: Path) -> list[dict]:
    """The rows of a .jsonl file (the trainer's metrics.jsonl, a cascade's records.jsonl)."""
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
    lines += [f"| {r['claim']} | {format_cell(r['value'], '{:.3f}')} | {r['target']} | {'yes' if r['holds'] else '**no**'} |"
              for r in rows]
    return lines


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
            cells += [format_cell(row[g]["pass_at_1"], "{:.1%}"), format_cell(row[g]["confidence_mean"], "{:.2f}")]
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
        f"COREA (RLCC-SLM -> LLM at tau = {format_cell(corea['tau'], '{:.2f}')}, the LLM's calibration pass@1): "
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
              "by_difficulty": by_difficulty({run: read_jsonl(path) for run, path in records.items()},
                                             groups) if groups else {}}
    report["claims"] = claims(report["systems"])
    if greedy:
        systems = compose_systems(greedy["cascades"])
        report["greedy"] = {"systems": systems, "claims": claims(systems),
                            "by_difficulty": by_difficulty({run: read_jsonl(path) for run, path
                                                            in greedy["records"].items()}, greedy["groups"])
                            if greedy.get("groups") else {}}
    write_atomic(workdir / "report.json", json.dumps(report, indent=2, allow_nan=False) + "\n")
    write_atomic(workdir / "report.md", render_markdown(report, cascades))

    plot_table(report["systems"], workdir / "table.png",
               f"COREA on chain arithmetic ({report['n_test']} test questions)")
    splits = {run: _test_split(read_jsonl(path), report["cost_model"]) for run, path in records.items()}
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
