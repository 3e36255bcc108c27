"""A COREA server for the serving tests: the tiny config (random models, no download), started
in-process under uvicorn on 127.0.0.1 and a free port, stopped at the end."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.request

from configs.serve import tiny

START_TIMEOUT_S = 600  # model build and compiles on a loaded 2-core box


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]



def wait_until_healthy(url: str, proc, timeout_s: float, log_path) -> None:
    """Polls `url`/health until the server at `url` (started as subprocess `proc`) says "ok";
    raises RuntimeError pointing at `log_path` if `proc` exits or `timeout_s` passes first."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=60) as response:
                if json.loads(response.read().decode())["status"] == "ok":
                    return
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the server did not start; see {log_path}")
        time.sleep(0.5)

def tiny_config(**overrides):
    """configs/serve/tiny.py at test size: 4 slots, 32 new tokens (few programs to compile)."""
    config = tiny.get_config()
    for spec in (config.slm, config.llm):
        spec.slots = 4
        spec.max_new_tokens = 32
        spec.max_prompt_tokens = 512
    # The LLM in the SLM's shape (other weights): one set of programs to compile, not two.
    config.llm.arch = config.slm.arch.copy_and_resolve_references()
    for key, value in overrides.items():
        target = config
        *path, last = key.split(".")
        for part in path:
            target = target[part]
        target[last] = value
    return config


class InProcessServer:
    """uvicorn serving `app` in a thread (no signal handlers: not the main thread)."""

    def __init__(self, app):
        from corea_jax.serving.app import DrainingServer

        self.app = app
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = DrainingServer(app, host="127.0.0.1", port=self.port, log_level="warning")
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the test server did not start")
            time.sleep(0.1)

    @property
    def service(self):
        return self.app.state.corea.service

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(120)


def client(url: str, key: str = "none", timeout: float = 120.0, retries: int = 0):
    import openai

    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, timeout=timeout, max_retries=retries)


def metric(text: str, name: str, **labels) -> float:
    """The sum of the Prometheus samples `name` with `labels` in /metrics text."""
    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


class FakeLLM:
    """An OpenAI-compatible chat endpoint on 127.0.0.1 whose faults a test switches on and off:
    `mode` "ok" answers "\\boxed{5}" (usage counted), "hold" keeps each request until `release`
    is set (a slow LLM, event-driven), "fail" answers 500, "bad_usage" answers with token counts
    no server could mean (-5, 1e308). `stop()` closes the port (connections
    refused); `kill()` also drops the connections of the requests it holds, unanswered. Counts requests and the most it held at once."""

    def __init__(self):
        import json
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.mode, self.release, self.dead = "ok", threading.Event(), False
        self.requests, self.in_flight, self.max_in_flight = [], 0, 0
        self.lock = threading.Lock()
        self.arrived = threading.Condition(self.lock)
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with outer.lock:
                    outer.requests.append(body)
                    outer.in_flight += 1
                    outer.max_in_flight = max(outer.max_in_flight, outer.in_flight)
                    outer.arrived.notify_all()
                try:
                    mode = outer.mode
                    if mode == "hold":
                        outer.release.wait(120)
                    if outer.dead:  # killed while this request was held: the connection just drops
                        import socket as socket_lib

                        self.close_connection = True
                        self.connection.shutdown(socket_lib.SHUT_RDWR)
                        return
                    status, payload = (500, b'{"error": {"message": "boom"}}') if mode == "fail" else \
                        (200, json.dumps(outer.completion(body, bad_usage=mode == "bad_usage")).encode())
                finally:
                    with outer.lock:
                        outer.in_flight -= 1
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    @staticmethod
    def completion(body, bad_usage: bool = False) -> dict:
        text = "The answer is \\boxed{5}.\nConfidence: 0.9"
        for stop in body.get("stop") or []:
            text = text.split(stop)[0]
        usage = {"prompt_tokens": -5, "completion_tokens": 1e308} if bad_usage else \
            {"prompt_tokens": 30, "completion_tokens": 7, "total_tokens": 37}
        return {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": text}}], "usage": usage}

    def wait_for(self, count: int, timeout: float = 120) -> None:
        """Until `count` requests have arrived in all."""
        with self.arrived:
            assert self.arrived.wait_for(lambda: len(self.requests) >= count, timeout), \
                f"{len(self.requests)} of {count} LLM requests arrived"

    def stop(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    def kill(self) -> None:
        """Dies mid-traffic: held requests lose their connections unanswered, the port closes."""
        self.dead = True
        self.stop()


def http_llm_config(url: str, **overrides):
    """tiny_config with the LLM behind `url` (an OpenAI-compatible endpoint), configured as a user
    configures it (`--config.llm.backend=http`)."""
    return tiny_config(**{"llm.backend": "http", "llm.http.base_url": url, "llm.http.model": "fake-llm",
                          "llm.http.max_retries": 0, "llm.http.timeout_s": 60.0, "llm.http.logprobs": False,
                          "llm.non_embedding_params": 1_000_000, "llm.lm_head_params": 0, "llm.max_new_tokens": 32,
                          **overrides})
