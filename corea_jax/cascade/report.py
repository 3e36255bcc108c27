"""The cascade report, a pure function of records.jsonl (and the config's threshold rules).

Systems (`SYSTEMS`), each scored on the test items with its tau chosen on the calibration split:
  SLM, LLM            one model answers everything (LLM omitted when config.llm_on == "deferred")
  COREA               verbal confidence, tau by config.threshold.rule (the paper's: LLM pass@1)
  COREA-risk          verbal confidence, the risk-controlled tau (`thresholds.risk_controlled_threshold`)
  Cascade-AvgProb     mean probability of the answer tokens (the paper's AvgProb baseline)
  Cascade-MinProb     minimum probability of the answer tokens
  Cascade-Probe       a linear probe on the SLM's last hidden state (`probe`), fitted on calibration
  Oracle              defers exactly the items the SLM gets wrong and the LLM right
  Random              defers at random with COREA's LLM usage (expected values)

Per system: pass_at_1, avg_cost (per item, as `cost_definition` says; a deferred item pays
SLM + LLM), llm_usage, and the ECE / AUROC / Brier of its confidence against the SLM's
correctness on the test items with a parsed confidence (null where a system has none), tau
(null where none applies).
Intervals: paired bootstrap over test items (the same resampled items for every system), 95%
percentile intervals of pass@1, cost, the accuracy drop and the cost saving against the LLM.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from corea_jax import calibration
from corea_jax.cascade import probe as probe_lib
from corea_jax.cascade import thresholds
from corea_jax.cascade.costs import CostModel, format_cost
from corea_jax.cascade.plots import plot_frontier
from corea_jax.files import write_atomic

CASCADES = {"COREA": "verbal", "COREA-risk": "verbal", "Cascade-AvgProb": "answer_mean_prob",
            "Cascade-MinProb": "answer_min_prob", "Cascade-Probe": "probe"}
SYSTEMS = ("SLM", "LLM", *CASCADES, "Oracle", "Random")
SOURCES = ("verbal", "answer_mean_prob", "answer_min_prob", "probe")
MAX_EXCLUDED_SHOWN = 20  # report.md lists the first ones; report.json all of them
FIELDS = ("pass_at_1", "avg_cost", "llm_usage", "ece", "auroc", "brier", "tau")


@dataclasses.dataclass
class Split:
    """Per-item arrays of one split over the items with the records they need.

    llm_correct / llm_cost are NaN where the LLM has no record (llm_on == "deferred").
    confidence: source -> [N] float, NaN where missing.
    """

    ids: list[str]
    slm_correct: np.ndarray
    llm_correct: np.ndarray
    slm_cost: np.ndarray
    llm_cost: np.ndarray
    confidence: dict[str, np.ndarray]
    hidden: np.ndarray | None
    llm_on_all: bool = True  # False: the LLM answered only deferred items (llm_on == "deferred")

    @property
    def n(self) -> int:
        return len(self.ids)

    def subset(self, keep: np.ndarray, llm_on_all: bool | None = None) -> "Split":
        """The items where `keep` ([N] bool) holds."""
        return Split(ids=[i for i, k in zip(self.ids, keep) if k], slm_correct=self.slm_correct[keep],
                     llm_correct=self.llm_correct[keep], slm_cost=self.slm_cost[keep],
                     llm_cost=self.llm_cost[keep],
                     confidence={s: c[keep] for s, c in self.confidence.items()},
                     hidden=None if self.hidden is None else self.hidden[keep],
                     llm_on_all=self.llm_on_all if llm_on_all is None else llm_on_all)

    @property
    def has_llm(self) -> bool:
        """Whether LLM-alone, Oracle and Random can be scored (the LLM answered every item)."""
        return self.llm_on_all and bool(self.n) and not np.isnan(self.llm_correct).any()


def latest_records(records: Sequence[dict]) -> list[dict]:
    """The last record of every (id, model), failed ones included (a later line supersedes)."""
    return list({(r["id"], r["model"]): r for r in records}.values())


def _latest(records: Sequence[dict], model: str, split: str) -> dict[str, dict]:
    """id -> the latest record of `model` on `split`, unless that one failed."""
    return {r["id"]: r for r in latest_records(records)
            if r["model"] == model and r["split"] == split and not r.get("failed")}


def build_split(records: Sequence[dict], split: str, cost_model: CostModel,
                ids: Sequence[str] | None = None, require_llm: bool = True) -> Split:
    """The Split of `split` from records: the items of `ids` (default: every SLM record of the
    split, in file order) that have an SLM record, and an LLM record when `require_llm`."""
    slm, llm = _latest(records, "slm", split), _latest(records, "llm", split)
    ids = [i for i in (ids if ids is not None else slm) if i in slm and (i in llm or not require_llm)]
    nan = math.nan

    def column(fn, table):
        return np.asarray([fn(table[i]) if i in table else nan for i in ids], np.float64)

    confidence = {}
    for source in SOURCES[:-1]:
        confidence[source] = np.asarray(
            [nan if slm[i]["confidence"].get(source) is None else slm[i]["confidence"][source]
             for i in ids], np.float64)
    hidden = None
    if ids and all(slm[i].get("hidden") is not None for i in ids):
        hidden = np.asarray([slm[i]["hidden"] for i in ids], np.float64)
    return Split(ids=list(ids), slm_correct=column(lambda r: float(r["correct"]), slm),
                 llm_correct=column(lambda r: float(r["correct"]), llm),
                 slm_cost=column(cost_model, slm), llm_cost=column(cost_model, llm),
                 confidence=confidence, hidden=hidden, llm_on_all=require_llm)


def add_probe(calibration: Split, test: Split, l2: float, seed: int = 0) -> bool:
    """Sets confidence["probe"] on both splits (cross-fitted on calibration, a full fit for
    test); NaN when hidden states are missing. Returns whether the probe could be fitted."""
    usable = (calibration.hidden is not None and test.hidden is not None and calibration.n >= 4
              and 0 < calibration.slm_correct.mean() < 1)
    if not usable:
        for split in (calibration, test):
            split.confidence["probe"] = np.full(split.n, math.nan)
        return False
    labels = calibration.slm_correct.astype(bool)
    calibration.confidence["probe"] = probe_lib.cross_fit(calibration.hidden, labels, l2, seed=seed)
    test.confidence["probe"] = probe_lib.fit_probe(calibration.hidden, labels, l2).predict(test.hidden)
    return True


def choose_taus(config, calibration: Split) -> dict[str, float | None]:
    """tau of every cascade system, from the calibration split (None: no confidence there)."""
    taus = {}
    for name, source in CASCADES.items():
        conf = calibration.confidence[source]
        if np.isnan(conf).all():
            taus[name] = None
            continue
        rule = "risk" if name == "COREA-risk" else config.threshold.rule
        taus[name] = thresholds.choose_threshold(config.threshold, conf, calibration.slm_correct.astype(bool),
                                                 calibration.llm_correct.astype(bool), rule)
    return taus


@dataclasses.dataclass
class Outcome:
    """Per test item: correct (expected value for Random), cost, deferred (0/1 or a probability)."""

    correct: np.ndarray
    cost: np.ndarray
    deferred: np.ndarray
    tau: float | None = None
    source: str | None = None


def outcomes(test: Split, taus: dict[str, float | None]) -> dict[str, Outcome]:
    """Every system that the available records can score."""
    out = {"SLM": Outcome(test.slm_correct, test.slm_cost, np.zeros(test.n), source="verbal")}
    if test.has_llm:
        out["LLM"] = Outcome(test.llm_correct, test.llm_cost, np.ones(test.n))
    for name, source in CASCADES.items():
        tau = taus.get(name)
        if tau is None:
            continue
        kept = thresholds.keeps(test.confidence[source], tau)
        out[name] = Outcome(np.where(kept, test.slm_correct, test.llm_correct),
                            test.slm_cost + np.where(kept, 0.0, test.llm_cost),
                            (~kept).astype(np.float64), tau, source)
    if test.has_llm:
        helps = (test.llm_correct == 1) & (test.slm_correct == 0)
        out["Oracle"] = Outcome(np.where(helps, test.llm_correct, test.slm_correct),
                                test.slm_cost + np.where(helps, test.llm_cost, 0.0),
                                helps.astype(np.float64))
        if "COREA" in out:
            u = float(out["COREA"].deferred.mean())
            out["Random"] = Outcome((1 - u) * test.slm_correct + u * test.llm_correct,
                                    test.slm_cost + u * test.llm_cost, np.full(test.n, u))
    return out


def _finite(x) -> float | None:
    return None if x is None or not math.isfinite(float(x)) else float(x)


def system_metrics(outcome: Outcome, test: Split) -> dict:
    """report.json's fields for one system (null where a field does not apply)."""
    entry = dict(pass_at_1=float(np.mean(outcome.correct)), avg_cost=float(np.mean(outcome.cost)),
                 llm_usage=float(np.mean(outcome.deferred)), ece=None, auroc=None, brier=None,
                 tau=None if outcome.tau is None else (outcome.tau if math.isfinite(outcome.tau) else None))
    if outcome.source is not None:
        conf = test.confidence[outcome.source]
        have = ~np.isnan(conf)
        if have.any():
            c, ok = np.clip(conf[have], 0, 1), test.slm_correct[have]
            entry.update(ece=calibration.ece(c, ok), auroc=_finite(calibration.auroc(c, ok)),
                         brier=calibration.brier(c, ok))
    if outcome.tau is not None and math.isinf(outcome.tau):
        entry["tau"] = None  # defer everything: tau = +inf has no JSON number
    return entry


