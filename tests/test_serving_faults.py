"""The server outside its happy path (issue 35): a fake OpenAI-compatible LLM on 127.0.0.1 that a
test makes slow, failing or dead, configured as users configure it (`llm.backend = "http"`
through `create_app`), behind the tiny SLM. Every request ends in one answer or one error in
OpenAI's schema and one log line; a slow LLM never delays corea-slm traffic; the published
numbers equal an independent computation from the responses and records.jsonl; hostile input
is refused naming the field. Waits are event-driven (the fake LLM counts what arrives)."""

from __future__ import annotations

import concurrent.futures
import http.client
import json
import math
import os
import stat
import threading
import time
import urllib.request

import numpy as np
import openai
import pytest

from tests.serving_helpers import FakeLLM, InProcessServer, client, http_llm_config, metric

pytestmark = pytest.mark.slow  # servers, subprocesses, notebooks, training runs: `pytest -m slow`

QUESTIONS = ["What is 2 + 3?", "Janet has 16 eggs and eats 3. How many are left?",
             "A train goes 60 km an hour for 2 hours. How far does it go?", "What is 6 times 7?"]
LLM_PARAMS = 1_000_000


@pytest.fixture(scope="module")
def fake():
    llm = FakeLLM()
    yield llm
    llm.stop()


@pytest.fixture(scope="module")
def server(fake, tmp_path_factory):
    from corea_jax.serving import create_app

    config = http_llm_config(fake.url, **{"llm.http.max_concurrency": 2, "limits.max_queued": 2,
                                          "on_llm_failure": "degraded"})
    app = create_app(config, tmp_path_factory.mktemp("faults"))
    running = InProcessServer(app)
    yield running
    fake.release.set()
    running.stop()


@pytest.fixture
def service(server, fake):
    """The service with tau, policy, shadow rate and the fake's mode restored after each test."""
    service = server.service
    saved = (service.tau, service.config.on_llm_failure, service.config.shadow_rate)
    fake.mode = "ok"
    fake.release.clear()
    yield service
    fake.release.set()
    _settle(server)
    fake.mode = "ok"
    service.set_tau(saved[0])
    service.config.on_llm_failure, service.config.shadow_rate = saved[1], saved[2]


def _settle(server, timeout: float = 120) -> None:
    """Until no request or shadow call is in flight on the server."""
    deadline = time.monotonic() + timeout
    while server.service._background or server.service.answerers["llm"].in_flight \
            or server.service.answerers["slm"].batcher.in_flight:
        assert time.monotonic() < deadline, "the server did not settle"
        time.sleep(0.05)


def _ask(c, question, model="corea", **kwargs):
    return c.chat.completions.create(model=model, messages=[{"role": "user", "content": question}],
                                     max_tokens=kwargs.pop("max_tokens", 8), **kwargs)


def _lines(server) -> list[dict]:
    """The log's complete lines (read while the server may be appending one)."""
    from corea_jax.serving.log import read_lines

    return read_lines(server.service.log.path)


def _line(server, rid: str) -> dict:
    (line,) = [line for line in _lines(server) if line["request_id"] == rid]
    return line


def _metrics(server, key: str | None = None) -> str:
    request = urllib.request.Request(f"{server.url}/metrics",
                                     headers={"Authorization": f"Bearer {key}"} if key else {})
    with urllib.request.urlopen(request, timeout=60) as response:
        return response.read().decode()


def _post(server, body: bytes, headers: dict | None = None, path="/v1/chat/completions"):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    conn.request("POST", path, body=body, headers={"Content-Type": "application/json", **(headers or {})})
    response = conn.getresponse()
    data = response.read()
    conn.close()
    return response.status, dict(response.getheaders()), data


def _flops(params: int, prompt: int, completion: int, head: int = 0) -> float:
    return 2.0 * params * (prompt + completion) + 2.0 * head * completion


# ----------------------------------------------------------------------------- 1: a slow LLM


