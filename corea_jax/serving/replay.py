"""Traffic at a COREA server as an OpenAI client sends it, graded, with each verdict posted back
as feedback and the server's `corea_*` metrics scraped along the way (`launch.replay`).

  items, shift   `serving.traffic` (`plan`): the sources and the chains:SPEC grammar.

Per request (open-loop: request i is due at i / rate seconds, whatever the earlier ones are
doing; `concurrency` worker threads send them, so a slow server shows as queueing delay),
`chat.completions.create(model="corea", messages=[{"role": "user", "content": question}])`
through the `openai` package, retried up to `retries` times on 429 / 503 after the response's
Retry-After (seconds or an HTTP date; else an exponential backoff), each wait capped at
`max_retry_wait_s`. A 200 is graded with `corea_jax.grading.grade(text, gold, task)` and the
verdict posted to `{base_url}/corea/feedback` as {"id": response id, "correct": bool} with the
same bearer key (retried the same way on 429 / 503).

Outputs in `out_dir` (a fresh directory, or one without replay.jsonl):
  replay.jsonl    one line per request, appended whole as it finishes (completion order, a
                  partial file is valid JSONL): index, phase, item_id, source, question, gold,
                  scheduled_s / sent_s (seconds from the start: when due, when a worker took it),
                  latency_s (from the first try to the last answer, waits included), attempts,
                  status (the last HTTP status, None without one), error (None, or the reason),
                  response_id, text, correct (None: not graded), grade_error, corea (the
                  response's `corea` object as sent), feedback ({status, result, error} or None).
  timeline.jsonl  one row every `scrape_every` requests sent and one at the end: requests_sent,
                  requests_done, time (unix s), elapsed_s, status, error, samples
                  ({"name{label=value,...}": value} of every sample whose name starts corea_).
  summary.json    `summarize` of the result lines (`describe` prints it).
"""

from __future__ import annotations

import collections
import dataclasses
import email.utils
import json
import math
import os
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterator

from corea_jax.files import write_atomic
from corea_jax.grading import grade
from corea_jax.serving.log import append_line
from corea_jax.serving.traffic import PHASES, Planned
METRIC_PREFIX = "corea_"


# --- sending -----------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Settings:
    """How to replay. base_url: the OpenAI base URL (…/v1); rate: requests a second (0: as fast
    as `concurrency` allows); timeout_s: one try's limit; retries: further tries on 429 / 503;
    max_retry_wait_s: the longest wait before one; scrape_every: requests between /metrics rows
    (0: only the last); task: the grader's task."""

    base_url: str
    api_key: str = "none"
    rate: float = 2.0
    concurrency: int = 8
    timeout_s: float = 120.0
    retries: int = 3
    max_retry_wait_s: float = 60.0
    scrape_every: int = 100
    model: str = "corea"
    task: str = "gsm8k"

    def __post_init__(self):
        if not re.match(r"https?://", self.base_url or ""):
            raise ValueError(f"base_url: expected an http(s) URL ending in /v1, found {self.base_url!r}")
        checks = (("rate", self.rate >= 0 and math.isfinite(self.rate), ">= 0 requests a second"),
                  ("concurrency", isinstance(self.concurrency, int) and self.concurrency >= 1, "an integer >= 1"),
                  ("timeout_s", self.timeout_s > 0, "> 0 seconds"),
                  ("retries", isinstance(self.retries, int) and self.retries >= 0, "an integer >= 0"),
                  ("max_retry_wait_s", self.max_retry_wait_s >= 0, ">= 0 seconds"),
                  ("scrape_every", isinstance(self.scrape_every, int) and self.scrape_every >= 0, "an integer >= 0"))
        for name, ok, expected in checks:
            if not ok:
                raise ValueError(f"{name}: expected {expected}, found {getattr(self, name)!r}")

    @property
    def feedback_url(self) -> str:
        return f"{self.base_url.rstrip('/')}/corea/feedback"

    @property
    def metrics_url(self) -> str:
        """/metrics at the server's root: the base URL less its trailing /v1."""
        root = self.base_url.rstrip("/")
        return f"{root[:-3] if root.endswith('/v1') else root}/metrics"

    @property
    def headers(self) -> dict:
        return {"Authorization": f"Bearer {self.api_key}"}