def bootstrap(systems: dict[str, Outcome], n_resamples: int, seed: int) -> dict[str, dict]:
    """Paired bootstrap: 95% intervals of pass@1, avg cost and, against the LLM, the accuracy
    drop (LLM - system) and the cost saving (1 - cost / LLM cost)."""
    if not systems or n_resamples < 1:
        return {}
    n = len(next(iter(systems.values())).correct)
    idx = np.random.default_rng(seed).integers(0, n, size=(n_resamples, n))
    interval = lambda v: [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))]  # noqa: E731
    llm = systems.get("LLM")
    out = {}
    for name, o in systems.items():
        acc, cost = o.correct[idx].mean(1), o.cost[idx].mean(1)
        entry = {"pass_at_1": interval(acc), "avg_cost": interval(cost)}
        if llm is not None:
            entry["accuracy_drop"] = interval(llm.correct[idx].mean(1) - acc)
            entry["cost_saving"] = interval(1 - cost / llm.cost[idx].mean(1))
        out[name] = entry
    return out


def frontier(test: Split, source: str) -> list[tuple[float, float, float]]:
    """(llm_usage, avg_cost, pass@1) at every tau of the sweep over test confidences."""
    points = []
    for tau in thresholds.sweep(test.confidence[source]):
        kept = thresholds.keeps(test.confidence[source], tau)
        points.append((float((~kept).mean()),
                       float(np.mean(test.slm_cost + np.where(kept, 0.0, test.llm_cost))),
                       float(np.mean(np.where(kept, test.slm_correct, test.llm_correct)))))
    return points


