"""The OpenAI-compatible backend against local servers on 127.0.0.1 started by the tests."""

import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
import types
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from configs.cascade import tiny
from corea_jax.cascade import evaluate
from corea_jax.cascade import http as http_lib
from corea_jax.cascade import records as records_lib
from corea_jax.cascade.backends import messages_for
from corea_jax.cascade.datasets import Item
from corea_jax.cascade.http import HTTPBackend
from tests.cascade_helpers import SHARED_DATA
from tests.helpers import REPO

ITEMS = [Item(f"t/{k}", f"What is {k} + 1?", str(k + 1), "gsm8k") for k in range(6)]
SECRET = "sk-test-secret-value"


class _Server:
    """A chat-completions server; `behaviour(server, body) -> (status, bytes)` decides each reply,
    or `(status, bytes, options)`: options["headers"] are sent too, with options["trickle_s"]
    the body goes out one byte every trickle_s seconds, and with options["cut_after"] = n the
    connection ends after n bytes of the body (reset, RST, with options["reset"]; else closed).
    `completed` counts bodies sent whole; `dropped` is set when a client went away mid-body."""

    def __init__(self, behaviour):
        self.behaviour, self.requests, self.in_flight, self.max_in_flight = behaviour, [], 0, 0
        self.completed, self.dropped = 0, threading.Event()
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with outer.lock:
                    outer.requests.append((time.monotonic(), body, self.headers.get("Authorization")))
                    outer.in_flight += 1
                    outer.max_in_flight = max(outer.max_in_flight, outer.in_flight)
                try:
                    status, payload, *rest = outer.behaviour(outer, body)
                finally:
                    with outer.lock:
                        outer.in_flight -= 1
                options = rest[0] if rest else {}
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    for key, value in options.get("headers", {}).items():
                        self.send_header(key, value)
                    self.end_headers()
                    if "cut_after" in options:
                        self.wfile.write(payload[:options["cut_after"]])
                        self.wfile.flush()
                        self.close_connection = True
                        if options.get("reset"):  # linger 0: close sends RST, not FIN
                            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                        self.connection.close()
                        return
                    if "trickle_s" in options:
                        for k in range(len(payload)):
                            self.wfile.write(payload[k:k + 1])
                            self.wfile.flush()
                            time.sleep(options["trickle_s"])
                    else:
                        self.wfile.write(payload)
                    with outer.lock:
                        outer.completed += 1
                except (BrokenPipeError, ConnectionResetError):
                    outer.dropped.set()

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def _completion(body, delay=0.0, null_content=False):
    """A correct answer to "What is k + 1?" with usage and token log-probs (to any other
    question: "\\boxed{1}"); with null_content, a message whose content is null."""
    time.sleep(delay)
    question = body["messages"][-1]["content"]
    k = int(question.split("What is ")[1].split(" ")[0]) if "What is " in question else 0
    pieces = ["So ", "the ", "answer ", "is ", "\\boxed{", str(k + 1), "}.", "\nConfidence: 0.8"]
    content = {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
               "choices": [{"index": 0, "finish_reason": "stop",
                            "message": {"role": "assistant",
                                        "content": None if null_content else "".join(pieces)},
                            "logprobs": {"content": [{"token": p, "logprob": -0.1, "bytes": None,
                                                      "top_logprobs": []} for p in pieces]}}],
               "usage": {"prompt_tokens": 40, "completion_tokens": len(pieces), "total_tokens": 48}}
    return 200, json.dumps(content).encode()


@pytest.fixture
def server():
    servers = []

    def start(behaviour):
        servers.append(_Server(behaviour))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


def _backend(url, **kwargs):
    defaults = dict(base_url=url, model="served-llm", timeout_s=2.0, max_retries=2, backoff_s=0.01,
                    batch_size=8, max_concurrency=4)
    return HTTPBackend(**{**defaults, **kwargs})


