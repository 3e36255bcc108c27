"""The server's live view of its own decisions: feedback labels, the monitor's numbers, drift
tests and the automatic re-fit of tau. Every number comes from the pure functions of
`serving.monitor` and `serving.drift`; this class only holds their inputs and acts on results.

  observe(line)          a records.jsonl line just written (one per request)
  expect(request_id)     a corea / corea-slm / corea-llm response id that may get feedback
  label(id, correct)     POST /v1/corea/feedback: "recorded" or "unchanged"; KeyError for an id
                         this server did not answer (or has forgotten), ValueError for a label
                         that contradicts the one recorded; appended to DIR/feedback.jsonl
  snapshot()             `monitor.snapshot` over the held lines and labels, plus drift and the fit
  publish(metrics)       the snapshot as Prometheus gauges (on every /metrics scrape)

Automatic re-fit (config.refit.every_labels > 0): after every that many new labels, tau is fitted
by config.refit.rule on the latest `monitor.window` labelled decisions (the labels say whether the
SLM's answer was right; the risk rule's guarantee is then: with probability >= 1 - delta, at most
epsilon of the requests are kept with a wrong SLM answer, which bounds the cascade's pass@1 drop
below the LLM's by epsilon too). Each fit is versioned (`refit.write_threshold`); a risk fit that
certifies no tau is the explicit defer-everything state with its reason.

Drift (`serving.drift`): the SLM's confidences and the labelled calibration losses, each tested
at alpha / 2 against the decisions the current tau was fitted on (before any fit: the first
`drift.reference` decisions). An alarm is logged once and shown (/health, /metrics), then
config.drift.policy applies: keep; defer (everything, until another tau is loaded); refit (the
next fit uses post-alarm decisions only, and fits as soon as it has refit.min_items of them).
"""

from __future__ import annotations

import collections
import logging
import math
import time
from pathlib import Path
from typing import Callable

from corea_jax.cascade import thresholds
from corea_jax.serving import drift, monitor, refit
from corea_jax.serving.log import RequestLog, read_lines

FEEDBACK_FILE = "feedback.jsonl"
STREAMS = ("confidence", "loss")
SNAPSHOT_TTL_S = 1.0  # scrapes within this reuse the last snapshot
HISTORY_SHOWN = 20  # fits /health lists (the dashboard's tau history)
log = logging.getLogger(__name__)


