"""What the server shows about its own decisions, as pure functions over DIR/records.jsonl lines.

Input: `records`, the server's log lines in log order (`serving.log`: one line per request,
`cascade.records` fields plus the decision), and `labels`, {request_id: correct}: whether the
answer a response returned was right (feedback, e.g. a gold answer posted by the replayer).
Only `corea` requests that ended in an answer are decisions; failed SLM calls and requests that
ended in an error, a shutdown or a cancelled client are left out (and counted).

The label of a decision is whether the SLM's answer was right (what its confidence predicts):
  feedback   the response's label, where it says how the SLM did: the SLM answered (kept, or
             deferred and degraded), or the LLM answered and the two agreed (the SLM shares the
             LLM's verdict) or disagreed while the LLM was right (the SLM was wrong);
  agreement  else SLM-LLM agreement, on an audited request (a `shadow_rate` share drawn at random
             from all corea requests: kept ones shadowed by the LLM, deferred ones with both
             answers), the label `refit`'s risk rule fits on; also a deferred request whose LLM
             answer was wrong and disagreed with the SLM's (feedback cannot say how the SLM did).
Unaudited requests without feedback are not labelled: audited ones are a uniform draw from the
traffic, so the window's rates are the traffic's, not the deferred requests' (which all have
both answers).

`snapshot` gathers every number /metrics and the dashboard publish, as one JSON-able dict (no
NaN: undefined numbers are None, with the count behind each).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Mapping, Sequence

import numpy as np
from scipy import special

from corea_jax import calibration
from corea_jax.cascade import CostModel, tau_from_json, thresholds

UNANSWERED_FINISH = ("error", "shutdown", "cancelled")  # requests that ended without an answer
LABEL_SOURCES = ("feedback", "agreement")


@dataclasses.dataclass(frozen=True)
class LabelledDecision:
    """One corea decision with the SLM's label.

    confidence: the SLM's confidence in [0, 1] on the server's confidence source (None: missing,
    which defers). kept: the SLM's answer was returned (confidence >= the request's tau).
    slm_correct: the label. source: one of LABEL_SOURCES. tau: the request's tau (None: defer
    everything)."""

    request_id: str
    confidence: float | None
    kept: bool
    slm_correct: bool
    source: str
    tau: float | None


def slm_confidence(record: dict) -> float | None:
    """The SLM's confidence on the source the server deferred on (`confidence_source` of the
    line), in [0, 1]; None when missing."""
    value = (record.get("confidence") or {}).get(record.get("confidence_source") or "verbal")
    return None if value is None or not math.isfinite(value) else float(value)


def decisions(records: Sequence[dict]) -> tuple[list[dict], dict[str, int]]:
    """(the corea requests that ended in an answer, in log order; {reason: count} of the corea
    lines left out: "failed" (the SLM call failed) or a finish_reason of UNANSWERED_FINISH)."""
    kept_lines, left_out = [], {}
    for record in records:
        if record.get("served_model") != "corea":
            continue
        if record.get("failed"):
            reason = "failed"
        elif record.get("finish_reason") in UNANSWERED_FINISH:
            reason = record["finish_reason"]
        elif record.get("deferred") is None:  # no decision was made (older lines)
            reason = "undecided"
        else:
            reason = None
        if reason is None:
            kept_lines.append(record)
        else:
            left_out[str(reason)] = left_out.get(str(reason), 0) + 1
    return kept_lines, left_out


def slm_label(record: dict, labels: Mapping[str, bool]) -> tuple[bool, str] | None:
    """(was the SLM's answer right, the label's source) for one decision, by the rules in the
    module docstring; None when the decision has no label."""
    feedback = labels.get(record.get("request_id"))
    agree = record.get("agree")
    if feedback is not None:
        feedback = bool(feedback)
        if record.get("answered_by") == "slm":
            return feedback, "feedback"
        if agree is None:
            return None
        if agree:  # the LLM answered, the SLM said the same: the LLM's verdict is the SLM's
            return feedback, "feedback"
        return False, "feedback" if feedback else "agreement"
    if record.get("audit") and agree is not None:
        return bool(agree), "agreement"
    return None


def labelled_window(records: Sequence[dict], labels: Mapping[str, bool], window: int) -> dict:
    """The last `window` labelled decisions of `records` (log order).

    Returns {"decisions": [LabelledDecision] (oldest first), "sources": {source: count},
    "unlabelled": decisions without a label in the span the window covers, "left_out":
    `decisions`' counts}."""
    if int(window) != window or window < 1:
        raise ValueError(f"window: expected a positive whole number of labelled decisions, found {window!r}")
    answered, left_out = decisions(records)
    picked, unlabelled = [], 0
    for record in reversed(answered):
        if len(picked) == window:
            break
        label = slm_label(record, labels)
        if label is None:
            unlabelled += 1
            continue
        picked.append(LabelledDecision(
            request_id=record.get("request_id"), confidence=slm_confidence(record),
            kept=not record["deferred"], slm_correct=label[0], source=label[1], tau=record.get("tau")))
    picked.reverse()
    sources = {source: sum(d.source == source for d in picked) for source in LABEL_SOURCES}
    return {"decisions": picked, "sources": sources, "unlabelled": unlabelled, "left_out": left_out}


def _number(value: float) -> float | None:
    """A float for JSON: None for NaN or an infinity."""
    value = float(value)
    return value if math.isfinite(value) else None


def calibration_summary(labelled: Sequence[LabelledDecision], n_bins: int = 10) -> dict:
    """The reliability diagram, ECE and AUROC of the SLM's confidence against the labels
    (`corea_jax.calibration`: equal-width bins, ECE weighted by bin frequency, AUROC the
    Mann-Whitney statistic with ties counting one half).

    Returns {"labels": decisions with a confidence, "missing_confidence": those without,
    "bins": [{"lower", "upper", "count", "mean_confidence", "accuracy"}] (None in empty bins),
    "ece", "auroc"} (probabilities in [0, 1]; None without labels, AUROC None with one class)."""
    scored = [d for d in labelled if d.confidence is not None]
    summary: dict = {"labels": len(scored), "missing_confidence": len(labelled) - len(scored),
                     "bins": [], "ece": None, "auroc": None}
    if not scored:
        return summary
    confidence = np.array([d.confidence for d in scored])
    correct = np.array([d.slm_correct for d in scored])
    bins = calibration.calibration_bins(confidence, correct, n_bins)
    summary["bins"] = [dict(lower=float(bins.edges[b]), upper=float(bins.edges[b + 1]), count=int(bins.count[b]),
                            mean_confidence=_number(bins.mean_confidence[b]), accuracy=_number(bins.accuracy[b]))
                       for b in range(n_bins)]
    summary["ece"] = calibration.ece(confidence, correct, n_bins)
    summary["auroc"] = _number(calibration.auroc(confidence, correct))
    return summary


def binomial_interval(successes: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Clopper-Pearson's exact two-sided `level` interval on a Bernoulli probability from
    `successes` of n draws ((0, 1) for n = 0): each side the one-sided bound at (1 - level) / 2
    (`cascade.thresholds.binomial_upper_bound`; the lower bound by symmetry, 1 - upper(n - k))."""
    if not 0 < level < 1:
        raise ValueError(f"level: expected a number in (0, 1), found {level!r}")
    tail = (1 - level) / 2
    upper = float(thresholds.binomial_upper_bound(successes, n, tail))
    lower = 1.0 - float(thresholds.binomial_upper_bound(n - successes, n, tail))
    return lower, upper


def risk_summary(labelled: Sequence[LabelledDecision], epsilon: float | None, level: float = 0.95) -> dict:
    """The observed risk among kept requests, against the epsilon the current tau promises.

    kept_error_share: the share of the labelled decisions that were kept with a wrong (feedback)
    or disagreeing (agreement) SLM answer: the quantity `refit`'s risk rule bounds by epsilon
    (P(kept and the SLM disagrees), over all requests). With gold feedback it bounds the cascade's
    pass@1 drop below the LLM's from above. kept_error_rate: the same errors among the kept
    requests only (P(wrong | kept)), for the dashboard. Each with its Clopper-Pearson `level`
    interval and the counts behind it. versus_epsilon: "exceeded" when the interval lies above
    epsilon, "within" when it lies at or below it, else "undecided" (None without epsilon or
    labels)."""
    n = len(labelled)
    kept = sum(d.kept for d in labelled)
    kept_wrong = sum(d.kept and not d.slm_correct for d in labelled)
    share = dict(value=kept_wrong / n if n else None, interval=list(binomial_interval(kept_wrong, n, level)))
    rate = dict(value=kept_wrong / kept if kept else None, interval=list(binomial_interval(kept_wrong, kept, level)))
    verdict = None
    if epsilon is not None and n:
        lower, upper = share["interval"]
        verdict = "exceeded" if lower > epsilon else "within" if upper <= epsilon else "undecided"
    return dict(labels=n, kept=kept, kept_wrong=kept_wrong, kept_error_share=share, kept_error_rate=rate,
                level=level, epsilon=epsilon, versus_epsilon=verdict)


def _call_amounts(record: dict | None) -> tuple[float, int] | None:
    """(cost, prompt + generated tokens) of one model call's record; None when it did not answer."""
    if not record or record.get("failed"):
        return None
    return float(record["cost"]), int(record["prompt_tokens"]) + int(record["generated_tokens"])


def savings_summary(answered: Sequence[dict], level: float = 0.95) -> dict:
    """Realised savings of corea decisions (`decisions`' lines): what the cascade spent against
    what the LLM alone would have spent on the same requests, in cost (the records' cost model,
    `unit`) and in tokens (prompt + generated).

    spent: every call made, the SLM on all, the LLM on the deferred and shadowed requests.
    llm_alone, by part:
      llm_answered      the LLM's measured cost where it answered (deferred or shadowed);
      kept_unshadowed   estimated as the mean LLM cost (tokens) per request of the shadowed kept
                        requests (a random share of the kept ones: an unbiased estimate), with
                        its standard error; where none was shadowed, the cost model's estimate
                        (`llm_only_cost` of the line: the LLM's cost at the SLM's token counts;
                        tokens: the SLM's), and `estimate` says which;
      not_as_planned    deferred requests the LLM failed (degraded): their spend, no saving
                        claimed (as the server's `corea_cost` counts them).
    saved_fraction = 1 - spent / llm_alone, with a normal `level` interval from the estimate's
    standard error (+-1.96 of them at 0.95); saved_fraction_modelled: the same with the cost
    model's estimate for every kept request the LLM did not answer (the sum of the lines' own `llm_only_cost`, as the server's
    `corea_cost_saved_fraction` counts; None where a line lacks it). Fractions None (and counts
    0) without decisions."""
    units = {r.get("cost_model") for r in answered}
    if len(units) > 1:
        raise ValueError(f"cost_model: the window holds lines costed by {sorted(map(str, units))}; "
                         "savings add one unit only")
    unit = CostModel(next(iter(units))).unit if units and None not in units else None
    parts = {name: dict(requests=0, spent_cost=0.0, spent_tokens=0, llm_alone_cost=0.0, llm_alone_tokens=0)
             for name in ("llm_answered", "kept_unshadowed", "not_as_planned")}
    shadowed_llm = []
    for record in answered:
        slm, llm = _call_amounts(record), _call_amounts(record.get("llm"))
        spent = (slm[0] + (llm[0] if llm else 0.0), slm[1] + (llm[1] if llm else 0))
        if llm:
            name, alone = "llm_answered", llm
            if not record["deferred"]:
                shadowed_llm.append(llm)
        elif record["deferred"]:
            name, alone = "not_as_planned", spent
        else:
            name, alone = "kept_unshadowed", (0.0, 0)  # estimated below
        part = parts[name]
        part["requests"] += 1
        part["spent_cost"] += spent[0]
        part["spent_tokens"] += spent[1]
        part["llm_alone_cost"] += alone[0]
        part["llm_alone_tokens"] += alone[1]
    estimated = parts["kept_unshadowed"]
    standard_error = 0.0
    if estimated["requests"] and shadowed_llm:
        per_request = np.asarray(shadowed_llm, np.float64)  # [shadowed, (cost, tokens)]
        estimated["llm_alone_cost"] = estimated["requests"] * float(per_request[:, 0].mean())
        estimated["llm_alone_tokens"] = estimated["requests"] * float(per_request[:, 1].mean())
        if len(shadowed_llm) > 1:
            standard_error = estimated["requests"] * float(per_request[:, 0].std(ddof=1)) / math.sqrt(len(shadowed_llm))
        estimated["estimate"] = f"mean LLM cost of {len(shadowed_llm)} shadowed kept requests"
    elif estimated["requests"]:
        kept_lines = [r for r in answered if not r["deferred"] and _call_amounts(r.get("llm")) is None]
        estimated["llm_alone_cost"] = float(sum(r.get("llm_only_cost") or 0.0 for r in kept_lines))
        estimated["llm_alone_tokens"] = estimated["spent_tokens"]
        estimated["estimate"] = "cost model (no shadowed kept request in the window)"
    spent_cost = sum(p["spent_cost"] for p in parts.values())
    alone_cost = sum(p["llm_alone_cost"] for p in parts.values())
    spent_tokens = sum(p["spent_tokens"] for p in parts.values())
    alone_tokens = sum(p["llm_alone_tokens"] for p in parts.values())

    modelled = [r.get("llm_only_cost") for r in answered]
    modelled_alone = None if None in modelled else float(sum(modelled))

    def saved(spent: float, alone: float | None) -> float | None:
        return 1.0 - spent / alone if alone is not None and alone > 0 else None

    interval = None
    if alone_cost > 0:
        half_width = float(special.ndtri((1 + level) / 2)) * standard_error
        low_alone, high_alone = alone_cost - half_width, alone_cost + half_width
        interval = [saved(spent_cost, low_alone) if low_alone > 0 else None, saved(spent_cost, high_alone)]
    return dict(requests=len(answered), unit=unit, parts=parts, spent_cost=spent_cost, llm_alone_cost=alone_cost,
                llm_alone_cost_standard_error=standard_error, spent_tokens=spent_tokens,
                llm_alone_tokens=alone_tokens, saved_fraction=saved(spent_cost, alone_cost),
                saved_fraction_interval=interval, saved_tokens_fraction=saved(spent_tokens, alone_tokens),
                saved_fraction_modelled=saved(spent_cost, modelled_alone))


def snapshot(records: Sequence[dict], labels: Mapping[str, bool], window: int, epsilon: float | None, *,
             n_bins: int = 10, level: float = 0.95, current_tau: float | None = None) -> dict:
    """Every number the server publishes about its decisions, over a sliding window.

    records: the log's lines, log order. labels: {request_id: the returned answer was right}.
    window: how many of the latest labelled decisions calibration and risk use; savings use the
    latest `window` decisions, labelled or not. epsilon: the risk the current tau promises
    (None: no promise, e.g. a usage-rule tau). current_tau: when given (math.inf: defer
    everything), risk counts only the window's decisions made under this tau (the guarantee is
    about it); calibration uses them all.

    Returns a JSON-able dict: "window", "decisions" (answered corea decisions in `records`, and
    the lines left out by reason), "labels" (used, by source, unlabelled in the window's span),
    "taus" ({a decision's tau as text, "None" for defer everything: labelled decisions in the
    window made under it}), "calibration" (`calibration_summary`), "risk" (`risk_summary`, with
    "under_current_tau" and that "tau", None for defer everything), "savings" (`savings_summary`
    at `level`).
    """
    picked = labelled_window(records, labels, window)
    labelled = picked["decisions"]
    answered, _ = decisions(records)
    taus: dict[str, int] = {}
    for d in labelled:
        taus[str(d.tau)] = taus.get(str(d.tau), 0) + 1
    under_tau = labelled
    if current_tau is not None:
        under_tau = [d for d in labelled if tau_from_json(d.tau) == current_tau]
    risk = risk_summary(under_tau, epsilon, level)
    risk["under_current_tau"] = current_tau is not None
    risk["tau"] = None if current_tau is None else thresholds.tau_to_json(current_tau)
    return dict(window=window,
                decisions=dict(answered=len(answered), left_out=picked["left_out"]),
                labels=dict(used=len(labelled), **picked["sources"], unlabelled=picked["unlabelled"]),
                taus=taus, calibration=calibration_summary(labelled, n_bins), risk=risk,
                savings=savings_summary(answered[-window:], level))