def test_answers_with_usage_logprobs_and_the_key_kept_secret(server, monkeypatch, tmp_path):
    monkeypatch.setenv("COREA_TEST_KEY", SECRET)
    s = server(lambda srv, body: _completion(body))
    backend = _backend(s.url, api_key_env="COREA_TEST_KEY")
    store = records_lib.RecordStore(tmp_path / "records.jsonl")
    out = records_lib.collect(backend, ITEMS, store, model="llm", split="test", progress=False)
    assert all(r["correct"] and not r["failed"] for r in out)
    assert out[0]["prompt_tokens"] == 40 and out[0]["generated_tokens"] == 8
    assert out[0]["confidence"]["verbal"] == 0.8
    assert out[0]["confidence"]["answer_min_prob"] == pytest.approx(0.9048, abs=1e-3)
    assert s.requests[0][1]["logprobs"] is True and s.requests[0][2] == f"Bearer {SECRET}"
    assert SECRET not in (tmp_path / "records.jsonl").read_text() and SECRET not in repr(backend)


def test_two_turn_asks_for_the_confidence_in_a_follow_up(server):
    s = server(lambda srv, body: _completion(body) if len(body["messages"]) == 1 else
               (200, json.dumps({"id": "y", "object": "chat.completion", "created": 0, "model": "m",
                                 "choices": [{"index": 0, "finish_reason": "stop",
                                              "message": {"role": "assistant", "content": "Confidence: 0.3"}}],
                                 "usage": {"prompt_tokens": 60, "completion_tokens": 4, "total_tokens": 64}}).encode()))
    answer = _backend(s.url, mode="two_turn").answer(ITEMS[:1])[0]
    assert answer.correct and answer.confidence["verbal"] == 0.3
    assert answer.prompt_tokens == 100 and answer.generated_tokens == 12


def test_retries_500_and_429_then_succeeds(server):
    codes = iter([500, 429, 503])

    def flaky(srv, body):
        code = next(codes, 200)
        return (code, b'{"error": {"message": "busy"}}') if code != 200 else _completion(body)

    s = server(flaky)
    answer = _backend(s.url, max_retries=3, max_concurrency=1).answer(ITEMS[:1])[0]
    assert answer.correct and not answer.failed and len(s.requests) == 4


def test_persistent_errors_fail_the_item_which_is_retried_next_run(server, tmp_path):
    bad = server(lambda srv, body: (500, b'{"error": {"message": "down"}}'))
    store = records_lib.RecordStore(tmp_path / "records.jsonl")
    out = records_lib.collect(_backend(bad.url, max_retries=1), ITEMS[:2], store, model="llm",
                              split="test", progress=False)
    assert all(r["failed"] and not r["correct"] and "500" in r["error"] for r in out)
    assert len(bad.requests) == 4  # 2 items x (1 try + 1 retry)
    good = server(lambda srv, body: _completion(body))
    store = records_lib.RecordStore(tmp_path / "records.jsonl")  # a new run reads the failures
    out = records_lib.collect(_backend(good.url), ITEMS[:2], store, model="llm", split="test", progress=False)
    assert all(r["correct"] and not r["failed"] for r in out) and len(good.requests) == 2


def test_a_stalled_server_times_out_and_fails_the_item(server):
    release = threading.Event()  # the server answers nothing until the client has given up
    s = server(lambda srv, body: (release.wait(60), _completion(body))[1])
    try:
        answer = _backend(s.url, timeout_s=0.3, max_retries=1).answer(ITEMS[:1])[0]
    finally:
        release.set()
    assert answer.failed and "Timeout" in answer.error and len(s.requests) == 2


def test_malformed_json_fails_the_item(server):
    s = server(lambda srv, body: (200, b'{"choices": [ this is not json'))
    answer = _backend(s.url).answer(ITEMS[:1])[0]
    assert answer.failed and not answer.correct


class _Clock:
    """Stands in for the `time` module inside `cascade.http`: sleeps are recorded, not slept;
    with `frozen`, monotonic() stands still (so the rate limiter's waits are exact)."""

    def __init__(self, frozen: bool = False):
        self.sleeps, self._lock = [], threading.Lock()
        self._now = time.monotonic() if frozen else None

    def sleep(self, seconds):
        with self._lock:
            self.sleeps.append(seconds)

    def monotonic(self):
        return time.monotonic() if self._now is None else self._now

    def __getattr__(self, name):  # perf_counter, time: the real ones
        return getattr(time, name)