def test_a_held_llm_never_delays_slm_traffic_and_max_concurrency_holds(server, fake, service):
    service.set_tau(1.0)  # every corea request goes to the LLM
    fake.mode = "hold"
    c = client(server.url, timeout=120)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        seen = len(fake.requests)
        deferred = [pool.submit(_ask, c, q) for q in QUESTIONS]  # 2 at the LLM, 2 queued for it
        fake.wait_for(seen + 2)
        answer = _ask(c, QUESTIONS[0], model="corea-slm")  # while the LLM holds every call
        assert answer.choices[0].message.content and fake.in_flight == 2 and not fake.release.is_set()
        assert fake.max_in_flight <= 2  # llm.http.max_concurrency
        fake.release.set()
        replies = [f.result(timeout=120) for f in deferred]
    assert all(r.to_dict()["corea"]["answered_by"] == "llm" for r in replies)
    assert fake.max_in_flight == 2


# ----------------------------------------------------------------------------- 2, 7, 9: a failing LLM


def test_a_failing_or_dead_llm_degrades_with_no_saving_claimed_and_no_address_leaked(server, fake, service):
    service.set_tau(1.0)
    fake.mode = "fail"
    c = client(server.url)
    before = _metrics(server)
    degraded = [_ask(c, q) for q in QUESTIONS]
    for r in degraded:
        info = r.to_dict()["corea"]
        assert info["degraded"] and info["answered_by"] == "slm"
        assert info["cost"] == info["llm_only_cost"]  # a degraded answer saves nothing
    after = _metrics(server)
    spent = metric(after, "corea_cost_total", system="cascade") - metric(before, "corea_cost_total", system="cascade")
    alone = metric(after, "corea_cost_total", system="llm_only") - metric(before, "corea_cost_total", system="llm_only")
    assert spent == pytest.approx(alone) and spent > 0

    with urllib.request.urlopen(f"{server.url}/health", timeout=30) as response:  # still in rotation
        health = json.loads(response.read())
    assert response.status == 200 and health["status"] == "degraded" and health["engines"]["llm"] is False
    service.config.on_llm_failure = "error"
    with pytest.raises(urllib.error.HTTPError) as down:  # its failures are 503s now: out of rotation
        urllib.request.urlopen(f"{server.url}/health", timeout=30)
    assert down.value.code == 503
    with pytest.raises(openai.InternalServerError) as err:
        _ask(c, QUESTIONS[0])
    assert err.value.status_code == 503 and err.value.body["code"] == "llm_unavailable"
    assert str(fake.port) not in json.dumps(err.value.body) and "127.0.0.1" not in json.dumps(err.value.body)
    assert err.value.response.headers["retry-after"] == "5"
    _settle(server)
    line = _line(server, err.value.response.headers["x-request-id"])
    assert line["finish_reason"] == "error" and line["llm"]["failed"] and line["degraded"]
    assert stat.S_IMODE(os.stat(server.service.log.path).st_mode) == 0o600  # users' questions


def test_an_llm_reporting_impossible_usage_or_a_huge_body_is_a_failed_call(server, fake, service, monkeypatch):
    """Token counts of -5 and 1e308, or a reply over the size bound: a failed LLM call (degraded),
    one line, and counters that stay finite (found by an attacker's review)."""
    from corea_jax.cascade import http as http_lib

    service.set_tau(1.0)
    c = client(server.url)
    fake.mode = "bad_usage"
    reply = _ask(c, QUESTIONS[0])
    assert reply.to_dict()["corea"]["degraded"]
    fake.mode = "ok"
    monkeypatch.setattr(http_lib, "MAX_RESPONSE_BYTES", 64)
    big = _ask(c, QUESTIONS[1])
    assert big.to_dict()["corea"]["degraded"]
    _settle(server)
    for r in (reply, big):
        line = _line(server, r.id)
        assert line["llm"]["failed"] and "malformed" in line["llm"]["error"] or "usage" in line["llm"]["error"]
    text = _metrics(server)
    for name in ("corea_cost_total", "corea_tokens_total", "corea_cost_saved_fraction"):
        assert math.isfinite(metric(text, name)), name


