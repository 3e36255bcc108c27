"""The app factory and the server: `create_app(config, workdir, api_keys)` builds the models, the
service and the routes; `serve(...)` runs it under uvicorn.

Lifecycle: the engines start (and compile on one warm-up request each) before the first request
is accepted; on SIGTERM or SIGINT uvicorn stops accepting, lets the requests in flight finish
(at most config.drain_timeout_s), then the shadow calls finish and their lines are written, then
the engines stop. SIGHUP reloads DIR/threshold.json (a `refit`) without a restart.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import signal
import time
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from corea_jax.serving import routes
from corea_jax.serving.answerers import LocalAnswerer, build_answerer
from corea_jax.serving.auth import KeyRing, RateLimiter, is_loopback
from corea_jax.serving.chat import ChatService
from corea_jax.serving.metrics import ServerMetrics
from corea_jax.serving.protocol import APIError, bad_request, param_name

log = logging.getLogger(__name__)


@dataclasses.dataclass
class ServerState:
    service: ChatService
    keys: KeyRing
    limiter: RateLimiter
    metrics: ServerMetrics
    started: int


def validate_config(config) -> None:
    from corea_jax import grading
    from corea_jax.confidence import SOURCES

    if config.confidence_source not in SOURCES:
        raise ValueError(f"confidence_source: expected one of {SOURCES}, found {config.confidence_source!r}")
    if config.task not in grading.TASKS:
        raise ValueError(f"task: expected one of {grading.TASKS}, found {config.task!r}")
    tau = config.threshold.tau
    if not 0 <= tau <= 1:
        raise ValueError(f"threshold.tau: expected a number in [0, 1], found {tau!r}")
    for role in ("slm", "llm"):
        spec = config[role]
        if spec.get("backend", "local") == "local":
            for key in ("slots", "max_prompt_tokens", "max_new_tokens"):
                if not (isinstance(spec[key], int) and spec[key] >= 1):
                    raise ValueError(f"{role}.{key}: expected an integer >= 1, found {spec[key]!r}")
    if config.slm.get("backend", "local") != "local":
        raise ValueError("slm.backend: expected 'local' (the SLM's confidence needs the local engine)")


def create_app(config, workdir, api_keys=(), *, warmup: bool = True) -> FastAPI:
    """The ASGI app serving config.slm / config.llm; DIR/records.jsonl logs every request."""
    validate_config(config)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    metrics = ServerMetrics()
    slm = build_answerer(config.slm, "slm", task=config.task, workdir=workdir, metrics=metrics, seed=config.seed)
    llm = build_answerer(config.llm, "llm", task=config.task, workdir=workdir, metrics=metrics,
                         seed=config.seed + 1)
    service = ChatService(config, workdir, slm, llm, metrics)
    engines = [a for a in (slm, llm) if isinstance(a, LocalAnswerer)]

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        for answerer in engines:
            answerer.batcher.start()
        if warmup:  # compile before the first request is accepted
            for answerer in engines:
                await answerer.answer("What is 1 + 1?", 1, [])
        log.info("serving: tau = %s", service.tau)
        try:
            yield
        finally:
            await service.close()
            for answerer in engines:
                answerer.batcher.close(timeout=60)

    app = FastAPI(title="corea_jax", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.corea = ServerState(service, KeyRing(list(api_keys)),
                                  RateLimiter(config.limits.requests_per_minute, config.limits.burst),
                                  metrics, int(time.time()))
    app.include_router(routes.router)

    @app.exception_handler(APIError)
    async def _api_error(request: Request, err: APIError):
        return routes.error_response(err)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, err: RequestValidationError):
        first = err.errors()[0]
        param = param_name(tuple(first.get("loc", ())))
        return routes.error_response(bad_request(param, f"{param}: {first.get('msg')}"))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, err: StarletteHTTPException):
        return routes.error_response(APIError(err.status_code, str(err.detail), type="not_found_error"
                                              if err.status_code == 404 else "invalid_request_error"))

    return app


def check_listen(host: str, api_keys) -> None:
    if not api_keys and not is_loopback(host):
        raise ValueError(f"host: refusing to listen on {host!r} without API keys; set COREA_API_KEYS "
                         "(comma-separated) or listen on 127.0.0.1")


def serve(config, workdir, *, host: str = "127.0.0.1", port: int = 8000, api_keys=()) -> None:
    """Runs the server until SIGTERM / SIGINT (draining in-flight requests); SIGHUP re-reads tau."""
    import uvicorn

    check_listen(host, api_keys)
    app = create_app(config, workdir, api_keys)
    service = app.state.corea.service
    signal.signal(signal.SIGHUP, lambda *_: service.reload_threshold())
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="info",
                                           timeout_graceful_shutdown=config.drain_timeout_s))
    server.run()
