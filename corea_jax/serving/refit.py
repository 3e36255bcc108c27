"""tau re-fitted from a server's live log (DIR/records.jsonl) by one of the cascade's rules, written
with its evidence to DIR/threshold.json, which the server loads at start and on SIGHUP, and
appended with its version to DIR/threshold_history.jsonl (the server's automatic re-fit,
`serving.live`, writes both the same way).

Rules (`cascade.thresholds`):
  usage  the LLM answers `target_usage` of the logged SLM answers (corea and corea-slm requests).
  risk   the risk-controlled tau on the audited corea requests (a `shadow_rate` share drawn at
         random from all of them: kept ones were shadowed by the LLM, deferred ones have both
         answers), agreement with the LLM as the label: with probability >= 1 - delta, the share
         of requests whose kept SLM answer disagrees with the LLM's is at most epsilon.
  paper  COREA's tau = the LLM's pass@1, on records whose LLM answer was graded (`llm.correct`
         true / false, filled in by whoever labels the log; live traffic has no gold).
  fixed  a given tau.
"""

from __future__ import annotations

import datetime
import json
import math
import os
from pathlib import Path

from corea_jax.cascade import tau_from_json, thresholds
from corea_jax.files import write_atomic
from corea_jax.serving.log import append_line, read_lines

RULES = ("usage", "risk", "paper", "fixed")
THRESHOLD_FILE = "threshold.json"  # the tau the server routes by (read at start and on SIGHUP)
MAX_THRESHOLD_BYTES = 1_000_000
HISTORY_FILE = "threshold_history.jsonl"  # every fit, one line each, with its version


def read_threshold(workdir: Path, confidence_source: str | None = None) -> dict | None:
    """DIR/threshold.json (written by `refit`) with "tau" as a float (math.inf: defer
    everything), or None when there is none. ValueError naming the file and the field for a
    file that is not a JSON object with a valid tau, or that was fitted on another confidence
    source than `confidence_source`."""
    path = Path(workdir) / THRESHOLD_FILE
    if not path.exists() and not path.is_symlink():
        return None
    if not path.is_file():  # a directory, a FIFO (a read would block the server), a dangling link
        raise ValueError(f"{path}: expected a regular file, found something else")
    if path.stat().st_size > MAX_THRESHOLD_BYTES:
        raise ValueError(f"{path}: {path.stat().st_size} bytes, more than a threshold file's "
                         f"{MAX_THRESHOLD_BYTES}")

    def finite(text: str) -> float:
        value = float(text)
        if not math.isfinite(value):
            raise ValueError(f"{path}: the number {text} is not finite (defer everything is written "
                             "\"tau\": null, \"defer_everything\": true)")
        return value

    def constant(name: str):
        raise ValueError(f"{path}: {name} is not JSON (defer everything is written \"tau\": null, "
                         "\"defer_everything\": true)")

    try:
        fitted = json.loads(path.read_text(encoding="utf-8"), parse_float=finite, parse_constant=constant)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(fitted, dict) or "tau" not in fitted:
        raise ValueError(f"{path}: expected a JSON object with a tau field (as launch.refit writes), "
                         f"found {type(fitted).__name__} {str(fitted)[:60]}")
    defer = fitted.get("defer_everything", False)
    if not isinstance(defer, bool):
        raise ValueError(f"{path}: defer_everything: expected true or false, found {defer!r}")
    tau = tau_from_json(fitted["tau"], f"{path}: tau", defer_everything=defer)
    fitted_source = fitted.get("confidence_source")
    if confidence_source is not None and fitted_source not in (None, confidence_source):
        raise ValueError(f"{path}: confidence_source: tau was fitted on {fitted_source!r}, but this server "
                         f"defers on {confidence_source!r}; refit with --confidence_source={confidence_source}")
    return {**fitted, "tau": tau}


def _slm_confidence(record: dict, source: str) -> float | None:
    return record["confidence"].get(source) if record.get("model") == "slm" else None


def server_source(lines: list[dict]) -> str | None:
    """The confidence source the server deferred on, as its log lines state it (None: an older
    log that does not say)."""
    sources = {line["confidence_source"] for line in lines if line.get("confidence_source")}
    if len(sources) > 1:
        raise ValueError(f"confidence_source: the log holds lines deferred on {sorted(sources)}; "
                         "refit on a log of one server configuration")
    return next(iter(sources), None)