def test_many_turns_long_names_and_loose_types_are_refused_briefly(server):
    c = client(server.url)
    with pytest.raises(openai.BadRequestError) as err:
        c.chat.completions.create(model="corea-slm", messages=[{"role": "user", "content": "x"}] * 500)
    assert err.value.body["param"] == "messages" and "at most 64 messages" in err.value.body["message"]
    with pytest.raises(openai.BadRequestError) as err:
        c.chat.completions.create(model="m" * 100_000, messages=[{"role": "user", "content": "hi"}])
    assert len(err.value.body["message"]) < 300 and err.value.body["param"] == "model"
    cases = [({"max_tokens": True}, "max_tokens"), ({"stream": "true"}, "stream"), ({"seed": 1.5}, "seed"),
             ({"reasoning_effort": "high"}, "reasoning_effort")]
    for extra, param in cases:
        status, _, data = _post(server, json.dumps({"model": "corea-slm", **extra,
                                                    "messages": [{"role": "user", "content": "hi"}]}).encode())
        assert status == 400 and json.loads(data)["error"]["param"] == param, (extra, data)
    with pytest.raises(openai.BadRequestError) as err:
        c.chat.completions.create(model="corea-slm", messages=[
            {"role": "user", "content": "weather?"},
            {"role": "assistant", "content": None, "function_call": {"name": "f", "arguments": "{}"}},
            {"role": "user", "content": "and now?"}])
    assert err.value.body["param"] == "messages[1]"


def test_the_request_log_is_the_owners_alone_and_no_link(tmp_path):
    from corea_jax.serving.log import RequestLog

    old = tmp_path / "records.jsonl"
    old.write_text("")
    os.chmod(old, 0o644)
    RequestLog(old).append({"id": 1})
    assert stat.S_IMODE(os.stat(old).st_mode) == 0o600
    (tmp_path / "elsewhere").mkdir()
    link = tmp_path / "elsewhere" / "records.jsonl"
    link.symlink_to(tmp_path / "target.jsonl")
    with pytest.raises(ValueError, match="a symbolic link"):
        RequestLog(link)


# ----------------------------------------------------------------------------- 5: backpressure


def test_a_full_llm_queue_is_refused_with_retry_after(server, fake, service):
    service.set_tau(1.0)
    service.config.on_llm_failure = "error"
    fake.mode = "hold"
    c = client(server.url, timeout=120)
    seen = len(fake.requests)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        held = [pool.submit(_ask, c, q) for q in QUESTIONS]  # capacity: 2 in flight + 2 queued
        fake.wait_for(seen + 2)
        deadline = time.monotonic() + 60
        while server.service.answerers["llm"].in_flight < 4:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        with pytest.raises(openai.InternalServerError) as err:
            _ask(c, QUESTIONS[1])
        assert err.value.status_code == 503 and err.value.body["code"] == "llm_overloaded"
        assert err.value.response.headers["retry-after"] == "5"
        fake.release.set()
        assert all(f.result(timeout=120).choices[0].message.content for f in held)
    assert metric(_metrics(server), "corea_overloaded_total", engine="llm") >= 1


def test_request_size_depth_digits_and_unicode_are_bounded(server):
    status, _, data = _post(server, b'{"model": "corea", "messages": [{"role": "user", "content": "'
                            + b"x" * 2_000_000 + b'"}]}')
    assert status == 413 and json.loads(data)["error"]["code"] == "request_too_large"
    cases = [
        (b'{"model": "corea", "messages": ' + b"[" * 5000 + b"]" * 5000 + b"}", None, "nested deeper"),
        (b'{"model": "corea", "max_tokens": ' + b"7" * 5000 + b', "messages": []}', None, "digits"),
        (b'{"model": "corea", "messages": [{"role": "user", "content": "2 + 2 \\ud800"}]}',
         "messages[0].content", "Unicode"),
        (b'{"model": "corea", "temperature": NaN, "messages": []}', None, "not JSON"),
    ]
    for body, param, words in cases:
        status, headers, data = _post(server, body)
        error = json.loads(data)["error"]
        assert status == 400 and headers["content-type"] == "application/json", data[:200]
        assert error["param"] == param and words in error["message"], error


