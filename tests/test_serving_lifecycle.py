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

import pytest

from tests.helpers import REPO
from tests.serving_helpers import START_TIMEOUT_S, client, free_port, metric

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


@pytest.mark.parametrize("name", ["configs.serve.tiny", "configs.serve.qwen_coder_cpu",
                                  "configs.paper.serve_qwen25_7b_32b"])
def test_every_serve_config_is_valid(name):
    import importlib

    from corea_jax.serving.app import validate_config

    validate_config(importlib.import_module(name).get_config())
