"""The server's Prometheus metrics (one registry per app), read by GET /metrics and the dashboard.

Counters and histograms for Prometheus, plus gauges the dashboard shows as they are: the LLM
share of `corea` requests, the latency percentiles over the last `window` requests, the cost
saved against sending every request to the LLM.
"""

from __future__ import annotations

import collections
import math
import threading

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

CONFIDENCE_BUCKETS = tuple(round(0.1 * k, 1) for k in range(1, 11))
OCCUPANCY_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
QUANTILES = (0.5, 0.95, 0.99)


class ServerMetrics:
    def __init__(self, window: int = 1000):
        self.registry = r = CollectorRegistry()
        self.requests = Counter("corea_requests", "Chat completion requests by model and HTTP status.",
                                ["model", "status"], registry=r)
        self.answers = Counter("corea_answers", "Answered requests by requested model and answering model.",
                               ["model", "answered_by"], registry=r)
        self.deferred = Counter("corea_deferred", "corea requests deferred to the LLM (confidence < tau).",
                                registry=r)
        self.degraded = Counter("corea_degraded", "Deferred requests answered by the SLM because the LLM "
                                "failed.", registry=r)
        self.llm_share = Gauge("corea_llm_share", "Share of corea requests the LLM answered.", registry=r)
        self.tau = Gauge("corea_tau", "The current deferral threshold (+Inf: defer everything).", registry=r)
        self.defer_everything = Gauge("corea_defer_everything", "1 while tau is the defer-everything "
                                      "state (no tau certified), else 0.", registry=r)
        self.threshold_version = Gauge("corea_threshold_version", "The version of the current tau "
                                       "(DIR/threshold_history.jsonl; 0: the config's).", registry=r)
        self.threshold_refused = Counter("corea_threshold_refused", "threshold.json reloads refused "
                                         "(the old tau kept; /health names the reason).", registry=r)
        self.confidence = Histogram("corea_confidence", "The SLM's confidence per answered request.",
                                    buckets=CONFIDENCE_BUCKETS, registry=r)
        self.latency = Histogram("corea_request_latency_seconds", "Request latency.", ["model"],
                                 buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120), registry=r)
        self.latency_window = Gauge("corea_latency_window_seconds", "Latency percentiles over the last "
                                    "requests.", ["quantile"], registry=r)
        self.tokens = Counter("corea_tokens", "Tokens by model (slm, llm) and kind (prompt, completion).",
                              ["model", "kind"], registry=r)
        self.calls = Counter("corea_model_calls", "Model calls by model (slm, llm).", ["model"], registry=r)
        self.cost = Counter("corea_cost", "Cost of the corea requests: cascade = every call made for them "
                            "(SLM, deferred LLM, shadow LLM); llm_only = the same requests sent to the LLM "
                            "alone (its measured cost where it answered, else estimated from the SLM's "
                            "token counts). A request the LLM did not serve as planned (degraded, or "
                            "refused) counts its spend on both sides: no saving.", ["system"], registry=r)
        self.cost_saved = Gauge("corea_cost_saved_fraction", "1 - cascade cost / LLM-only cost.", registry=r)
        self.shadow = Counter("corea_shadow", "Kept requests also sent to the LLM in the background "
                              "(their LLM calls, tokens and cost are counted as such).", registry=r)
        self.engine_failures = Counter("corea_engine_failures", "Engine thread failures (each failed the "
                                       "requests it held; the engine restarted).", ["engine"], registry=r)
        self.overloaded = Counter("corea_overloaded", "Requests refused because a model's admission "
                                  "queue was full.", ["engine"], registry=r)
        self.agree = Counter("corea_agreement", "Audited requests by SLM-LLM agreement.", ["agree"],
                             registry=r)
        self.slots = Gauge("corea_batch_slots", "Decoding slots of each model's engine.", ["engine"],
                           registry=r)
        self.busy = Gauge("corea_batch_busy_slots", "Slots decoding a request now.", ["engine"], registry=r)
        self.queued = Gauge("corea_batch_queued", "Requests waiting for a slot.", ["engine"], registry=r)
        self.occupancy = Histogram("corea_batch_occupancy", "Requests sharing each decode chunk.",
                                   ["engine"], buckets=OCCUPANCY_BUCKETS, registry=r)
        self.cancelled = Counter("corea_cancelled", "Rows freed because their client went away.",
                                 ["engine"], registry=r)
        self.compiled = Gauge("corea_compiled_programs", "Generation programs compiled so far (a new batch "
                              "or prompt shape compiles once).", registry=r)
        self.rate_limited = Counter("corea_rate_limited", "Requests refused with 429.", registry=r)
        # The live view (serving.live), set from its snapshot on every scrape; NaN where a number is
        # undefined (no labels yet, one class only)
        self.feedback = Counter("corea_feedback", "POST /v1/corea/feedback by result (recorded, unchanged, "
                                "unknown_id, conflict, invalid).", ["result"], registry=r)
        self.live_labels = Gauge("corea_live_labels", "Labelled decisions in the live window by label source "
                                 "(feedback, agreement), and decisions in its span without a label (unlabelled).",
                                 ["source"], registry=r)
        self.live_ece = Gauge("corea_live_ece", "ECE of the SLM's confidence over the live window.", registry=r)
        self.live_auroc = Gauge("corea_live_auroc", "AUROC of the SLM's confidence over the live window.",
                                registry=r)
        self.live_bin = Gauge("corea_live_reliability", "The live reliability diagram: per confidence bin "
                              "(its lower edge), the count, mean confidence and accuracy.", ["bin", "value"],
                              registry=r)
        self.live_risk = Gauge("corea_live_kept_error_share", "Share of labelled decisions under the current "
                               "tau kept with a wrong SLM answer (what the risk rule's epsilon bounds).", registry=r)
        self.live_risk_upper = Gauge("corea_live_kept_error_upper", "Upper end of its Clopper-Pearson interval "
                                     "(monitor.level).", registry=r)
        self.live_risk_lower = Gauge("corea_live_kept_error_lower", "Lower end of that interval.", registry=r)
        self.live_risk_labels = Gauge("corea_live_risk_labels", "Labelled decisions under the current tau "
                                      "behind the kept error share.", registry=r)
        self.live_kept_error_rate = Gauge("corea_live_kept_error_rate", "Error rate among the kept labelled "
                                          "decisions under the current tau.", registry=r)
        self.live_epsilon = Gauge("corea_live_epsilon", "The risk the current tau promises (its fit's epsilon, "
                                  "else config.monitor.epsilon).", registry=r)
        self.live_risk_exceeded = Gauge("corea_live_risk_exceeded", "1 when the kept error share's interval lies "
                                        "above epsilon.", registry=r)
        self.live_saved = Gauge("corea_live_saved_fraction", "Measured saving over the live window: 1 - spent / "
                                "the LLM alone on the same requests (kind: measured, lower, upper; modelled: "
                                "the server's own estimate).", ["kind"], registry=r)
        self.live_requests = Gauge("corea_live_window_requests", "corea decisions behind the savings.",
                                   registry=r)
        self.drift_statistic = Gauge("corea_drift_statistic", "log10 of the drift test's martingale per stream "
                                     "(confidence, loss); the alarm is at corea_drift_alarm_level.", ["stream"],
                                     registry=r)
        self.drift_level = Gauge("corea_drift_alarm_level", "log10(1 / (alpha / 2)) per stream.", ["stream"],
                                 registry=r)
        self.drift_alarm = Gauge("corea_drift_alarm", "1 once a drift test alarmed (until tau is re-fitted or "
                                 "reloaded), else 0.", registry=r)
        self.refit_pending = Gauge("corea_refit_labels_since_fit", "New labels since the last fit.", registry=r)
        self._lock = threading.Lock()
        self._latencies: collections.deque[float] = collections.deque(maxlen=window)
        self._corea = [0, 0]  # corea requests answered, of them by the LLM
        self._costs = [0.0, 0.0]  # cascade, llm_only

    def decode_chunk(self, engine: str, busy: int) -> None:
        self.occupancy.labels(engine).observe(busy)

    def request_done(self, model: str, status: int, seconds: float) -> None:
        self.requests.labels(model, str(status)).inc()
        if status != 200:
            return
        self.latency.labels(model).observe(seconds)
        with self._lock:
            self._latencies.append(seconds)
            values = np.asarray(self._latencies)
        for q in QUANTILES:
            self.latency_window.labels(str(q)).set(float(np.quantile(values, q)))

    def answered(self, model: str, answered_by: str, deferred: bool) -> None:
        self.answers.labels(model, answered_by).inc()
        if model != "corea":
            return
        with self._lock:
            self._corea[0] += 1
            self._corea[1] += answered_by == "llm"
            self.llm_share.set(self._corea[1] / self._corea[0])
        if deferred:
            self.deferred.inc()

    def costs(self, cascade: float | None, llm_only: float | None) -> None:
        if cascade is None or llm_only is None or (cascade == 0 and llm_only == 0):
            return
        if not (math.isfinite(cascade) and math.isfinite(llm_only)) or cascade < 0 or llm_only < 0:
            return  # never a counter poisoned for the server's lifetime
        self.cost.labels("cascade").inc(cascade)
        self.cost.labels("llm_only").inc(llm_only)
        with self._lock:
            self._costs[0] += cascade
            self._costs[1] += llm_only
            if self._costs[1] > 0:
                self.cost_saved.set(1.0 - self._costs[0] / self._costs[1])

    def set_tau(self, tau: float, version: int = 0) -> None:
        self.tau.set(tau)  # +Inf in the text format when deferring everything
        self.defer_everything.set(float(tau == float("inf")))
        self.threshold_version.set(version)

    def model_call(self, model: str, prompt_tokens: int, completion_tokens: int) -> None:
        self.calls.labels(model).inc()
        self.tokens.labels(model, "prompt").inc(prompt_tokens)
        self.tokens.labels(model, "completion").inc(completion_tokens)

    def live(self, snap: dict) -> None:
        """The live gauges from `serving.live.LiveMonitor.snapshot`."""
        def num(x):
            return math.nan if x is None else float(x)

        labels = snap["labels"]
        for source in ("feedback", "agreement", "unlabelled"):
            self.live_labels.labels(source).set(labels[source])
        calibration = snap["calibration"]
        self.live_ece.set(num(calibration["ece"]))
        self.live_auroc.set(num(calibration["auroc"]))
        for b in calibration["bins"]:
            edge = f"{b['lower']:.2f}"
            self.live_bin.labels(edge, "count").set(b["count"])
            self.live_bin.labels(edge, "confidence").set(num(b["mean_confidence"]))
            self.live_bin.labels(edge, "accuracy").set(num(b["accuracy"]))
        risk = snap["risk"]
        share = risk["kept_error_share"]
        self.live_risk.set(num(share["value"]))
        lower, upper = share["interval"] if share["interval"] else (None, None)
        self.live_risk_lower.set(num(lower))
        self.live_risk_upper.set(num(upper))
        self.live_risk_labels.set(risk["labels"])
        self.live_kept_error_rate.set(num(risk["kept_error_rate"]["value"]))
        self.live_epsilon.set(num(risk["epsilon"]))
        self.live_risk_exceeded.set(float(risk["versus_epsilon"] == "exceeded"))
        savings = snap["savings"]
        interval = savings.get("saved_fraction_interval") or (None, None)
        for kind, value in (("measured", savings["saved_fraction"]), ("lower", interval[0]),
                            ("upper", interval[1]), ("modelled", savings["saved_fraction_modelled"])):
            self.live_saved.labels(kind).set(num(value))
        self.live_requests.set(savings["requests"])
        for stream, test in snap["drift"].items():
            self.drift_statistic.labels(stream).set(num(test.get("statistic", 0.0)))
            self.drift_level.labels(stream).set(num(test.get("alarm_level")))
        self.drift_alarm.set(float(snap["drift_alarm"]))
        self.refit_pending.set(snap["refit"]["labels_since_fit"])
