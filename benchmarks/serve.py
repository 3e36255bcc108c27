"""Load on the COREA server: N concurrent clients (the `openai` async client) over 127.0.0.1, each
sending a fixed number of GSM8K questions one after another, against a one-request-at-a-time
baseline.

  python -m benchmarks.serve --config=configs/serve/tiny.py --clients=32 --requests=8

Starts `launch.serve` in a subprocess (its own workdir), warms it up (one burst, so every batch
shape is compiled before the clock starts), then measures, for each phase: p50 / p95 / p99
latency, requests/s and generated tokens/s (completion tokens, both calls of a deferred request).
Phases: baseline (one client, `corea`, one request at a time), corea and corea-slm (N clients).
Checks that no request failed and that records.jsonl holds every request exactly once; reads the
mean batch occupancy (requests per decode chunk) from /metrics. Prints a table and writes
--out (JSON).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
from absl import app, flags

_CONFIG = flags.DEFINE_string("config", "configs/serve/tiny.py", "Server config file.")
_CLIENTS = flags.DEFINE_integer("clients", 32, "Concurrent clients.")
_REQUESTS = flags.DEFINE_integer("requests", 8, "Requests per client.")
_BASELINE = flags.DEFINE_integer("baseline_requests", 32, "Requests of the one-at-a-time baseline.")
_MAX_TOKENS = flags.DEFINE_integer("max_tokens", 32, "max_tokens of every request.")
_OVERRIDES = flags.DEFINE_multi_string("override", [], "--config.* overrides passed to the server.")
_OUT = flags.DEFINE_string("out", "", "Write the results here (JSON).")
_START_TIMEOUT = flags.DEFINE_float("start_timeout_s", 900, "Seconds to wait for the server.")

REPO = Path(__file__).resolve().parents[1]


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=60) as response:
        return response.read().decode()


def questions(n: int) -> list[str]:
    from corea_jax.cascade import datasets

    return [item.question for item in datasets.load_items("gsm8k", split="test", limit=n)]


async def _phase(client, model: str, work: list[list[str]], max_tokens: int) -> dict:
    """Each inner list is one client's questions, asked one after another; the clients run at once."""
    latencies, tokens, ids, failures = [], 0, [], []

    async def one_client(qs):
        nonlocal tokens
        for q in qs:
            start = time.perf_counter()
            try:
                r = await client.chat.completions.create(model=model, max_tokens=max_tokens,
                                                         messages=[{"role": "user", "content": q}])
            except Exception as err:  # noqa: BLE001 - counted, reported
                failures.append(repr(err))
                continue
            latencies.append(time.perf_counter() - start)
            tokens += r.usage.completion_tokens
            ids.append(r.id)

    start = time.perf_counter()
    await asyncio.gather(*(one_client(qs) for qs in work))
    wall = time.perf_counter() - start
    lat = np.asarray(latencies)
    return dict(model=model, clients=len(work), requests=sum(map(len, work)), ok=len(ids), failed=len(failures),
                errors=failures[:3], wall_s=wall, requests_per_s=len(ids) / wall, tokens_per_s=tokens / wall,
                p50_s=float(np.quantile(lat, 0.5)), p95_s=float(np.quantile(lat, 0.95)),
                p99_s=float(np.quantile(lat, 0.99)), ids=ids)