def test_a_body_that_trickles_past_the_body_timeout_gets_408(server):
    import socket

    limits = server.service.config.limits
    saved, limits.body_timeout_s = limits.body_timeout_s, 1.0
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=60) as sock:
            sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                         b"Content-Type: application/json\r\nContent-Length: 500\r\n\r\n{\"model\"")
            reply = sock.recv(65536).decode()  # nothing more is sent: the server answers on its own
    finally:
        limits.body_timeout_s = saved
    assert reply.startswith("HTTP/1.1 408") and '"code":"request_timeout"' in reply.replace(" ", "")


# ----------------------------------------------------------------------------- 6: open surfaces


def test_keys_guard_every_surface_and_a_keyless_server_refuses_cross_origin(server, caplog):
    from corea_jax.serving.auth import KeyRing

    state = server.app.state.corea
    saved = state.keys
    state.keys = KeyRing(["api-key"], ["scrape-key"])
    try:
        with pytest.raises(urllib.error.HTTPError) as err:
            _metrics(server)
        assert err.value.code == 401
        assert "corea_requests_total" in _metrics(server, "scrape-key")
        assert "corea_requests_total" in _metrics(server, "api-key")
        with urllib.request.urlopen(f"{server.url}/health", timeout=30) as response:
            assert set(json.loads(response.read())) == {"status", "tau", "defer_everything", "draining",
                                                        "threshold_version", "drift_alarm"}
        with pytest.raises(openai.AuthenticationError):  # a metrics key cannot ask questions
            _ask(client(server.url, key="scrape-key"), QUESTIONS[0])
    finally:
        state.keys = saved
    body = json.dumps({"model": "corea-slm", "messages": [{"role": "user", "content": "hi"}]}).encode()
    refused = [
        ({"Origin": "http://evil.example"}, 403, "forbidden_origin"),
        ({"Content-Type": "text/plain"}, 415, "unsupported_media_type"),
        ({"Host": "evil.example:80"}, 403, "forbidden_host"),
    ]
    before = len(_lines(server))
    for headers, status, code in refused:
        got, _, data = _post(server, body, headers)
        assert got == status and json.loads(data)["error"]["code"] == code
    assert len(_lines(server)) == before  # nothing reached the log refit fits tau from
    guard = [r for r in caplog.records if "refused by the loopback guard" in r.getMessage()]
    assert [int(r.getMessage().split("status=")[1].split()[0]) for r in guard] == [403, 415, 403]
    ok, _, _ = _post(server, body, {"Origin": f"http://127.0.0.1:{server.port}"})
    assert ok == 200


# ----------------------------------------------------------------------------- 7, 13: numbers


def test_shadow_calls_are_llm_calls_and_agreement_is_the_graded_equivalence(server, fake, service):
    from corea_jax import grading

    service.set_tau(0.0)  # every request kept
    service.config.shadow_rate = 1.0
    c = client(server.url)
    before = _metrics(server)
    replies = [_ask(c, q) for q in QUESTIONS]
    _settle(server)
    after = _metrics(server)
    delta = lambda name, **labels: metric(after, name, **labels) - metric(before, name, **labels)  # noqa: E731
    assert delta("corea_model_calls_total", model="llm") == 4
    assert delta("corea_tokens_total", model="llm", kind="completion") == 4 * 7
    assert delta("corea_shadow_total") == 4
    slm_cost = sum(r.to_dict()["corea"]["cost"] for r in replies)
    llm_cost = 4 * _flops(LLM_PARAMS, 30, 7)
    assert delta("corea_cost_total", system="cascade") == pytest.approx(slm_cost + llm_cost)
    assert delta("corea_cost_total", system="llm_only") == pytest.approx(llm_cost)
    for r in replies:
        line = _line(server, r.id)
        assert line["shadow"] and line["llm"]["generated_tokens"] == 7
        want = bool(grading.grade(line["response"], "5", "gsm8k")) if line["answer"] is not None else False
        assert line["agree"] is want