def parse_rates(records: Sequence[dict]) -> list[dict]:
    """Per (model, split): items, failed, answer parse rate, verbal and token-probability coverage."""
    rows = []
    for model in ("slm", "llm"):
        for split in ("calibration", "test"):
            group = [r for r in records if r["model"] == model and r["split"] == split]
            ok = [r for r in group if not r.get("failed")]
            if not group:
                continue
            rate = lambda f: float(np.mean([f(r) for r in ok])) if ok else None  # noqa: E731
            rows.append(dict(model=model, split=split, items=len(ok),
                             failed=len(group) - len(ok),
                             answer_parsed=rate(lambda r: bool(r.get("format_ok"))),
                             verbal_parsed=rate(lambda r: r["confidence"].get("verbal") is not None),
                             token_probs=rate(lambda r: r["confidence"].get("answer_mean_prob") is not None),
                             mean_generated_tokens=rate(lambda r: r["generated_tokens"])))
    return rows


def deferrals(test: Split, taus: dict[str, float | None]) -> dict[str, np.ndarray]:
    """cascade system -> [N] bool, the test items it defers (systems without a tau omitted)."""
    return {name: ~thresholds.keeps(test.confidence[CASCADES[name]], tau)
            for name, tau in taus.items() if tau is not None}


def deferred_ids(config, records: Sequence[dict], cost_model: CostModel | None = None) -> set[str]:
    """Test items that some cascade system defers (what the LLM must answer when
    config.llm_on == "deferred")."""
    cost_model = cost_model or CostModel("time")
    calibration = build_split(records, "calibration", cost_model)
    test = build_split(records, "test", cost_model, require_llm=False)
    add_probe(calibration, test, config.probe_l2, config.seed)
    out = set()
    for deferred in deferrals(test, choose_taus(config, calibration)).values():
        out.update(i for i, d in zip(test.ids, deferred) if d)
    return out