async def _run(url: str, qs: list[str]) -> list[dict]:
    import openai

    from tests.serving_helpers import metric

    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="none", timeout=600, max_retries=0)
    n, k = _CLIENTS.value, _REQUESTS.value
    split = [[qs[(c * k + j) % len(qs)] for j in range(k)] for c in range(n)]
    # Warm-up until a pass compiles nothing new (batch and prompt-length shapes compile once each).
    for _ in range(4):
        compiled = metric(_get(f"{url}/metrics"), "corea_compiled_programs")
        await _phase(client, "corea", split, _MAX_TOKENS.value)
        await _phase(client, "corea-slm", split[:1], _MAX_TOKENS.value)
        if metric(_get(f"{url}/metrics"), "corea_compiled_programs") == compiled:
            break
    results = []
    for model, work in (("corea", [qs[:_BASELINE.value]]), ("corea", split), ("corea-slm", split)):
        before = _get(f"{url}/metrics")
        result = await _phase(client, model, work, _MAX_TOKENS.value)
        after = _get(f"{url}/metrics")
        for engine in ("slm", "llm"):
            chunks = (metric(after, "corea_batch_occupancy_count", engine=engine)
                      - metric(before, "corea_batch_occupancy_count", engine=engine))
            rows = (metric(after, "corea_batch_occupancy_sum", engine=engine)
                    - metric(before, "corea_batch_occupancy_sum", engine=engine))
            result[f"occupancy_{engine}"] = rows / chunks if chunks else None
        answered = (metric(after, "corea_answers_total", model=model)
                    - metric(before, "corea_answers_total", model=model))
        by_llm = (metric(after, "corea_answers_total", model=model, answered_by="llm")
                  - metric(before, "corea_answers_total", model=model, answered_by="llm"))
        result["llm_share"] = by_llm / answered if answered else None
        result["compiled_during"] = (metric(after, "corea_compiled_programs")
                                     - metric(before, "corea_compiled_programs"))
        results.append(result)
        print(f"{model:10s} clients {len(work):3d}: {result['requests_per_s']:.2f} req/s, "
              f"p50 {result['p50_s']:.3f} s, p99 {result['p99_s']:.3f} s, failed {result['failed']}", flush=True)
    await client.close()
    return results


def main(argv):
    del argv
    for name in ("httpx", "httpx2", "openai"):  # one line per request otherwise
        logging.getLogger(name).setLevel(logging.WARNING)
    sys.path.insert(0, str(REPO))
    from tests.serving_helpers import free_port, wait_until_healthy

    workdir = Path(tempfile.mkdtemp(prefix="serve_bench_"))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "launch.serve", f"--config={_CONFIG.value}", f"--workdir={workdir}",
           f"--port={port}", *[f"--config.{o}" for o in _OVERRIDES.value]]
    env = {**os.environ, "COREA_API_KEYS": ""}
    log = open(workdir / "server.log", "w")
    server = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until_healthy(url, server, _START_TIMEOUT.value, workdir / "server.log")
        qs = questions(max(_CLIENTS.value * _REQUESTS.value, _BASELINE.value))
        results = asyncio.run(_run(url, qs))
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=600)
    logged = [json.loads(line)["request_id"] for line in (workdir / "records.jsonl").read_text().splitlines()]
    for r in results:
        r["logged_exactly_once"] = all(logged.count(i) == 1 for i in r.pop("ids"))
    baseline = results[0]["requests_per_s"]
    for r in results:
        r["speedup_vs_baseline"] = r["requests_per_s"] / baseline
    cpu = next((line.split(":", 1)[1].strip() for line in subprocess.run(
        ["lscpu"], capture_output=True, text=True).stdout.splitlines() if line.startswith("Model name")), "?")
    report = dict(config=_CONFIG.value, overrides=_OVERRIDES.value, max_tokens=_MAX_TOKENS.value,
                  date=time.strftime("%Y-%m-%d"), cpu=cpu, cores=os.cpu_count(), python=platform.python_version(),
                  phases=results)
    print("\n| phase | clients x requests | req/s | x baseline | gen tok/s | p50 s | p95 s | p99 s | occupancy (slm) | LLM share | failed | logged once |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, r in zip(("baseline (corea, one at a time)", "corea", "corea-slm"), results):
        occ = "-" if r["occupancy_slm"] is None else f"{r['occupancy_slm']:.1f}"
        print(f"| {name} | {r['clients']} x {r['requests'] // r['clients']} | {r['requests_per_s']:.2f} | "
              f"{r['speedup_vs_baseline']:.1f} | {r['tokens_per_s']:.0f} | {r['p50_s']:.3f} | {r['p95_s']:.3f} | "
              f"{r['p99_s']:.3f} | {occ} | {r['llm_share']:.0%} | {r['failed']} | {r['logged_exactly_once']} |")
    if _OUT.value:
        Path(_OUT.value).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    app.run(main)
