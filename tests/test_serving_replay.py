"""The traffic replayer (corea_jax/serving/replay.py): items and golds, the shift source, and a
replay against a fake server on 127.0.0.1 (uvicorn in a thread): one line per request, feedback
with the right ids and verdicts, 503s retried after Retry-After, /metrics rows."""

from __future__ import annotations

import json
import re
import threading
import time

import pytest

from corea_jax.data import chains
from corea_jax.serving import replay, traffic
from tests.serving_helpers import free_port

KEY = "sk-replay-test"


def _toy_split(path, n=20, seed=0):
    """A split file as launch.reproduce writes it (answers end in "#### n"; operands < 100)."""
    return chains.write_jsonl(chains.make_problems(n, seed, max_ops=2, max_digits=2), path)


def _value(question: str) -> int:
    """The chain's answer, computed the way the question defines it."""
    values = {}
    for definition in question.rstrip("?").split(";")[:-1]:
        var, expr = definition.split("=")
        match = re.fullmatch(r"([a-z])([+-])(\d+)", expr)
        values[var] = (int(expr) if match is None else
                       values[match.group(1)] + (1 if match.group(2) == "+" else -1) * int(match.group(3)))
    return values[question.rstrip("?").split(";")[-1]]


def _operands(question: str) -> list[int]:
    return [int(x) for x in re.findall(r"\d+", question)]


# --- items -------------------------------------------------------------------------------------

def test_gold_is_what_follows_the_last_marker_else_the_whole_answer():
    assert traffic.gold_of("a=4\nb=a+3=4+3=7\n#### 7") == "7"
    assert traffic.gold_of("She pays 3 * 4 = 12.\n#### 1,234 ") == "1,234"
    assert traffic.gold_of("  42 ") == "42"


def test_read_items_takes_the_split_files_golds_and_ids(tmp_path):
    path = _toy_split(tmp_path / "test.jsonl", n=5)
    items = traffic.read_items(path)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [i.id for i in items] == [r["id"] for r in rows]
    assert [i.gold for i in items] == [str(_value(r["question"])) for r in rows]
    assert all(i.source == str(path) for i in items)

    other = tmp_path / "gsm.jsonl"
    other.write_text('{"question": "q1", "answer": "so 3\\n#### 3"}\n\n{"question": "q2"}\n')
    got = traffic.read_items(other)
    assert [(i.id, i.gold) for i in got] == [("gsm-1", "3"), ("gsm-3", None)]