def test_concurrency_bound(server):
    pair = threading.Barrier(2)  # each reply waits for a second request in flight

    def overlapping(srv, body):
        pair.wait(timeout=60)
        return _completion(body)

    s = server(overlapping)
    answers = _backend(s.url, max_concurrency=2).answer(ITEMS)
    assert all(a.correct for a in answers) and len(s.requests) == len(ITEMS)
    assert s.max_in_flight == 2  # two at once, never three


def test_rate_limit_spaces_request_starts(server, monkeypatch):
    clock = _Clock(frozen=True)
    monkeypatch.setattr(http_lib, "time", clock)
    limited = server(lambda srv, body: _completion(body))
    answers = _backend(limited.url, max_concurrency=4, requests_per_second=5).answer(ITEMS[:5])
    assert all(a.correct for a in answers) and len(limited.requests) == 5
    # Five starts at 5 per second, four threads at once: each waits 0.2 s more than the one
    # before it (unlimited: no waits at all).
    assert sorted(clock.sleeps) == pytest.approx([0.0, 0.2, 0.4, 0.6, 0.8])


def test_refused_connection_and_unset_key_name_the_field(monkeypatch):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    with pytest.raises(ConnectionError, match=f"base_url: could not connect to http://127.0.0.1:{port}/v1"):
        _backend(f"http://127.0.0.1:{port}/v1", max_retries=0).answer(ITEMS[:1])
    monkeypatch.delenv("COREA_MISSING_KEY", raising=False)
    with pytest.raises(ValueError, match="api_key_env: the environment variable 'COREA_MISSING_KEY' is unset"):
        _backend("http://127.0.0.1:1/v1", api_key_env="COREA_MISSING_KEY")


@pytest.mark.slow
def test_launch_cascade_reports_a_refused_connection_without_a_traceback(tmp_path):
    port = _free_port()
    http = [f"--config.{role}.{key}={value}" for role in ("slm", "llm") for key, value in (
        ("backend", "http"), ("http.base_url", f"http://127.0.0.1:{port}/v1"), ("http.model", "m"),
        ("http.max_retries", 0), ("http.timeout_s", 2.0))]
    proc = subprocess.run(
        [sys.executable, "-m", "launch.cascade", "--config=configs/cascade/tiny.py",
         f"--workdir={tmp_path}", *http], cwd=REPO, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO), "COREA_SHARED_DATA": str(SHARED_DATA)})
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert f"slm.http.base_url: could not connect to http://127.0.0.1:{port}/v1" in proc.stderr


@pytest.mark.parametrize("field, value, expected", [
    ("backoff_s", -0.5, "a number >= 0"), ("backoff_s", -2.0, "a number >= 0"),
    ("requests_per_second", -0.5, "a number >= 0"), ("timeout_s", 0.0, "a number > 0")])
def test_negative_backoff_rate_and_timeout_are_refused_naming_the_value(field, value, expected):
    with pytest.raises(ValueError, match=f"http.{field}: expected {expected} .*found {value}$"):
        _backend("http://127.0.0.1:1/v1", **{field: value})


def test_an_error_body_echoing_the_key_is_redacted_from_the_records(server, monkeypatch, tmp_path):
    monkeypatch.setenv("COREA_TEST_KEY", SECRET)
    s = server(lambda srv, body: (401, json.dumps({"error": {"message": f"bad key {SECRET}"}}).encode()))
    store = records_lib.RecordStore(tmp_path / "records.jsonl")
    out = records_lib.collect(_backend(s.url, api_key_env="COREA_TEST_KEY"), ITEMS[:1], store,
                              model="llm", split="test", progress=False)
    assert out[0]["failed"] and "bad key [redacted]" in out[0]["error"]
    assert SECRET not in (tmp_path / "records.jsonl").read_text()


def test_retry_after_is_honoured(server, monkeypatch):
    def busy_once(srv, body):
        if len(srv.requests) == 1:
            return 429, b'{"error": {"message": "slow down"}}', {"headers": {"Retry-After": "1"}}
        return _completion(body)

    clock = _Clock()
    monkeypatch.setattr(http_lib, "time", clock)
    s = server(busy_once)
    answer = _backend(s.url, backoff_s=0.01, max_concurrency=1).answer(ITEMS[:1])[0]
    assert answer.correct and len(s.requests) == 2
    assert clock.sleeps == [1.0]  # the server's second, not the 0.01 s backoff


