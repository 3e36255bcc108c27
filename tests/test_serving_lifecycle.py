"""The server as `python -m launch.serve` runs it: no keys means loopback only, SIGHUP loads a
re-fitted tau without a restart, SIGTERM stops accepting and drains the requests in flight, leaving
one whole log line per request."""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import openai
import pytest

from tests.helpers import REPO
from tests.serving_helpers import START_TIMEOUT_S, client, free_port, metric

pytestmark = pytest.mark.slow  # servers, subprocesses, notebooks, training runs: `pytest -m slow`

QUESTIONS = ["What is 7 + 5?", "How many legs do 3 cats have?", "What is half of 18?",
             "Sam has 9 apples and gives away 4. How many are left?", "What is 6 times 7?",
             "A box holds 12 eggs. How many eggs are in 3 boxes?"]
SMALL = [  # configs/serve/tiny.py, both models in one shape; long answers so requests stay in flight
    "--config.slm.slots=2", "--config.llm.slots=2", "--config.slm.max_new_tokens=512",
    "--config.slm.max_prompt_tokens=512", "--config.llm.max_prompt_tokens=512",
    "--config.llm.arch.hidden_size=64", "--config.llm.arch.intermediate_size=128",
    "--config.llm.arch.num_layers=2"]


def _serve(workdir, *flags):
    return [sys.executable, "-m", "launch.serve", "--config=configs/serve/tiny.py", f"--workdir={workdir}",
            *flags]


def _get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


def _wait_for(predicate, timeout: float, proc=None):
    deadline = time.monotonic() + timeout
    while True:
        try:
            if predicate():
                return
        except OSError:
            pass
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the server exited with {proc.returncode}")
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def test_no_api_keys_means_loopback_only(tmp_path):
    env = {**os.environ, "COREA_API_KEYS": ""}
    refused = subprocess.run(_serve(tmp_path, "--host=0.0.0.0", f"--port={free_port()}"), cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=300)
    assert refused.returncode != 0
    assert "refusing to listen on '0.0.0.0' without API keys" in refused.stderr
    assert not (tmp_path / "records.jsonl").exists()


def test_sighup_loads_a_refitted_tau_and_sigterm_drains_in_flight_requests(tmp_path):
    from corea_jax.serving.refit import refit

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "COREA_API_KEYS": "", "JAX_PLATFORMS": "cpu"}
    with open(tmp_path / "server.log", "w") as out:
        proc = subprocess.Popen(_serve(tmp_path, f"--port={port}", *SMALL), cwd=REPO, env=env, stdout=out,
                                stderr=subprocess.STDOUT)
    try:
        _wait_for(lambda: _get_json(f"{url}/health")["status"] == "ok", START_TIMEOUT_S, proc)
        c = client(url)
        for question in QUESTIONS[:4]:
            c.chat.completions.create(model="corea", max_tokens=4,
                                      messages=[{"role": "user", "content": question}])
        fitted = refit(tmp_path, "usage", confidence_source="sequence_mean_prob", target_usage=0.5, min_items=4)
        assert fitted["items"] == 4 and fitted["evidence"]["llm_share_at_tau"] == 0.5
        assert _get_json(f"{url}/health")["tau"] == 0.5  # the config's, until SIGHUP
        proc.send_signal(signal.SIGHUP)
        _wait_for(lambda: _get_json(f"{url}/health")["tau"] == pytest.approx(fitted["tau"]), 30, proc)
        assert _get_json(f"{url}/health")["threshold"]["rule"] == "usage"

        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            futures = [pool.submit(c.chat.completions.create, model="corea-slm", max_tokens=512,
                                   messages=[{"role": "user", "content": q}]) for q in QUESTIONS]
            _wait_for(lambda: metric(urllib.request.urlopen(f"{url}/metrics", timeout=30).read().decode(),
                                     "corea_batch_busy_slots", engine="slm") >= 1, 120, proc)
            proc.send_signal(signal.SIGTERM)
            time.sleep(0.5)
            with pytest.raises(OSError):  # no longer accepting
                socket.create_connection(("127.0.0.1", port), timeout=5).close()
            answers = [f.result(timeout=600) for f in futures]
        assert all(a.choices[0].message.content for a in answers)  # every request in flight finished
        # uvicorn re-raises the signal once drained: the exit status says "ended by SIGTERM".
        assert proc.wait(timeout=300) in (0, -signal.SIGTERM)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    data = (tmp_path / "records.jsonl").read_text()
    assert data.endswith("\n")
    lines = [json.loads(line) for line in data.splitlines()]
    assert len(lines) == 4 + len(QUESTIONS)
    assert sorted(line["request_id"] for line in lines[4:]) == sorted(a.id for a in answers)