def test_a_deferred_request_pays_both_calls_over_http(server, service):
    service.set_tau(1.0)
    reply = _ask(client(server.url), QUESTIONS[2])
    info = reply.to_dict()["corea"]
    line = _line(server, reply.id)
    llm_cost = _flops(LLM_PARAMS, 30, 7)
    assert info["answered_by"] == "llm" and info["llm_only_cost"] == pytest.approx(llm_cost)
    assert info["cost"] == pytest.approx(line["cost"] + llm_cost) and line["cost"] > 0
    assert reply.usage.completion_tokens == info["tokens"]["slm"]["completion"] + 7


def test_an_http_llm_without_a_cost_basis_is_refused_at_start(fake, tmp_path):
    from corea_jax.serving import create_app

    with pytest.raises(ValueError, match=r"^llm.non_embedding_params: an LLM behind HTTP"):
        create_app(http_llm_config(fake.url, **{"llm.non_embedding_params": 0}), tmp_path)
    with pytest.raises(ValueError, match=r"^slm.price_per_million"):
        create_app(http_llm_config(fake.url, cost_model="price"), tmp_path)


def test_published_metrics_equal_the_log(server, fake, service):
    """Every counter and gauge, recomputed from records.jsonl and the responses alone."""
    from corea_jax.serving.metrics import QUANTILES

    service.config.shadow_rate = 0.5
    c = client(server.url)
    confidences = sorted(_ask(c, q, model="corea-slm").to_dict()["corea"]["confidence"] for q in QUESTIONS)
    service.set_tau((confidences[1] + confidences[2]) / 2)
    for i, q in enumerate(QUESTIONS * 2):
        fake.mode = "fail" if i == 5 else "ok"  # request 5 (corea-llm) is refused with a 503
        try:
            _ask(c, q, model=("corea", "corea-llm", "corea", "corea-slm")[i % 4])
        except openai.InternalServerError:
            assert i == 5
    _settle(server)
    text = _metrics(server)
    lines = _lines(server)
    calls = {"slm": 0, "llm": 0}
    tokens = {(m, k): 0 for m in calls for k in ("prompt", "completion")}
    for line in lines:
        for r in [line] + ([line["llm"]] if line["llm"] else []):
            if not r["failed"]:
                calls[r["model"]] += 1
                tokens[r["model"], "prompt"] += r["prompt_tokens"]
                tokens[r["model"], "completion"] += r["generated_tokens"]
    for model, count in calls.items():
        assert metric(text, "corea_model_calls_total", model=model) == count
    for (model, kind), count in tokens.items():
        assert metric(text, "corea_tokens_total", model=model, kind=kind) == count
    answered = [line for line in lines if line["finish_reason"] not in ("error", "cancelled", "shutdown")]
    corea = [line for line in answered if line["served_model"] == "corea"]
    by_llm = sum(line["answered_by"] == "llm" for line in corea)
    assert metric(text, "corea_llm_share") == pytest.approx(by_llm / len(corea))
    assert metric(text, "corea_deferred_total") == sum(bool(line["deferred"]) for line in corea)
    assert metric(text, "corea_degraded_total") == sum(line["degraded"] for line in corea)
    assert metric(text, "corea_requests_total", status="200") == len(answered)
    with_costs = [line for line in lines if line["served_model"] == "corea" and line.get("request_cost")]
    spent = sum(line["request_cost"] for line in with_costs)
    alone = sum(line["llm_only_cost"] for line in with_costs)
    for line in with_costs:  # the recorded costs are the calls' own, recomputed here
        made = [line] + ([line["llm"]] if line["llm"] and not line["llm"]["failed"] else [])
        assert line["request_cost"] == pytest.approx(sum(r["cost"] for r in made if not r["failed"]))
        for r in made:
            if r["model"] == "llm":
                assert r["cost"] == pytest.approx(_flops(LLM_PARAMS, r["prompt_tokens"], r["generated_tokens"]))
    assert metric(text, "corea_cost_total", system="cascade") == pytest.approx(spent)
    assert metric(text, "corea_cost_total", system="llm_only") == pytest.approx(alone)
    assert metric(text, "corea_cost_saved_fraction") == pytest.approx(1 - spent / alone)
    assert metric(text, "corea_confidence_count") == sum(
        1 for line in lines if line["model"] == "slm" and not line["failed"]
        and line["confidence"]["sequence_mean_prob"] is not None)
    latencies = np.asarray([line["latency_s"] for line in answered])
    for q in QUANTILES:  # the window holds the routes' timings (parsing and sending included):
        shown = metric(text, "corea_latency_window_seconds", quantile=str(q))  # the log's plus a little
        assert float(np.quantile(latencies, q)) - 0.01 <= shown <= float(np.quantile(latencies, q)) + 0.25
    assert metric(text, "corea_request_latency_seconds_count") == len(answered)


