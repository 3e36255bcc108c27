"""A COREA server for the serving tests: the tiny config (random models, no download), started
in-process under uvicorn on 127.0.0.1 and a free port, stopped at the end."""

from __future__ import annotations

import socket
import threading
import time

from configs.serve import tiny

START_TIMEOUT_S = 600  # model build and compiles on a loaded 2-core box


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
        import uvicorn

        self.app = app
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
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