def _why_missing(latest: dict[tuple[str, str], dict], item_id: str, deferred_by: Sequence[str] = ()) -> str:
    """Why an item lacks the records a system needs; latest: (id, model) -> its split's record."""
    for model in ("slm", "llm"):
        record = latest.get((item_id, model))
        if record is not None and not record.get("failed"):
            continue
        reason = (f"{model}: no record" if record is None else
                  f"{model}: the call failed ({record.get('error') or 'no error recorded'})")
        if model == "llm" and deferred_by:
            reason += f"; deferred by {', '.join(deferred_by)}"
        return reason + "; a run without rescore_only asks for it"
    return "no answer"


def excluded_items(records: Sequence[dict], split: str, wanted: Sequence[str], kept: Sequence[str],
                   deferred_by: dict[str, list[str]] | None = None) -> list[dict]:
    """{id, split, reason} of each item of `wanted` that is not among `kept` (scored)."""
    kept, deferred_by = set(kept), deferred_by or {}
    latest = {(r["id"], r["model"]): r for r in latest_records(records) if r["split"] == split}
    return [dict(id=i, split=split, reason=_why_missing(latest, i, deferred_by.get(i, ())))
            for i in wanted if i not in kept]


def compute_report(config, records: Sequence[dict], cost_model: CostModel,
                   calibration_ids: Sequence[str] | None = None,
                   test_ids: Sequence[str] | None = None) -> tuple[dict, dict]:
    """(report.json content without runtime_s, the plot data); a pure function of the records.
    LM-head sizes the cost model lacks come from config.<role>.lm_head_params."""
    all_llm = config.llm_on == "all"
    records = latest_records(records)
    cost_model = cost_model.with_lm_heads({role: config[role].get("lm_head_params") for role in ("slm", "llm")})
    calibration = build_split(records, "calibration", cost_model, calibration_ids)
    test = build_split(records, "test", cost_model, test_ids, require_llm=False)
    if calibration.n == 0:
        raise ValueError("records: no calibration item has both an SLM and an LLM record; "
                         "the thresholds need them (run without rescore_only first)")
    probe_ok = add_probe(calibration, test, config.probe_l2, config.seed)
    taus = choose_taus(config, calibration)
    # Items without the LLM answer a system needs (all of them, or, with llm_on = "deferred",
    # those some cascade defers) are left out of every system, so all score the same items.
    deferred = deferrals(test, taus)
    lacking = np.isnan(test.llm_correct)
    if not all_llm:
        lacking &= np.logical_or.reduce([np.zeros(test.n, bool), *deferred.values()])
    deferred_by = {i: [name for name, d in deferred.items() if d[k]] for k, i in enumerate(test.ids)}
    wanted_test = list(test_ids if test_ids is not None else test.ids)
    test = test.subset(~lacking, llm_on_all=all_llm)
    excluded = (excluded_items(records, "calibration", calibration_ids or [], calibration.ids) +
                excluded_items(records, "test", wanted_test, test.ids, deferred_by))
    if test.n == 0:
        reason = next((e["reason"] for e in excluded if e["split"] == "test"), "no SLM record")
        raise ValueError(f"records: no test item has the records it needs (e.g. {reason})")
    systems = outcomes(test, taus)
    metrics_by_system = {name: (system_metrics(systems[name], test) if name in systems else None)
                         for name in SYSTEMS}
    llm = metrics_by_system["LLM"]
    drop, saving = {}, {}
    for name, m in metrics_by_system.items():
        if m is not None and llm is not None:
            drop[name] = llm["pass_at_1"] - m["pass_at_1"]
            saving[name] = 1 - m["avg_cost"] / llm["avg_cost"] if llm["avg_cost"] else None
    notes = []
    if not all_llm:
        notes.append("llm_on = 'deferred': the LLM answered only deferred test items, so LLM-alone, "
                     "Oracle, Random and the savings against the LLM are not reported.")
    n_excluded = {split: sum(e["split"] == split for e in excluded) for split in ("calibration", "test")}
    if excluded:
        notes.append(f"Excluded for missing answers (listed under 'excluded_items' in report.json, "
                     f"each with its reason): {n_excluded['test']} test and {n_excluded['calibration']} "
                     "calibration items; every system is scored on the same remaining items.")
    if not probe_ok:
        notes.append("Cascade-Probe: no probe (hidden states missing or a one-class calibration split).")
    notes.append("Random is the expected value of deferring COREA's share of items at random.")
    notes.append(f"Thresholds: tau chosen on the calibration split ({calibration.n} items) by rule "
                 f"'{config.threshold.rule}' (COREA-risk: risk-controlled, epsilon="
                 f"{config.threshold.epsilon}, delta={config.threshold.delta}); an item stays with "
                 "the SLM when its confidence >= tau; a missing confidence defers.")
    rates = parse_rates(records)
    report = dict(
        systems=metrics_by_system, n_test=test.n, n_calibration=calibration.n,
        cost_model=cost_model.name, cost_unit=cost_model.unit, cost_definition=cost_model.describe(),
        llm_on=config.llm_on, threshold_rule=config.threshold.rule,
        accuracy_drop=drop, cost_saving=saving,
        intervals=bootstrap(systems, config.bootstrap, config.seed),
        taus_calibration={k: _finite(v) for k, v in taus.items()},
        parse_rates=rates,
        failed={f"{r['model']}/{r['split']}": r["failed"] for r in rates},
        n_excluded=n_excluded, excluded_items=excluded,
        recorded_model_seconds=float(sum(r["seconds"] for r in records if not r.get("failed"))),
        notes=notes)
    curves = {source: frontier(test, source) for source in SOURCES
              if test.has_llm and not np.isnan(test.confidence[source]).all()}
    plot = dict(test=test, systems=systems, has_llm=test.has_llm, curves=curves)
    return report, plot