# ----------------------------------------------------------------------------- 4, 8: thresholds


def test_threshold_files_defer_everything_refusals_and_the_source(server, service):
    from corea_jax.serving.refit import refit

    workdir = service.workdir
    path = workdir / "threshold.json"
    c = client(server.url)
    _ask(c, QUESTIONS[0], model="corea-slm")
    refit(workdir, "usage", target_usage=1.0, min_items=1)  # defer everything
    written = json.loads(path.read_text())
    assert written["tau"] is None and written["defer_everything"] is True
    assert service.reload_threshold() == math.inf
    with urllib.request.urlopen(f"{server.url}/health", timeout=30) as response:
        health = json.loads(response.read())
    assert response.status == 200 and health["tau"] is None and health["defer_everything"] is True
    text = _metrics(server)
    assert metric(text, "corea_tau") == math.inf and metric(text, "corea_defer_everything") == 1
    assert _ask(c, QUESTIONS[1]).to_dict()["corea"]["deferred"] is True

    refused = metric(text, "corea_threshold_refused_total")
    for bad, words in [('{"tau": true}', "tau: expected a number"), ("0.3", "expected a JSON object"),
                       ('{"tau": 0.4, "confidence_source": "verbal"}', "fitted on 'verbal'"),
                       ('{"tau": NaN}', "NaN is not JSON"), ('{"tau": 1e999}', "is not finite"),
                       ('{"tau": Infinity}', "Infinity is not JSON"), ("{", "not valid JSON")]:
        path.write_text(bad)
        assert service.reload_threshold() == math.inf  # the old tau kept
        assert words in service.threshold_error
    assert metric(_metrics(server), "corea_threshold_refused_total") == refused + 7
    path.unlink()
    os.mkfifo(path)  # a read would block the server: refused without reading
    assert service.reload_threshold() == math.inf and "expected a regular file" in service.threshold_error
    with urllib.request.urlopen(f"{server.url}/health", timeout=30) as response:
        assert "expected a regular file" in json.loads(response.read())["threshold_error"]  # keyless: details
    with pytest.raises(ValueError, match="confidence_source: the server defers on 'sequence_mean_prob'"):
        refit(workdir, "usage", confidence_source="verbal", min_items=1)
    path.unlink()


# ----------------------------------------------------------------------------- 11: OpenAI fields


@pytest.mark.parametrize("extra, param", [
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}, "tools"),
    ({"tool_choice": "auto"}, "tool_choice"),
    ({"response_format": {"type": "json_object"}}, "response_format"),
    ({"logprobs": True}, "logprobs"),
    ({"logit_bias": {"12": 5}}, "logit_bias"),
    ({"n": 2}, "n"),
    ({"temperature": 0.7}, "temperature"),
    ({"top_p": 0.5}, "top_p"),
    ({"presence_penalty": 1.0}, "presence_penalty"),
])
def test_openai_fields_not_honoured_are_refused_naming_them(server, extra, param):
    with pytest.raises(openai.BadRequestError) as err:
        client(server.url).chat.completions.create(
            model="corea-slm", messages=[{"role": "user", "content": "hi"}], **extra)
    assert err.value.body["param"] == param and param in err.value.body["message"]