@pytest.mark.parametrize("text, message", [
    ('{"question": "q", "answer": "1"}\nnot json\n', "bad.jsonl:2"),
    ('{"answer": "1"}\n', "bad.jsonl:1"),
    ('{"question": "q", "answer": 3}\n', "`answer` must be a string"),
    ("\n", "holds no items"),
])
def test_read_items_refuses_a_bad_file_naming_the_line(tmp_path, text, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(text)
    with pytest.raises(ValueError, match=re.escape(message)):
        traffic.read_items(path)
    with pytest.raises(FileNotFoundError, match="data: no file"):
        traffic.read_items(tmp_path / "missing.jsonl")


def test_items_are_cycled_in_a_seeded_order_each_pass_whole(tmp_path):
    items = traffic.read_items(_toy_split(tmp_path / "test.jsonl", n=7))
    stream = traffic.cycled(items, seed=3)
    first, second = [next(stream) for _ in items], [next(stream) for _ in items]
    assert sorted(i.id for i in first) == sorted(i.id for i in second) == sorted(i.id for i in items)
    assert [i.id for i in first] != [i.id for i in second]  # reshuffled (7! orders: a tie is unlikely)
    again = traffic.cycled(items, seed=3)
    assert [next(again).id for _ in range(14)] == [i.id for i in first + second]
    other = traffic.cycled(items, seed=4)
    assert [next(other).id for _ in items] != [i.id for i in first]


# --- the shift source --------------------------------------------------------------------------

def test_chain_specs_parse_to_ranges():
    assert traffic.parse_chains_spec("chains:") == traffic.ChainSpec(1, 2, 1, 2, False)
    assert traffic.parse_chains_spec("chains:digits=3") == traffic.ChainSpec(1, 2, 3, 3, False)
    assert traffic.parse_chains_spec("chains:max_ops=4") == traffic.ChainSpec(1, 4, 1, 2, False)
    assert traffic.parse_chains_spec("chains: ops=3-4 , digits=2, random_names=1") == traffic.ChainSpec(3, 4, 2, 2, True)
    assert traffic.parse_chains_spec("chains:min_digits=2,max_digits=3") == traffic.ChainSpec(1, 2, 2, 3, False)


@pytest.mark.parametrize("spec, message", [
    ("chain:digits=3", "starts with 'chains:'"),
    ("chains:digits", "expected KEY=VALUE"),
    ("chains:size=3", "unknown key 'size'"),
    ("chains:digits=x", "digits expects N or A-B"),
    ("chains:max_ops=2-3", "max_ops expects one number"),
    ("chains:ops=3-2", "ops expects 1 <= min <= max"),
    ("chains:digits=0", "digits expects 1 <= min <= max"),
    ("chains:random_names=yes", "random_names expects 0 or 1"),
    ("chains:ops=8,digits=3", "up to 72 characters"),
])
def test_bad_chain_specs_are_refused_naming_the_key(spec, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        traffic.parse_chains_spec(spec)


def test_the_shift_brings_items_the_toy_never_trained_on(tmp_path):
    data = _toy_split(tmp_path / "test.jsonl", n=30)
    planned = list(traffic.plan(str(data), 60, seed=1, shift_at=20, shift_to="chains:digits=3"))
    before, after = planned[:20], planned[20:]
    assert [p.index for p in planned] == list(range(60))
    assert {p.phase for p in before} == {"before"} and {p.phase for p in after} == {"after"}
    assert all(max(_operands(p.item.question)) < 100 for p in before)
    assert all(p.item.source == "chains:digits=3" for p in after)
    assert sum(max(_operands(p.item.question)) >= 100 for p in after) >= 35  # three-digit operands
    assert all(len(p.item.question) <= traffic.MAX_CHAIN_QUESTION_CHARS for p in after)
    assert all(p.item.gold == str(_value(p.item.question)) for p in after)
    assert len({p.item.question for p in after}) == 40  # drawn, not cycled

    longer = list(traffic.plan(str(data), 30, shift_at=0, shift_to="chains:ops=3-4"))
    assert {p.item.question.count(";") - 1 for p in longer} <= {3, 4} and all(p.phase == "after" for p in longer)
    shifted = list(traffic.plan(str(data), 5, shift_at=2, shift_to=str(data)))
    assert [p.phase for p in shifted] == ["before"] * 2 + ["after"] * 3


@pytest.mark.parametrize("kwargs, message", [
    (dict(limit=0), "limit: expected"),
    (dict(limit=5, shift_at=3), "set both or neither"),
    (dict(limit=5, shift_at=6, shift_to="chains:"), "shift_at: expected"),
    (dict(limit=5, shift_at=2, shift_to="chains:ops=9"), "shift_to:"),
])
def test_plan_checks_its_arguments_before_sending(tmp_path, kwargs, message):
    data = _toy_split(tmp_path / "test.jsonl", n=3)
    with pytest.raises(ValueError, match=message):
        traffic.plan(str(data), **kwargs)


# --- pieces ------------------------------------------------------------------------------------

def test_retry_after_reads_seconds_and_dates():
    assert replay.retry_after_s("2") == 2.0
    assert replay.retry_after_s(None) is None and replay.retry_after_s("soon") is None
    import email.utils

    assert 8 < replay.retry_after_s(email.utils.formatdate(time.time() + 10, usegmt=True)) <= 10


def test_retries_wait_as_asked_then_give_up():
    settings = replay.Settings(base_url="http://x/v1", retries=2, max_retry_wait_s=5)
    waits, calls = [], []

    def refuse():
        calls.append(1)
        raise replay.Retryable(503, [7.0, None, 1.0][len(calls) - 1], "busy")

    with pytest.raises(replay.Retryable) as err:
        replay.with_retries(refuse, settings, sleep=waits.append)
    assert waits == [5, 1.0] and len(calls) == 3 and err.value.attempts == 3  # capped; backoff 0.5 * 2
    assert replay.with_retries(lambda: "ok", settings, sleep=waits.append) == ("ok", 1)


def test_settings_refuse_bad_values_naming_the_field():
    for kwargs, field in ((dict(base_url="localhost:8000"), "base_url"), (dict(rate=-1), "rate"),
                          (dict(concurrency=0), "concurrency"), (dict(retries=-1), "retries"),
                          (dict(scrape_every=-5), "scrape_every")):
        with pytest.raises(ValueError, match=f"^{field}:"):
            replay.Settings(**{"base_url": "http://h/v1", **kwargs})
    s = replay.Settings(base_url="http://h:1/v1/", api_key="k")
    assert (s.feedback_url, s.metrics_url) == ("http://h:1/v1/corea/feedback", "http://h:1/metrics")
    assert s.headers == {"Authorization": "Bearer k"}


METRICS_TEXT = """# HELP corea_tau The threshold.
# TYPE corea_tau gauge
corea_tau 0.7
# HELP corea_drift_statistic Drift.
# TYPE corea_drift_statistic gauge
corea_drift_statistic{stream="confidence"} 1.5
corea_drift_statistic{stream="outcome"} 0.25
# HELP corea_requests Requests.
# TYPE corea_requests counter
corea_requests_total{model="corea",status="200"} %d
# HELP process_cpu_seconds CPU.
# TYPE process_cpu_seconds counter
process_cpu_seconds_total 3.0
"""


def test_metrics_flatten_to_corea_samples_only():
    samples = replay.corea_samples(METRICS_TEXT % 4)
    assert samples == {"corea_tau": 0.7, "corea_drift_statistic{stream=confidence}": 1.5,
                       "corea_drift_statistic{stream=outcome}": 0.25,
                       "corea_requests_total{model=corea,status=200}": 4.0}


def test_summary_counts_phases_errors_and_feedback():
    def line(index, phase, status=200, correct=True, by="slm", latency=0.1, feedback=200, version=1):
        return dict(index=index, phase=phase, status=status, error=None if status == 200 else "boom",
                    correct=correct if status == 200 else None, attempts=1, latency_s=latency,
                    corea={"answered_by": by, "threshold_version": version} if status == 200 else None,
                    feedback={"status": feedback, "result": "recorded" if feedback == 200 else None}
                    if status == 200 else None)

    lines = [line(0, "before"), line(1, "before", correct=False, by="llm", latency=0.3),
             line(2, "before", status=503), line(3, "after", correct=False, feedback=404, version=2),
             dict(line(4, "after", status=None), error="timeout")]
    s = replay.summarize(lines)
    assert (s["requests"], s["ok"], s["graded"]) == (5, 3, 3)
    assert s["errors"] == {"503": 1, "timeout": 1}
    assert s["feedback"] == {"200:recorded": 2, "404": 1}
    assert s["phases"]["before"]["accuracy"] == 0.5 and s["phases"]["after"]["accuracy"] == 0.0
    assert s["phases"]["before"]["llm_share"] == 0.5 and s["llm_share"] == pytest.approx(1 / 3)
    assert s["phases"]["before"]["mean_latency_s"] == pytest.approx(0.2)
    assert s["threshold_versions"] == ["1", "2"]
    text = replay.describe(s)
    assert "503: 1" in text and "before" in text and "50.0%" in text and len(text.splitlines()) <= 24


def test_appends_from_many_threads_stay_whole_lines(tmp_path):
    out = replay.JsonlAppender(tmp_path / "x.jsonl")
    big = "y" * 70_000  # past a pipe buffer's size: still one line

    def write(k):
        for i in range(20):
            out.append({"k": k, "i": i, "pad": big if i == 0 else ""})

    threads = [threading.Thread(target=write, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out.close()
    rows = [json.loads(line) for line in (tmp_path / "x.jsonl").read_text().splitlines()]
    assert sorted((r["k"], r["i"]) for r in rows) == [(k, i) for k in range(8) for i in range(20)]


# --- against a fake server ---------------------------------------------------------------------

class FakeCorea:
    """A COREA-shaped server on 127.0.0.1: chat completions with a `corea` object (correct on
    chains whose answer is even), /v1/corea/feedback (404 for an unknown id), /metrics. `refuse`
    maps a request number (1-based) to (status, Retry-After) answered instead."""

    def __init__(self, refuse=None):
        import uvicorn
        from starlette.applications import Starlette
        from starlette.responses import JSONResponse, PlainTextResponse
        from starlette.routing import Route

        self.refuse = dict(refuse or {})
        self.answers, self.feedback, self.chat_auth, self.lock = {}, [], [], threading.Lock()
        self.arrivals = []  # (request number, monotonic time, question)
        outer = self

        async def chat(request):
            body = await request.json()
            question = body["messages"][-1]["content"]
            with outer.lock:
                n = len(outer.arrivals) + 1
                outer.arrivals.append((n, time.monotonic(), question))
                outer.chat_auth.append(request.headers.get("authorization"))
            if n in outer.refuse:
                status, after = outer.refuse[n]
                return JSONResponse({"error": {"message": "busy", "type": "service_unavailable"}},
                                    status_code=status, headers={"Retry-After": after} if after else None)
            value = _value(question)
            right = value % 2 == 0
            rid = f"chatcmpl-{n}"
            with outer.lock:
                outer.answers[rid] = right
            corea = {"answered_by": "llm" if n % 3 == 0 else "slm", "confidence": 0.8, "tau": 0.5,
                     "deferred": n % 3 == 0, "shadow": False, "cost": 1.0, "llm_only_cost": 4.0,
                     "threshold_version": 1}
            return JSONResponse({
                "id": rid, "object": "chat.completion", "created": 0, "model": body["model"],
                "choices": [{"index": 0, "finish_reason": "stop", "message": {
                    "role": "assistant", "content": f"x\\boxed{{{value if right else value + 1}}}\nConfidence: 0.8"}}],
                "usage": {"prompt_tokens": 5, "completion_tokens": 5, "total_tokens": 10}, "corea": corea})

        async def feedback(request):
            body = await request.json()
            with outer.lock:
                outer.feedback.append((body, request.headers.get("authorization")))
                known = body["id"] in outer.answers
            if not known:
                return JSONResponse({"error": {"message": f"id: unknown {body['id']}"}}, status_code=404)
            return JSONResponse({"id": body["id"], "correct": body["correct"], "status": "recorded"})

        async def metrics(request):
            with outer.lock:
                count = len(outer.arrivals)
            return PlainTextResponse(METRICS_TEXT % count)

        app = Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"]),
                                Route("/v1/corea/feedback", feedback, methods=["POST"]),
                                Route("/metrics", metrics)])
        port = free_port()
        self.base_url = f"http://127.0.0.1:{port}/v1"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                                    lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "the fake server did not start"
            time.sleep(0.02)

    def stop(self):
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture
def fake():
    servers = []

    def start(**kwargs):
        servers.append(FakeCorea(**kwargs))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


def _read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_replay_writes_a_line_per_request_and_feeds_back_each_verdict(tmp_path, fake):
    server = fake(refuse={1: (503, "1")})
    data = _toy_split(tmp_path / "test.jsonl", n=10)
    settings = replay.Settings(base_url=server.base_url, api_key=KEY, rate=50.0, concurrency=4, scrape_every=5,
                               timeout_s=10)
    summary = replay.replay(settings, traffic.plan(str(data), 12, shift_at=8, shift_to="chains:digits=3"),
                            tmp_path / "out")
    lines = _read(tmp_path / "out" / "replay.jsonl")
    assert sorted(r["index"] for r in lines) == list(range(12)) and all(r["status"] == 200 for r in lines)
    assert [r["phase"] for r in sorted(lines, key=lambda r: r["index"])] == ["before"] * 8 + ["after"] * 4

    # The 503 was retried after its Retry-After (1 s), in the same request's line.
    retried = [r for r in lines if r["attempts"] == 2]
    assert len(retried) == 1 and retried[0]["latency_s"] >= 1.0
    refused, again = [t for _, t, q in server.arrivals if q == server.arrivals[0][2]][:2]
    assert again - refused >= 0.95
    assert all(r["attempts"] == 1 for r in lines if r is not retried[0])

    # Graded against the item's gold, fed back under the response's id with the same key.
    for r in lines:
        assert r["correct"] == server.answers[r["response_id"]]
        assert r["gold"] == str(_value(r["question"]))
        assert r["corea"]["threshold_version"] == 1 and set(r["corea"]) >= {"answered_by", "confidence", "tau"}
        assert r["feedback"] == {"status": 200, "result": "recorded", "error": None}
        assert r["scheduled_s"] <= r["sent_s"] + 0.05 and r["latency_s"] > 0
    fed = {body["id"]: body["correct"] for body, _ in server.feedback}
    assert fed == {r["response_id"]: r["correct"] for r in lines} and len(server.feedback) == 12
    assert {auth for _, auth in server.feedback} == set(server.chat_auth) == {f"Bearer {KEY}"}

    # A /metrics row every 5 requests sent and one at the end, corea_* samples only.
    rows = _read(tmp_path / "out" / "timeline.jsonl")
    assert [r["requests_sent"] for r in rows] == [5, 10, 12]
    assert all(r["status"] == 200 and r["error"] is None for r in rows)
    assert rows[-1]["samples"]["corea_drift_statistic{stream=confidence}"] == 1.5
    assert rows[-1]["samples"]["corea_requests_total{model=corea,status=200}"] == 13  # 12 and the 503
    assert not any(k.startswith("process") for r in rows for k in r["samples"])

    saved = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert saved == json.loads(json.dumps(summary))
    assert saved["requests"] == 12 and saved["errors"] == {} and saved["retried"] == 1
    assert saved["phases"]["before"]["requests"] == 8 and saved["llm_share"] == pytest.approx(
        sum(r["corea"]["answered_by"] == "llm" for r in lines) / 12)

    with pytest.raises(ValueError, match="already holds replay.jsonl"):
        replay.replay(settings, traffic.plan(str(data), 1), tmp_path / "out")


def test_refusals_and_errors_each_end_in_one_line(tmp_path, fake):
    server = fake(refuse={1: (429, "0"), 2: (429, "0"), 3: (400, None), 4: (500, None)})
    data = _toy_split(tmp_path / "test.jsonl", n=5)
    settings = replay.Settings(base_url=server.base_url, rate=0, concurrency=1, retries=1, scrape_every=0,
                               timeout_s=10)
    summary = replay.replay(settings, traffic.plan(str(data), 5), tmp_path / "out")
    lines = sorted(_read(tmp_path / "out" / "replay.jsonl"), key=lambda r: r["index"])
    assert [(r["status"], r["attempts"]) for r in lines] == [(429, 2), (400, 1), (500, 1), (200, 1), (200, 1)]
    assert all(r["error"] and r["feedback"] is None and r["correct"] is None for r in lines[:3])
    assert summary["errors"] == {"400": 1, "429": 1, "500": 1}
    assert [r["requests_sent"] for r in _read(tmp_path / "out" / "timeline.jsonl")] == [5]

    # No server at all: every request still has its line, and so has the scrape.
    server.stop()
    replay.replay(settings, traffic.plan(str(data), 2), tmp_path / "gone")
    gone = _read(tmp_path / "gone" / "replay.jsonl")
    assert len(gone) == 2 and all(r["status"] is None and r["error"] for r in gone)
    assert _read(tmp_path / "gone" / "timeline.jsonl")[0]["error"]


def test_unknown_ids_come_back_as_feedback_404s(tmp_path, fake):
    import httpx

    server = fake()
    settings = replay.Settings(base_url=server.base_url, retries=0)
    with httpx.Client() as http:
        got = replay.post_feedback(http, settings, "chatcmpl-none", True)
    assert got["status"] == 404 and got["result"] is None and "unknown" in got["error"]


# --- against the real server -------------------------------------------------------------------

@pytest.mark.slow
def test_a_replay_against_the_tiny_server(tmp_path):
    """The real server's wire format: the `corea` object read through the openai package, its
    /metrics flattened (the feedback route may answer 404 until the server has it)."""
    from corea_jax.serving import create_app
    from tests.serving_helpers import InProcessServer, tiny_config

    data = _toy_split(tmp_path / "test.jsonl", n=4)
    running = InProcessServer(create_app(tiny_config(**{"threshold.tau": 0.2}), tmp_path / "serve"))
    try:
        settings = replay.Settings(base_url=f"{running.url}/v1", rate=0, concurrency=2, scrape_every=2)
        summary = replay.replay(settings, traffic.plan(str(data), 4), tmp_path / "out")
    finally:
        running.stop()
    lines = _read(tmp_path / "out" / "replay.jsonl")
    assert len(lines) == 4 and all(r["status"] == 200 for r in lines), lines
    assert all(r["corea"]["answered_by"] in ("slm", "llm") and r["correct"] is not None for r in lines)
    assert all(r["feedback"]["status"] in (200, 404) for r in lines)
    rows = _read(tmp_path / "out" / "timeline.jsonl")
    assert [r["requests_sent"] for r in rows] == [2, 4, 4] and "corea_tau" in "".join(rows[-1]["samples"])
    assert summary["requests"] == 4