def refit(workdir: str | os.PathLike, rule: str, *, confidence_source: str | None = None,
          target_usage: float = 0.3, epsilon: float = 0.05, delta: float = 0.1, tau: float = 0.5,
          min_items: int = 20) -> dict:
    """Fits tau from DIR/records.jsonl by `rule`, writes DIR/threshold.json and returns it.

    confidence_source: the confidence to fit on; None takes the server's (from its log). One
    other than the server's is refused, naming both: a tau fitted on another scale means nothing.
    """
    if rule not in RULES:
        raise ValueError(f"rule: expected one of {RULES}, found {rule!r}")
    workdir = Path(workdir)
    lines = read_lines(workdir / "records.jsonl")
    served = server_source(lines)
    if confidence_source is None:
        confidence_source = served or "verbal"
    elif served is not None and confidence_source != served:
        raise ValueError(f"confidence_source: the server defers on {served!r} (its log says so), not "
                         f"{confidence_source!r}; refit with --confidence_source={served} or leave it unset")
    records = [r for r in lines if not r.get("failed")]
    answered = [r for r in records if r.get("model") == "slm" and r.get("served_model") in ("corea", "corea-slm")]
    evidence: dict = {"records": len(records)}
    guarantee = None
    if rule == "fixed":
        fitted, used = thresholds.fixed_threshold(tau), []
    elif rule == "usage":
        used = answered
        _enough(used, min_items, "SLM answers (corea and corea-slm requests)")
        fitted = thresholds.usage_threshold([_slm_confidence(r, confidence_source) for r in used], target_usage)
        evidence["target_usage"] = target_usage
    elif rule == "risk":
        used = [r for r in answered if r.get("audit") and r.get("agree") is not None]
        _enough(used, min_items, "audited corea requests with both answers (raise shadow_rate)")
        agree = [bool(r["agree"]) for r in used]
        fitted = thresholds.risk_controlled_threshold(
            [_slm_confidence(r, confidence_source) for r in used], agree, [True] * len(used),
            epsilon=epsilon, delta=delta)
        evidence["agreement"] = sum(agree) / len(agree)
        guarantee = (f"with probability >= {1 - delta:g}, at most {epsilon:g} of the requests are kept by "
                     "the SLM with an answer the LLM disagrees with (labels: SLM-LLM agreement on "
                     f"{len(used)} audited requests)")
    else:
        used = [r for r in records if r.get("llm") and r["llm"].get("correct") is not None]
        _enough(used, min_items, "records with a graded LLM answer (llm.correct true / false)")
        fitted = thresholds.paper_threshold([bool(r["llm"]["correct"]) for r in used])
    confidences = [_slm_confidence(r, confidence_source) for r in answered]
    if confidences:
        evidence["llm_share_at_tau"] = float(1 - thresholds.keeps(confidences, fitted).mean())
    result = threshold_result(fitted, rule, items=len(used), confidence_source=confidence_source,
                              epsilon=epsilon if rule == "risk" else None, delta=delta if rule == "risk" else None,
                              guarantee=guarantee, evidence=evidence, fitted_by="launch.refit")
    return write_threshold(workdir, result)


def threshold_result(fitted: float, rule: str, *, items: int, confidence_source: str, epsilon: float | None,
                     delta: float | None, guarantee: str | None, evidence: dict, fitted_by: str,
                     reason: str | None = None) -> dict:
    """threshold.json's content for a tau fitted by `rule` on `items` labelled requests
    (math.inf: defer everything, with its reason)."""
    result = dict(tau=thresholds.tau_to_json(fitted), defer_everything=fitted == math.inf, rule=rule,
                  items=items, confidence_source=confidence_source, epsilon=epsilon, delta=delta,
                  guarantee=guarantee, evidence=evidence, fitted_by=fitted_by,
                  fitted_at=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
    if fitted == math.inf:
        result["reason"] = reason or ("no tau is certified on this log: every request goes to the LLM"
                                      if rule == "risk" else "deferring everything is the closest to the target")
    return result


def last_version(workdir: str | os.PathLike) -> int:
    """The version of the latest fit in DIR/threshold_history.jsonl (0: none yet)."""
    lines = read_lines(Path(workdir) / HISTORY_FILE)
    return max((int(line.get("version", 0)) for line in lines), default=0)


def write_threshold(workdir: str | os.PathLike, result: dict) -> dict:
    """Gives `result` the next version, appends it to DIR/threshold_history.jsonl and writes it as
    DIR/threshold.json (atomically: a server reading it never sees half); returns it."""
    workdir = Path(workdir)
    result = dict(result, version=last_version(workdir) + 1)
    append_line(workdir / HISTORY_FILE, result, 0o644)
    write_atomic(workdir / THRESHOLD_FILE, json.dumps(result, indent=2, allow_nan=False) + "\n")
    return result


def _enough(used: list, min_items: int, what: str) -> None:
    if len(used) < min_items:
        raise ValueError(f"min_items: {len(used)} {what} in the log, fewer than the {min_items} needed")


def describe(result: dict) -> str:
    tau = result["tau"]
    text = f"tau = {tau:.4f}" if tau is not None else "tau = none (defer everything)"
    text += f" by the {result['rule']} rule on {result['items']} logged requests"
    if "llm_share_at_tau" in result["evidence"]:
        text += f"; LLM share on the log at this tau: {result['evidence']['llm_share_at_tau']:.1%}"
    if result["guarantee"]:
        text += f"\nguarantee: {result['guarantee']}"
    return text
