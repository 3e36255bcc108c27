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

    def set_tau(self, tau: float) -> None:
        self.tau.set(tau)  # +Inf in the text format when deferring everything
        self.defer_everything.set(float(tau == float("inf")))

    def model_call(self, model: str, prompt_tokens: int, completion_tokens: int) -> None:
        self.calls.labels(model).inc()
        self.tokens.labels(model, "prompt").inc(prompt_tokens)
        self.tokens.labels(model, "completion").inc(completion_tokens)