def test_timeout_bounds_the_whole_request_not_each_read(server):
    body = b'{"choices": [{"message": {"content": "\\\\boxed{1}"}}], "usage": {"prompt_tokens": 1, "completion_tokens": 1}}'
    body += b" " * 3000  # a byte each 0.02 s: a minute in all, each read well within timeout_s
    s = server(lambda srv, req: (200, body, {"trickle_s": 0.02}))
    answer = _backend(s.url, timeout_s=1.0, max_retries=0).answer(ITEMS[:1])[0]
    assert answer.failed and "timeout_s" in answer.error and "Timeout" in answer.error
    # Given up mid-body: the client dropped the connection while the server was still sending.
    assert s.dropped.wait(60) and s.completed == 0


def test_a_null_message_content_fails_the_item(server):
    s = server(lambda srv, body: _completion(body, null_content=True))
    answer = _backend(s.url).answer(ITEMS[:1])[0]
    assert answer.failed and not answer.correct and "content is null" in answer.error


def test_http_fields_are_checked_before_any_model_runs(server, tmp_path, monkeypatch):
    monkeypatch.setenv("COREA_SHARED_DATA", str(SHARED_DATA))
    s = server(lambda srv, body: _completion(body))
    config = tiny.get_config()
    config.slm.backend = config.llm.backend = "http"
    config.slm.http.base_url, config.slm.http.model = s.url, "served-slm"
    config.llm.http.model = "served-llm"  # llm.http.base_url left empty
    with pytest.raises(ValueError, match=r"^llm\.http\.base_url: expected the server's URL"):
        evaluate.run(config, tmp_path, progress=False)
    assert s.requests == [] and not (tmp_path / "records.jsonl").exists()


def _free_port():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    return port


@pytest.mark.parametrize("reset", [True, False], ids=["reset", "closed"])
def test_a_connection_lost_mid_body_is_retried(server, reset):
    """Finding 12: httpx's ReadError (connection reset) or RemoteProtocolError (closed before
    the promised Content-Length) while the body is read is retried like a 5xx."""
    def lost_once(srv, body):
        status, payload = _completion(body)
        if len(srv.requests) == 1:
            return status, payload, {"cut_after": len(payload) // 2, "reset": reset}
        return status, payload

    s = server(lost_once)
    answer = _backend(s.url, max_retries=1, max_concurrency=1).answer(ITEMS[:1])[0]
    assert answer.correct and not answer.failed and len(s.requests) == 2 and s.completed == 1


def test_answer_one_sends_the_budget_stop_strings_and_history(server):
    s = server(lambda srv, body: _completion(body))
    backend = _backend(s.url)
    history = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
               {"role": "assistant", "content": "Hello."}]
    answer = backend.answer_one(ITEMS[2], max_new_tokens=7, stop=["\nConfidence"], history=history)
    assert answer.correct and answer.prompt_tokens == 40
    sent = s.requests[0][1]
    assert sent["max_tokens"] == 7 and sent["stop"] == ["\nConfidence"]
    assert sent["messages"] == messages_for(ITEMS[2], "corea", history=history)
    assert sent["messages"][-1]["content"].endswith("Problem: What is 2 + 1?")
    backend.answer(ITEMS[:1])  # the batch path: the backend's budget, no stop, no history
    sent = s.requests[1][1]
    assert sent["max_tokens"] == backend.max_new_tokens and "stop" not in sent
    assert sent["messages"] == messages_for(ITEMS[0], "corea")


def test_answer_one_retries_and_fails_the_item_without_raising(server):
    codes = iter([503])
    s = server(lambda srv, body: (503, b'{"error": {"message": "busy"}}') if next(codes, 200) == 503
               else _completion(body))
    answer = _backend(s.url, max_retries=1).answer_one(ITEMS[0])
    assert answer.correct and len(s.requests) == 2
    port = _free_port()
    answer = _backend(f"http://127.0.0.1:{port}/v1", max_retries=0).answer_one(ITEMS[0])
    assert answer.failed and "APIConnectionError" in answer.error  # answer() would raise ConnectionError