class LiveMonitor:
    def __init__(self, config, workdir: Path, apply_fit: Callable[[dict], None]):
        """config: the validated server config. apply_fit(threshold.json content): makes a fitted
        or drift-forced tau the service's (`ChatService.apply_threshold`)."""
        self.config, self.workdir, self.apply_fit = config, Path(workdir), apply_fit
        keep = config.monitor.keep
        self.lines: collections.deque[dict] = collections.deque(maxlen=keep)
        self.seqs: collections.deque[int] = collections.deque(maxlen=keep)  # each line's arrival number
        # ids feedback may name -> their log line (None until written: a shadowed request's line
        # comes when the shadow call ends)
        self.known: collections.OrderedDict[str, dict | None] = collections.OrderedDict()
        self.labels: dict[str, bool] = {}
        self.feedback_log = RequestLog(self.workdir / FEEDBACK_FILE)
        self.labels_since_fit = 0
        self.fit_error: str | None = None  # why the last automatic fit did not happen
        self.post_alarm_from: int | None = None  # drift policy "refit": fit on lines after this arrival number
        self._seq = 0
        self._snapshot: tuple[float, dict] | None = None
        self._warmup = {stream: [] for stream in STREAMS}
        self.tests: dict[str, drift.DriftState | None] = {stream: None for stream in STREAMS}
        self.alarm_logged = False
        self.history: collections.deque[dict] = collections.deque(maxlen=HISTORY_SHOWN)  # the latest fits
        self._load()

    # ------------------------------------------------------------------ inputs

    def _load(self) -> None:
        """The tail of the log and the feedback so far (a restarted server keeps its window)."""
        for line in read_lines(self.workdir / "records.jsonl")[-self.lines.maxlen:]:
            self._hold(line)
        for line in read_lines(self.workdir / FEEDBACK_FILE):
            if line.get("id") in self.known:
                self.labels[line["id"]] = bool(line["correct"])
        self.reload_history()

    def reload_history(self) -> None:
        """The latest fits from DIR/threshold_history.jsonl (at start, and after a SIGHUP reload:
        `launch.refit` appends there too)."""
        self.history.clear()
        self.history.extend(read_lines(self.workdir / refit.HISTORY_FILE)[-HISTORY_SHOWN:])

    def _remember(self, request_id: str | None, line: dict | None = None) -> None:
        if request_id is None:
            return
        self.known[request_id] = line if line is not None else self.known.get(request_id)
        self.known.move_to_end(request_id)
        while len(self.known) > self.lines.maxlen:
            old, _ = self.known.popitem(last=False)
            self.labels.pop(old, None)

    def _hold(self, line: dict) -> None:
        self._seq += 1
        self.lines.append(line)
        self.seqs.append(self._seq)
        self._remember(line.get("request_id"), line)

    def expect(self, request_id: str) -> None:
        """A response id that feedback may name (before its log line: a shadowed request's line is
        written when the shadow call ends)."""
        self._remember(request_id)

    def observe(self, line: dict) -> None:
        """One records.jsonl line, as written."""
        self._hold(line)
        self._snapshot = None
        answered, _ = monitor.decisions([line])
        if answered:
            self._test("confidence", monitor.slm_confidence(line))
            self._test_loss(line)

    def label(self, request_id: str, correct: bool, client: str = "") -> str:
        """Records feedback on a response; see the module docstring."""
        if request_id not in self.known:
            raise KeyError(request_id)
        old = self.labels.get(request_id)
        if old is not None:
            if old != correct:
                raise ValueError(f"correct: response {request_id} was already labelled {str(old).lower()}")
            return "unchanged"
        self.labels[request_id] = correct
        self.feedback_log.append(dict(id=request_id, correct=correct, client=client, time=time.time()))
        self._snapshot = None
        line = self.known[request_id]
        if line is not None:
            self._test_loss(line)
        self.labels_since_fit += 1
        self._maybe_refit()
        return "recorded"

    # ------------------------------------------------------------------ drift

    def _test(self, stream: str, score: float | None) -> None:
        if score is None or not math.isfinite(score):
            return
        state = self.tests[stream]
        if state is None:  # warming up: the first decisions are the reference
            self._warmup[stream].append(score)
            if len(self._warmup[stream]) >= self.config.drift.reference:
                self._start_test(stream, self._warmup[stream])
            return
        was = drift.alarm(state)
        self.tests[stream] = drift.update(state, score)
        if drift.alarm(self.tests[stream]) and not was:
            self._on_alarm(stream)

    def _test_loss(self, line: dict) -> None:
        label = monitor.slm_label(line, self.labels)
        confidence = monitor.slm_confidence(line)
        if label is not None and confidence is not None:
            self._test("loss", drift.calibration_loss(confidence, label[0]))

    def _start_test(self, stream: str, reference: list[float]) -> None:
        self.tests[stream] = drift.reset(reference, alpha=self.config.drift.alpha / len(STREAMS),
                                         seed=self.config.seed + STREAMS.index(stream))
        self._warmup[stream] = []

    def restart_drift(self, decisions: list[monitor.LabelledDecision] | None) -> None:
        """The drift tests restart against `decisions` (those a new tau was fitted on); None: from
        the next `drift.reference` decisions."""
        self.alarm_logged = False
        for stream in STREAMS:
            self.tests[stream], self._warmup[stream] = None, []
        if decisions:
            confidences = [d.confidence for d in decisions if d.confidence is not None]
            losses = [drift.calibration_loss(d.confidence, d.slm_correct) for d in decisions
                      if d.confidence is not None]
            for stream, reference in (("confidence", confidences), ("loss", losses)):
                if reference:
                    self._start_test(stream, reference)

    def drift_alarm(self) -> bool:
        return any(state is not None and drift.alarm(state) for state in self.tests.values())

    def _on_alarm(self, stream: str) -> None:
        state = self.tests[stream]
        policy = self.config.drift.policy
        if not self.alarm_logged:
            log.warning("drift alarm on the %s stream after %d decisions (log10 martingale %.2f >= %.2f); "
                        "policy %s", stream, state.steps, drift.statistic(state), drift.alarm_level(state), policy)
            self.alarm_logged = True
        if policy == "defer":
            reason = (f"drift alarm on the {stream} stream: the traffic no longer looks like the decisions "
                      "tau was fitted on; every request goes to the LLM until a new tau is loaded")
            self._write_fit(refit.threshold_result(
                math.inf, "drift", items=0, confidence_source=self.config.confidence_source, epsilon=None,
                delta=None, guarantee=None, evidence={"stream": stream, "steps": state.steps},
                fitted_by="serving.live (drift policy defer)", reason=reason), None)
        elif policy == "refit" and self.post_alarm_from is None:
            self.post_alarm_from = self._seq
            self.labels_since_fit = 0

    # ------------------------------------------------------------------ automatic re-fit

    def _maybe_refit(self) -> None:
        every = self.config.refit.every_labels
        if self.post_alarm_from is not None:  # policy refit: as soon as post-alarm labels suffice
            due = self.labels_since_fit >= min(every or self.config.refit.min_items, self.config.refit.min_items)
        else:
            due = every > 0 and self.labels_since_fit >= every
        if due:
            self.refit_now()

    def refit_now(self) -> dict | None:
        """Fits tau on the labelled window (post-alarm lines only after a drift alarm under the
        refit policy); returns the applied threshold, or None when there are too few labels."""
        cfg = self.config.refit
        lines = list(self.lines)
        if self.post_alarm_from is not None:
            lines = [x for x, seq in zip(lines, self.seqs) if seq > self.post_alarm_from]
        picked = monitor.labelled_window(lines, self.labels, self.config.monitor.window)
        used = picked["decisions"]
        if len(used) < cfg.min_items:
            self.fit_error = (f"{len(used)} labelled decisions{' since the drift alarm' if self.post_alarm_from else ''}, "
                              f"fewer than refit.min_items = {cfg.min_items}")
            return None
        confidence = [d.confidence for d in used]
        correct = [d.slm_correct for d in used]
        evidence = dict(picked["sources"], slm_accuracy=sum(correct) / len(correct),
                        post_drift_alarm=self.post_alarm_from is not None)
        if cfg.rule == "risk":
            tau = thresholds.risk_controlled_threshold(confidence, correct, [True] * len(used),
                                                       epsilon=cfg.epsilon, delta=cfg.delta)
            guarantee = (f"with probability >= {1 - cfg.delta:g}, at most {cfg.epsilon:g} of the requests are "
                         f"kept with a wrong SLM answer (so the cascade's pass@1 is at most {cfg.epsilon:g} "
                         f"below the LLM's); labels: {picked['sources']['feedback']} feedback, "
                         f"{picked['sources']['agreement']} SLM-LLM agreement")
        else:
            tau, guarantee = thresholds.usage_threshold(confidence, cfg.target_usage), None
        evidence["llm_share_at_tau"] = float(1 - thresholds.keeps(confidence, tau).mean())
        result = refit.threshold_result(
            tau, cfg.rule, items=len(used), confidence_source=self.config.confidence_source,
            epsilon=cfg.epsilon if cfg.rule == "risk" else None, delta=cfg.delta if cfg.rule == "risk" else None,
            guarantee=guarantee, evidence=evidence, fitted_by="serving.live (automatic re-fit)")
        self.post_alarm_from = None
        return self._write_fit(result, used)

    def _write_fit(self, result: dict, used: list | None) -> dict:
        written = refit.write_threshold(self.workdir, result)
        self.history.append(written)
        self.labels_since_fit, self.fit_error = 0, None
        self.apply_fit({**written, "tau": thresholds.tau_from_json(written["tau"], "tau",
                                                                   defer_everything=written["defer_everything"])})
        self._snapshot = None
        if result["rule"] != "drift":
            self.restart_drift(used)
        log.info("threshold version %d: tau = %s by %s on %d labelled decisions", written["version"],
                 written["tau"] if written["tau"] is not None else "defer everything", written["rule"],
                 written["items"])
        return written

    # ------------------------------------------------------------------ outputs

    def snapshot(self, tau: float, threshold: dict) -> dict:
        """`monitor.snapshot` of the held lines under the current tau (its fit's epsilon, else
        config.monitor.epsilon), with the drift tests and the re-fit state."""
        now = time.monotonic()
        if self._snapshot is not None and now - self._snapshot[0] < SNAPSHOT_TTL_S:
            return self._snapshot[1]
        epsilon = threshold.get("epsilon") or self.config.monitor.epsilon
        snap = monitor.snapshot(list(self.lines), self.labels, self.config.monitor.window, epsilon,
                                n_bins=self.config.monitor.bins, level=self.config.monitor.level, current_tau=tau)
        snap["drift"] = {stream: (drift.summary(state) if state is not None else
                                  {"warming_up": len(self._warmup[stream]), "reference": self.config.drift.reference})
                         for stream, state in self.tests.items()}
        snap["drift_alarm"] = self.drift_alarm()
        snap["drift_policy"] = self.config.drift.policy
        snap["refit"] = dict(every_labels=self.config.refit.every_labels, labels_since_fit=self.labels_since_fit,
                             fit_error=self.fit_error, waiting_for_post_alarm_labels=self.post_alarm_from is not None)
        self._snapshot = (now, snap)
        return snap

    def close(self) -> None:
        self.feedback_log.close()