def _http_llm_flags(url: str) -> list[str]:
    return ["--config.llm.backend=http", f"--config.llm.http.base_url={url}", "--config.llm.http.model=fake",
            "--config.llm.http.max_retries=0", "--config.llm.http.logprobs=False",
            "--config.llm.non_embedding_params=1000000", "--config.llm.http.max_concurrency=4"]


def test_sigterm_past_the_drain_time_answers_503_and_logs_every_request(tmp_path):
    """Four corea requests held by a stuck LLM when SIGTERM comes, drain time 2 s: each client
    gets a 503 in OpenAI's schema, each request one log line, and the server exits."""
    from tests.serving_helpers import FakeLLM

    fake = FakeLLM()
    fake.mode = "hold"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "COREA_API_KEYS": "", "JAX_PLATFORMS": "cpu"}
    with open(tmp_path / "server.log", "w") as out:
        proc = subprocess.Popen(_serve(tmp_path, f"--port={port}", "--config.threshold.tau=1.0",
                                       "--config.drain_timeout_s=2", *_http_llm_flags(fake.url)),
                                cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_for(lambda: _get_json(f"{url}/health")["status"] == "ok", START_TIMEOUT_S, proc)
        c = client(url, timeout=120)
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(c.chat.completions.create, model="corea", max_tokens=4,
                                   messages=[{"role": "user", "content": q}]) for q in QUESTIONS[:4]]
            fake.wait_for(4)
            proc.send_signal(signal.SIGTERM)
            errors = []
            for future in futures:
                with pytest.raises(openai.APIStatusError) as err:
                    future.result(timeout=120)
                errors.append(err.value)
        fake.release.set()  # the stuck calls end, so the process can exit
        assert proc.wait(timeout=120) in (0, -signal.SIGTERM)
    finally:
        fake.stop()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert [e.status_code for e in errors] == [503] * 4
    assert {e.body["code"] for e in errors} == {"shutting_down"}
    lines = [json.loads(line) for line in (tmp_path / "records.jsonl").read_text().splitlines()]
    assert sorted(line["request_id"] for line in lines) == sorted(e.response.headers["x-request-id"] for e in errors)
    assert all(line["finish_reason"] == "shutdown" and line["llm"]["failed"] for line in lines)
    log_text = (tmp_path / "server.log").read_text()
    assert sum(f"{e.response.headers['x-request-id']} model=corea status=503" in log_text for e in errors) == 4


def test_sighup_during_start_up_is_applied_and_a_bad_threshold_file_stops_the_start(tmp_path):
    (tmp_path / "threshold.json").write_text("0.3")
    bad = subprocess.run(_serve(tmp_path, f"--port={free_port()}", *SMALL), cwd=REPO, capture_output=True,
                         text=True, timeout=300, env={**os.environ, "COREA_API_KEYS": ""})
    assert bad.returncode != 0 and "Traceback" not in bad.stderr
    assert f"{tmp_path / 'threshold.json'}: expected a JSON object with a tau field" in bad.stderr

    (tmp_path / "threshold.json").write_text(json.dumps({"tau": 0.25, "rule": "fixed"}))
    port = free_port()
    env = {**os.environ, "COREA_API_KEYS": "", "JAX_PLATFORMS": "cpu"}
    with open(tmp_path / "server.log", "w") as out:
        proc = subprocess.Popen(_serve(tmp_path, f"--port={port}", *SMALL), cwd=REPO, env=env, stdout=out,
                                stderr=subprocess.STDOUT)
    try:
        time.sleep(1.0)  # the interpreter is still importing (an attacker's review killed it here)
        proc.send_signal(signal.SIGHUP)
        _wait_for(lambda: "starting: loading the models" in (tmp_path / "server.log").read_text(), 300, proc)
        (tmp_path / "threshold.json").write_text(json.dumps({"tau": 0.75, "rule": "fixed"}))
        proc.send_signal(signal.SIGHUP)  # what refit --pid does to a server still loading its models
        _wait_for(lambda: _get_json(f"http://127.0.0.1:{port}/health")["status"] == "ok", START_TIMEOUT_S, proc)
        assert _get_json(f"http://127.0.0.1:{port}/health")["tau"] == 0.75
    finally:
        proc.terminate()
        proc.wait(timeout=300)


def test_refit_pid_signals_only_a_server(tmp_path):
    from tests.test_serving_refit import _line, _write

    _write(tmp_path / "records.jsonl", [_line(i, i / 10) for i in range(10)])
    bystander = subprocess.Popen(["sleep", "60"])
    try:
        run = subprocess.run([sys.executable, "-m", "launch.refit", f"--workdir={tmp_path}", "--rule=usage",
                              "--min_items=5", f"--pid={bystander.pid}"], cwd=REPO, capture_output=True,
                             text=True, timeout=300)
        assert run.returncode != 0 and f"pid: process {bystander.pid} is not a launch.serve server" in run.stderr
        assert bystander.poll() is None  # not killed by a SIGHUP meant for a server
    finally:
        bystander.kill()
        bystander.wait()