def test_system_messages_and_earlier_turns_reach_the_llm_and_tool_results_are_refused(server, fake, service):
    c = client(server.url)
    reply = c.chat.completions.create(model="corea-llm", seed=3, temperature=0, top_p=1, messages=[
        {"role": "system", "content": "Answer like a pirate."},
        {"role": "user", "content": "What is 2 + 2?"}, {"role": "assistant", "content": "4"},
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": "And 2 + 3?"}])
    assert reply.choices[0].message.content
    sent = fake.requests[-1]["messages"]
    text = json.dumps(sent)
    assert "Answer like a pirate." in text and "Be brief." in text and "What is 2 + 2?" in text
    assert sent[-1]["role"] == "user" and "And 2 + 3?" in sent[-1]["content"]
    with pytest.raises(openai.BadRequestError) as err:
        c.chat.completions.create(model="corea", messages=[
            {"role": "user", "content": "weather?"},
            {"role": "assistant", "content": None, "tool_calls": [{"id": "1", "type": "function",
                                                                   "function": {"name": "f", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "1", "content": "sunny"}])
    assert err.value.body["param"] == "messages" and "tool" in err.value.body["message"]
    assert c.models.retrieve("corea-slm").id == "corea-slm"
    with pytest.raises(openai.NotFoundError):
        c.models.retrieve("gpt-4")


def test_langchain_bind_tools_gets_a_clear_400(server):
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI

    @tool
    def add(a: int, b: int) -> int:
        """Adds two numbers."""
        return a + b

    chat = ChatOpenAI(model="corea", base_url=f"{server.url}/v1", api_key="none", max_retries=0, timeout=60)
    with pytest.raises(openai.BadRequestError) as err:
        chat.bind_tools([add]).invoke("What is 2 + 3?")
    assert err.value.body["param"] == "tools"
    plain = chat.invoke("What is 2 + 3?")  # without tools it answers
    assert isinstance(plain.content, str)


# ----------------------------------------------------------------------------- the fault drill


def test_32_clients_through_a_slow_failing_and_killed_llm(server, fake, service):
    """corea and corea-slm traffic from 32 clients while the LLM is healthy, slow (10 s), failing
    (500), killed mid-traffic (held requests lose their connections) and then refusing
    connections: every request gets one answer or one OpenAI-schema refusal and one log line;
    corea-slm's p99 latency stays within 2x of the healthy phase's."""
    service.set_tau(0.5)
    service.answerers["slm"].capacity = 64  # the SLM admits every client; the LLM's queue stays small
    phases = ["ok", "hold", "fail", "killed", "refused"]
    c = client(server.url, timeout=180)
    lines_before = len(_lines(server))
    requests_before = metric(_metrics(server), "corea_requests_total")
    slm_latency, outcomes = {}, []

    def one(i):
        model = "corea" if i % 2 else "corea-slm"
        start = time.perf_counter()
        try:
            r = _ask(c, QUESTIONS[i % 4], model=model)
            return model, time.perf_counter() - start, 200, r.to_dict()
        except openai.APIStatusError as err:
            return model, time.perf_counter() - start, err.status_code, err.body

    for phase in phases:
        fake.release.clear()
        fake.mode = {"killed": "hold", "refused": "ok"}.get(phase, phase)
        release = None
        if phase == "hold":
            release = threading.Timer(10.0, fake.release.set)  # a 10 s LLM
            release.start()
        if phase == "killed":  # once 4 calls are held mid-traffic, the LLM dies
            arrived = len(fake.requests)
            release = threading.Thread(target=lambda: (fake.wait_for(arrived + 4), fake.kill()))
            release.start()
        with concurrent.futures.ThreadPoolExecutor(32) as pool:
            results = list(pool.map(one, range(32)))
        if release is not None:
            release.join()
        _settle(server)
        outcomes += results
        slm_latency[phase] = np.quantile([t for m, t, _, _ in results if m == "corea-slm"], 0.99)
    for model, _, status, body in outcomes:
        if status == 200:
            assert body["object"] == "chat.completion" and body["choices"][0]["message"]["content"] is not None
        else:
            assert status in (429, 503) and set(body) >= {"message", "type", "code"}, body
    lines = _lines(server)[lines_before:]
    assert len(lines) == len(outcomes) == 32 * len(phases)
    assert metric(_metrics(server), "corea_requests_total") - requests_before == 32 * len(phases)
    for phase in phases[1:]:  # corea-slm never waits on the LLM (plus 0.25 s for a loaded box)
        assert slm_latency[phase] <= 2 * slm_latency["ok"] + 0.25, slm_latency
