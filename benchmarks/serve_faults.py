"""The COREA server while its LLM misbehaves: corea-slm latency and every request's outcome.

  python -m benchmarks.serve_faults --clients=32 --requests=4 --out=benchmarks/results/serve_faults.json

Starts `launch.serve` (configs/serve/tiny.py: the tiny SLM local, the LLM behind HTTP as
`--config.llm.backend=http` configures it) against a fake OpenAI-compatible LLM on 127.0.0.1
(tests/serving_helpers.FakeLLM), then runs four phases of `clients` threads, each sending
`requests` requests alternating `corea` and `corea-slm` (tau 0.5: every corea request defers):
  ok      the LLM answers at once
  slow    the LLM holds every call for --slow_s seconds
  fail    the LLM answers 500
  killed  the LLM's port is closed (connections refused)
Per phase and model: p50 / p95 / p99 latency and the outcomes by status. At the end: records.jsonl
lines == requests sent, and the /metrics request total == the same. Prints a table; --out (JSON).
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
from absl import app, flags

_CLIENTS = flags.DEFINE_integer("clients", 32, "Concurrent clients.")
_REQUESTS = flags.DEFINE_integer("requests", 4, "Requests per client per phase.")
_SLOW = flags.DEFINE_float("slow_s", 10.0, "How long the slow LLM holds each call.")
_OUT = flags.DEFINE_string("out", "", "Write the results here (JSON).")

REPO = Path(__file__).resolve().parents[1]
PHASES = ("ok", "slow", "fail", "killed")
QUESTION = "Tom buys 4 pens at 3 dollars each and pays with a 20 dollar bill. What is his change?"


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=60) as response:
        return response.read().decode()


def main(argv):
    del argv
    import openai

    sys.path.insert(0, str(REPO))
    from tests.serving_helpers import FakeLLM, free_port, metric, wait_until_healthy

    fake = FakeLLM()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    workdir = Path(tempfile.mkdtemp(prefix="serve_faults_"))
    flags_ = ["--config=configs/serve/tiny.py", f"--workdir={workdir}", f"--port={port}",
              "--config.threshold.tau=0.5", "--config.slm.slots=16", "--config.limits.max_queued=128",
              "--config.llm.backend=http", f"--config.llm.http.base_url={fake.url}", "--config.llm.http.model=fake",
              "--config.llm.http.max_retries=0", "--config.llm.http.logprobs=False",
              "--config.llm.http.max_concurrency=8", "--config.llm.non_embedding_params=1000000"]
    env = {**os.environ, "COREA_API_KEYS": "", "HF_HUB_OFFLINE": "1"}
    log = open(workdir / "server.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "launch.serve", *flags_], cwd=REPO, env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    results = {"phases": {}}
    try:
        wait_until_healthy(url, proc, 900, workdir / "server.log")
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", timeout=300, max_retries=0)

        def one(i: int):
            model = "corea" if i % 2 else "corea-slm"
            start = time.perf_counter()
            try:
                client.chat.completions.create(model=model, max_tokens=16,
                                               messages=[{"role": "user", "content": QUESTION}])
                status = 200
            except openai.APIStatusError as err:
                status = err.status_code
            return model, time.perf_counter() - start, status

        with concurrent.futures.ThreadPoolExecutor(_CLIENTS.value) as pool:  # warm-up: compile every shape
            list(pool.map(lambda i: one(2 * i), range(_CLIENTS.value)))
        sent = 0
        lines_before = len((workdir / "records.jsonl").read_text().splitlines())
        total_before = metric(_get(f"{url}/metrics"), "corea_requests_total")
        for phase in PHASES:
            if phase == "killed":
                fake.stop()
            else:
                fake.mode = {"slow": "hold"}.get(phase, phase)
                fake.release.clear()
            timer = threading.Timer(_SLOW.value, fake.release.set) if phase == "slow" else None
            if timer:
                timer.start()
            n = _CLIENTS.value * _REQUESTS.value
            with concurrent.futures.ThreadPoolExecutor(_CLIENTS.value) as pool:
                rows = list(pool.map(one, range(n)))
            if timer:
                timer.join()
            sent += n
            row = {}
            for model in ("corea-slm", "corea"):
                times = [t for m, t, _ in rows if m == model]
                statuses = {}
                for m, _, s in rows:
                    if m == model:
                        statuses[str(s)] = statuses.get(str(s), 0) + 1
                row[model] = dict(p50=float(np.quantile(times, 0.5)), p95=float(np.quantile(times, 0.95)),
                                  p99=float(np.quantile(times, 0.99)), statuses=statuses)
            results["phases"][phase] = row
            print(phase, json.dumps(row))
        time.sleep(1.0)  # the last lines' writes
        lines = len((workdir / "records.jsonl").read_text().splitlines()) - lines_before
        counted = metric(_get(f"{url}/metrics"), "corea_requests_total") - total_before
        results.update(sent=sent, logged=lines, counted=counted, clients=_CLIENTS.value,
                       requests=_REQUESTS.value, slow_s=_SLOW.value, machine=platform.processor() or platform.machine(),
                       date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
        print(f"sent {sent}, logged {lines}, counted {counted:g}")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
        fake.stop()
        log.close()
    if _OUT.value:
        Path(_OUT.value).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    app.run(main)