_write_atomic = write_atomic


def _interval(entry: dict | None, key: str, fmt) -> str:
    if not entry or key not in entry:
        return ""
    lo, hi = entry[key]
    return f" [{fmt(lo)}, {fmt(hi)}]"


def render_markdown(report: dict, title: str = "Cascade report") -> str:
    """report.md: the paper-style table, parse rates and item counts."""
    unit = report["cost_unit"]
    pct = lambda v: "-" if v is None else f"{100 * v:.1f}%"  # noqa: E731
    num = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    cost = lambda v: format_cost(v, unit)  # noqa: E731
    lines = [f"# {title}", "",
             f"{report['n_test']} test items, {report['n_calibration']} calibration items; "
             f"cost model `{report['cost_model']}` ({unit} per item: "
             f"{report.get('cost_definition', 'see corea_jax/cascade/costs.py')}); LLM answers: "
             f"`{report['llm_on']}`; wall time of this run {report['runtime_s']:.0f} s "
             f"(model time in the records {report['recorded_model_seconds']:.0f} s).", "",
             "| System | tau | pass@1 [95% CI] | accuracy drop vs LLM [95% CI] | cost / item [95% CI] "
             "| cost saving vs LLM [95% CI] | LLM usage | ECE | AUROC | Brier |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, m in report["systems"].items():
        if m is None:
            lines.append(f"| {name} | - | not available | | | | | | | |")
            continue
        ci = report["intervals"].get(name)
        # A cascade without a tau deferred everything (tau = +inf: nothing was certified).
        tau_text = num(m["tau"]) if m["tau"] is not None else ("inf (defers all)" if name in CASCADES else "-")
        drop, saving = report["accuracy_drop"].get(name), report["cost_saving"].get(name)
        lines.append(
            f"| {name} | {tau_text} | {pct(m['pass_at_1'])}{_interval(ci, 'pass_at_1', pct)} "
            f"| {pct(drop)}{_interval(ci, 'accuracy_drop', pct)} "
            f"| {cost(m['avg_cost'])}{_interval(ci, 'avg_cost', cost)} "
            f"| {pct(saving)}{_interval(ci, 'cost_saving', pct)} | {pct(m['llm_usage'])} "
            f"| {num(m['ece'])} | {num(m['auroc'])} | {num(m['brier'])} |")
    lines += ["", "ECE / AUROC / Brier: the system's confidence against the SLM's correctness on test "
              "items with a parsed confidence (SLM row: verbal).", "",
              "## Parse rates and item counts", "",
              "| model | split | items | failed | answer parsed | verbal confidence parsed "
              "| answer-token probabilities | mean generated tokens |", "|---|---|---|---|---|---|---|---|"]
    for r in report["parse_rates"]:
        tokens = r["mean_generated_tokens"]
        lines.append(f"| {r['model']} | {r['split']} | {r['items']} | {r['failed']} | {pct(r['answer_parsed'])} "
                     f"| {pct(r['verbal_parsed'])} | {pct(r['token_probs'])} "
                     f"| {'-' if tokens is None else f'{tokens:.0f}'} |")
    excluded = report.get("excluded_items") or []
    if excluded:
        shown = MAX_EXCLUDED_SHOWN
        lines += ["", "## Items left out (no answer to score)", "", "| item | split | reason |", "|---|---|---|"]
        lines += [f"| {e['id']} | {e['split']} | {e['reason'].replace('|', '/')} |" for e in excluded[:shown]]
        if len(excluded) > shown:
            lines.append(f"| ... | | {len(excluded) - shown} more in report.json |")
    lines += ["", "## Notes", ""] + [f"- {n}" for n in report["notes"]]
    lines += ["", "![accuracy-cost frontier](frontier.png)", "",
              "![reliability of the SLM's verbal confidence](reliability_slm_verbal.png)", ""]
    return "\n".join(lines)


def write_report(config, workdir: str | os.PathLike, records: Sequence[dict], calibration_items,
                 test_items, cost_model: CostModel, *, started: float | None = None,
                 generation_s: float | None = None) -> dict:
    """Writes report.json, report.md, frontier.png and reliability_slm_verbal.png; returns the
    report. Items restrict the splits to the config's items (and fix their order)."""
    workdir = Path(workdir)
    report, plot = compute_report(config, records, cost_model,
                                  [i.id for i in calibration_items], [i.id for i in test_items])
    report["runtime_s"] = time.perf_counter() - started if started is not None else 0.0
    report["slm"], report["llm"] = config.slm.name, config.llm.name
    _write_atomic(workdir / "report.json", json.dumps(report, indent=2, allow_nan=False) + "\n")
    _write_atomic(workdir / "report.md", render_markdown(
        report, f"Cascade: {config.slm.name} -> {config.llm.name}"))
    plot_frontier(plot, workdir / "frontier.png", report["cost_unit"])
    test = plot["test"]
    verbal = test.confidence["verbal"]
    have = ~np.isnan(verbal)
    if have.any():
        calibration.reliability_diagram(verbal[have], test.slm_correct[have],
                                    workdir / "reliability_slm_verbal.png",
                                    title=f"SLM verbal confidence on test ({int(have.sum())} of {test.n} parsed)")
    return report