class Retryable(Exception):
    """A 429 / 503: `wait_s` is what its Retry-After asked (None: not said)."""

    def __init__(self, status: int, wait_s: float | None, message: str):
        super().__init__(message)
        self.status, self.wait_s = status, wait_s


def retry_after_s(value: str | None) -> float | None:
    """A Retry-After header in seconds (delta-seconds or an HTTP date); None if absent or unreadable."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def with_retries(call: Callable, settings: Settings, sleep: Callable = time.sleep):
    """(call()'s value, tries) with up to `settings.retries` further tries after a Retryable; the
    last Retryable is raised once they are spent (with `.attempts` set)."""
    for attempt in range(settings.retries + 1):
        try:
            return call(), attempt + 1
        except Retryable as err:
            if attempt == settings.retries:
                err.attempts = attempt + 1
                raise
            wait = err.wait_s if err.wait_s is not None else 0.5 * 2 ** attempt
            sleep(min(wait, settings.max_retry_wait_s))


def _chat(client, settings: Settings, question: str):
    import openai

    try:
        return client.chat.completions.create(model=settings.model,
                                              messages=[{"role": "user", "content": question}])
    except openai.APIStatusError as err:
        if err.status_code in (429, 503):
            raise Retryable(err.status_code, retry_after_s(err.response.headers.get("retry-after")),
                            str(err)) from err
        raise


def post_feedback(http, settings: Settings, response_id: str, correct: bool) -> dict:
    """POST {base_url}/corea/feedback {"id", "correct"}: {status, result (the body's "status"),
    error (None, or what went wrong)}; retried on 429 / 503 like a request."""
    import httpx

    def call():
        response = http.post(settings.feedback_url, json={"id": response_id, "correct": bool(correct)},
                             headers=settings.headers, timeout=settings.timeout_s)
        if response.status_code in (429, 503):
            raise Retryable(response.status_code, retry_after_s(response.headers.get("retry-after")),
                            response.text[:200])
        return response

    try:
        response, _ = with_retries(call, settings)
    except Retryable as err:
        return {"status": err.status, "result": None, "error": str(err)}
    except httpx.HTTPError as err:
        return {"status": None, "result": None, "error": f"{type(err).__name__}: {err}"}
    try:
        body = response.json()
    except ValueError:
        body = None
    result = body.get("status") if isinstance(body, dict) else None
    return {"status": response.status_code, "result": result,
            "error": None if response.status_code == 200 else response.text[:300]}


def _error_of(err: Exception) -> tuple[int | None, str]:
    import openai

    if isinstance(err, openai.APIStatusError):
        return err.status_code, str(err)[:300]
    if isinstance(err, openai.APITimeoutError):
        return None, "timeout"
    return None, f"{type(err).__name__}: {err}"[:300]


def _unanswered(planned: Planned) -> dict:
    """A result line before its request has an answer."""
    item = planned.item
    return dict(index=planned.index, phase=planned.phase, item_id=item.id, source=item.source,
                question=item.question, gold=item.gold, attempts=0, status=None, error=None,
                response_id=None, text=None, correct=None, grade_error=None, corea=None, feedback=None)


def send(client, http, planned: Planned, settings: Settings) -> dict:
    """One request, its grade and its feedback: the result line (schema in the module docstring)
    less the times, which `replay` adds."""
    item, line = planned.item, _unanswered(planned)
    try:
        response, line["attempts"] = with_retries(lambda: _chat(client, settings, item.question), settings)
    except Retryable as err:
        line.update(attempts=err.attempts, status=err.status, error=str(err)[:300])
        return line
    except Exception as err:  # noqa: BLE001 - every request ends in one line, whatever failed
        line["attempts"] = 1
        line["status"], line["error"] = _error_of(err)
        return line
    extra = response.model_extra or {}
    line.update(status=200, response_id=response.id, text=response.choices[0].message.content or "",
                corea=extra.get("corea"))
    if item.gold is None:
        return line
    try:
        line["correct"] = grade(line["text"], item.gold, settings.task)
    except ValueError as err:  # an unusable gold: the item's fault, said and not fed back
        line["grade_error"] = str(err)[:300]
        return line
    line["feedback"] = post_feedback(http, settings, response.id, line["correct"])
    return line


# --- outputs -----------------------------------------------------------------------------------

class JsonlAppender:
    """Appends JSON lines to `path` from any thread, each whole (`log.append_line`, unsynced: a
    replay's lines are its own record, not a server's)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._lock = threading.Lock()

    def append(self, row: dict) -> None:
        with self._lock:
            append_line(self.path, row, 0o644, sync=False, allow_nan=True)  # scraped gauges may be NaN

    def close(self) -> None:
        pass


def sample_key(name: str, labels: dict) -> str:
    """'corea_drift_statistic', {'stream': 'confidence'} -> 'corea_drift_statistic{stream=confidence}'."""
    return f"{name}{{{','.join(f'{k}={v}' for k, v in sorted(labels.items()))}}}" if labels else name


def corea_samples(text: str) -> dict[str, float]:
    """Every sample in Prometheus text whose name starts with corea_, flattened by `sample_key`."""
    from prometheus_client.parser import text_string_to_metric_families

    return {sample_key(s.name, s.labels): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples if s.name.startswith(METRIC_PREFIX)}


def scrape(http, settings: Settings) -> dict:
    """GET /metrics: {status, error, samples} (samples empty when it failed)."""
    import httpx

    try:
        response = http.get(settings.metrics_url, headers=settings.headers, timeout=min(settings.timeout_s, 30.0))
    except httpx.HTTPError as err:
        return {"status": None, "error": f"{type(err).__name__}: {err}"[:300], "samples": {}}
    if response.status_code != 200:
        return {"status": response.status_code, "error": response.text[:300], "samples": {}}
    try:
        return {"status": 200, "error": None, "samples": corea_samples(response.text)}
    except ValueError as err:
        return {"status": 200, "error": f"unreadable metrics: {err}"[:300], "samples": {}}


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def _error_key(line: dict) -> str | None:
    if line["status"] == 200:
        return None
    return str(line["status"]) if line["status"] is not None else (line["error"] or "error").split(":")[0]


def summarize(lines: list[dict]) -> dict:
    """Counts and rates over result lines: requests, ok, errors by status (or by kind without
    one), accuracy / LLM share / mean latency overall and per phase (accuracy over graded 200s,
    LLM share over 200s with a `corea` object), feedback outcomes, threshold versions seen."""
    def part(rows):
        answered = [r for r in rows if r["status"] == 200]
        graded = [r["correct"] for r in answered if r["correct"] is not None]
        routed = [r["corea"] for r in answered if isinstance(r.get("corea"), dict)]
        return {"requests": len(rows), "ok": len(answered), "graded": len(graded),
                "accuracy": _mean([float(c) for c in graded]),
                "llm_share": _mean([float(c.get("answered_by") == "llm") for c in routed]),
                "mean_latency_s": _mean([r.get("latency_s") for r in answered])}

    errors = collections.Counter(k for k in map(_error_key, lines) if k is not None)
    feedback = collections.Counter(
        str(f["status"]) + (f":{f['result']}" if f.get("result") else "")
        for f in (r.get("feedback") for r in lines) if f)
    versions = sorted({str(r["corea"]["threshold_version"]) for r in lines
                       if isinstance(r.get("corea"), dict) and r["corea"].get("threshold_version") is not None})
    return {**part(lines), "errors": dict(sorted(errors.items())), "feedback": dict(sorted(feedback.items())),
            "retried": sum(1 for r in lines if r.get("attempts", 0) > 1),
            "threshold_versions": versions,
            "phases": {phase: part([r for r in lines if r["phase"] == phase]) for phase in PHASES
                       if any(r["phase"] == phase for r in lines)}}


def describe(summary: dict) -> str:
    """The summary on one screen."""
    def pct(x):
        return "-" if x is None else f"{100 * x:.1f}%"

    def secs(x):
        return "-" if x is None else f"{x:.3f} s"

    out = [f"requests {summary['requests']}  ok {summary['ok']}  graded {summary['graded']}  "
           f"retried {summary['retried']}  elapsed {secs(summary.get('elapsed_s'))}",
           f"errors   {', '.join(f'{k}: {v}' for k, v in summary['errors'].items()) or 'none'}",
           f"feedback {', '.join(f'{k}: {v}' for k, v in summary['feedback'].items()) or 'none'}",
           f"{'phase':<8}{'requests':>10}{'accuracy':>10}{'LLM share':>11}{'latency':>12}"]
    for name, p in [("all", summary)] + list(summary["phases"].items()):
        out.append(f"{name:<8}{p['requests']:>10}{pct(p['accuracy']):>10}{pct(p['llm_share']):>11}"
                   f"{secs(p['mean_latency_s']):>12}")
    if summary["threshold_versions"]:
        out.append(f"threshold versions seen: {', '.join(summary['threshold_versions'])}")
    return "\n".join(out)


# --- the replay --------------------------------------------------------------------------------

def replay(settings: Settings, planned: Iterator[Planned], out_dir: str | os.PathLike, *,
           clock: Callable[[], float] = time.monotonic, sleep: Callable = time.sleep) -> dict:
    """Sends `planned` requests on the open-loop schedule of `settings.rate`, writes replay.jsonl,
    timeline.jsonl and summary.json in `out_dir` (see the module docstring) and returns the summary.
    Refuses an `out_dir` that already holds a replay.jsonl (a replay is not resumed)."""
    import httpx
    import openai

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if (out / "replay.jsonl").exists():
        raise ValueError(f"out: {out} already holds replay.jsonl; expected a new directory")
    results, timeline = JsonlAppender(out / "replay.jsonl"), JsonlAppender(out / "timeline.jsonl")
    client = openai.OpenAI(base_url=settings.base_url, api_key=settings.api_key, timeout=settings.timeout_s,
                           max_retries=0)
    http = httpx.Client()
    lines, lock = [], threading.Lock()
    start, wall = clock(), time.time()

    def one(p: Planned, due: float) -> None:
        sent = clock()
        try:
            line = send(client, http, p, settings)
        except Exception as err:  # noqa: BLE001 - a bug past send's own handling still leaves its line
            line = {**_unanswered(p), "attempts": 1, "error": f"{type(err).__name__}: {err}"[:300]}
        line.update(scheduled_s=round(due, 4), sent_s=round(sent - start, 4), latency_s=round(clock() - sent, 4))
        results.append(line)
        with lock:
            lines.append(line)

    def scrape_row(sent_so_far: int) -> None:
        with lock:
            done = len(lines)
        timeline.append({"requests_sent": sent_so_far, "requests_done": done, "time": round(time.time(), 3),
                         "elapsed_s": round(clock() - start, 3), **scrape(http, settings)})

    sent = 0
    try:
        with ThreadPoolExecutor(max_workers=settings.concurrency, thread_name_prefix="replay") as pool:
            for p in planned:
                due = sent / settings.rate if settings.rate else 0.0
                wait = start + due - clock()
                if wait > 0:
                    sleep(wait)
                if not settings.rate:  # closed loop: no more in flight than workers
                    while True:
                        with lock:
                            if sent - len(lines) < settings.concurrency:
                                break
                        sleep(0.01)
                pool.submit(one, p, due)
                sent += 1
                if settings.scrape_every and sent % settings.scrape_every == 0:
                    scrape_row(sent)
        scrape_row(sent)
    finally:
        results.close()
        timeline.close()
        http.close()
        client.close()
    summary = {**summarize(sorted(lines, key=lambda r: r["index"])), "elapsed_s": round(clock() - start, 3),
               "started": wall, "base_url": settings.base_url, "rate": settings.rate,
               "concurrency": settings.concurrency}
    write_atomic(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary
