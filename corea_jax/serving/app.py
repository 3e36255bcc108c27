"""The app factory and the server: `create_app(config, workdir, api_keys)` builds the models, the
service and the routes; `serve(...)` runs it under uvicorn.

Lifecycle: the engines start (and compile on one warm-up request each) before the first request
is accepted; on SIGTERM or SIGINT uvicorn stops accepting and the requests in flight may finish
for config.drain_timeout_s; those still running then are answered with a 503 in OpenAI's schema
(and logged so), the shadow calls get what is left of the drain time, their lines are written,
and the engines stop. SIGHUP reloads DIR/threshold.json (a `refit`) without a restart; its
handler is installed first, so a SIGHUP during start-up is remembered, not fatal.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import signal
import time
from pathlib import Path

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from corea_jax.serving import config as config_lib
from corea_jax.serving import routes
from corea_jax.serving.answerers import LocalAnswerer, build_answerer
from corea_jax.serving.auth import KeyRing, LoopbackGuard, RateLimiter, is_loopback
from corea_jax.serving.chat import ChatService
from corea_jax.serving.metrics import ServerMetrics
from corea_jax.serving.protocol import APIError, bad_request, param_name, server_error

log = logging.getLogger(__name__)


@dataclasses.dataclass
class ServerState:
    service: ChatService
    keys: KeyRing
    limiter: RateLimiter
    metrics: ServerMetrics
    started: int


def validate_config(config) -> None:
    """`serving.config.validate` (the name older callers use)."""
    config_lib.validate(config)


def create_app(config, workdir, api_keys=(), *, metrics_keys=(), warmup: bool = True) -> FastAPI:
    """The ASGI app serving config.slm / config.llm; DIR/records.jsonl logs every request.
    Without api_keys it answers loopback callers only (`auth.LoopbackGuard`)."""
    from corea_jax.serving.refit import read_threshold

    validate_config(config)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    read_threshold(workdir, config.confidence_source)  # a bad file stops the start before models load
    metrics = ServerMetrics()
    queued = config.limits.max_queued
    slm = build_answerer(config.slm, "slm", task=config.task, workdir=workdir, metrics=metrics, seed=config.seed,
                         max_queued=queued)
    llm = build_answerer(config.llm, "llm", task=config.task, workdir=workdir, metrics=metrics,
                         seed=config.seed + 1, max_queued=queued)
    service = ChatService(config, workdir, slm, llm, metrics)
    engines = [a for a in (slm, llm) if isinstance(a, LocalAnswerer)]

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        service.attach(asyncio.get_running_loop())  # SIGHUP reloads run on this loop from now on
        for answerer in engines:
            answerer.batcher.start()
        if warmup:  # compile before the first request is accepted
            for answerer in engines:
                await answerer.answer("What is 1 + 1?", 1, [])
        log.info("serving: tau = %s", service.tau)
        try:
            yield
        finally:
            await service.close(timeout=config.drain_timeout_s)
            for answerer in engines:
                answerer.batcher.close(timeout=60)

    app = FastAPI(title="corea_jax", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.corea = ServerState(service, KeyRing(list(api_keys), list(metrics_keys)),
                                  RateLimiter(config.limits.requests_per_minute, config.limits.burst),
                                  metrics, int(time.time()))
    app.include_router(routes.router)
    if not api_keys:
        app.add_middleware(LoopbackGuard)

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

    @app.exception_handler(Exception)
    async def _failed(request: Request, err: Exception):
        log.error("%s %s failed", request.method, request.url.path, exc_info=err)
        return routes.error_response(server_error())

    return app


class DrainingServer(uvicorn.Server):
    """uvicorn's server whose shutdown first tells the service to drain: new requests get a 503,
    and the ones still running after drain_timeout_s (less a margin to send the answers) are
    answered with a 503 before uvicorn would cancel them without a word."""

    def __init__(self, app, **config):
        self.service = app.state.corea.service
        config.setdefault("timeout_graceful_shutdown", self.service.config.drain_timeout_s)
        config.setdefault("limit_concurrency", self.service.config.limits.max_connections)
        super().__init__(uvicorn.Config(app, **config))

    async def shutdown(self, sockets=None):
        drain = float(self.service.config.drain_timeout_s)
        self.service.begin_drain(max(0.0, drain - min(2.0, drain / 2)))
        await super().shutdown(sockets)


def check_listen(host: str, api_keys) -> None:
    if not api_keys and not is_loopback(host):
        raise ValueError(f"host: refusing to listen on {host!r} without API keys; set COREA_API_KEYS "
                         "(comma-separated) or listen on 127.0.0.1")


def serve(config, workdir, *, host: str = "127.0.0.1", port: int = 8000, api_keys=(), metrics_keys=(),
          early_sighups: list | None = None) -> None:
    """Runs the server until SIGTERM / SIGINT (draining in-flight requests); SIGHUP re-reads tau.
    early_sighups: a list the launcher's own first handler appended to (SIGHUPs before this)."""
    check_listen(host, api_keys)
    pending = early_sighups if early_sighups is not None else []  # applied once the service exists
    holder: dict = {}

    def on_sighup(*_):  # runs between two bytecodes of the main thread: only hand the work on
        if "service" in holder:
            holder["service"].request_reload()
        else:
            pending.append(True)

    signal.signal(signal.SIGHUP, on_sighup)  # first: refit --pid may signal a starting server
    log.info("starting: loading the models (SIGHUP reloads threshold.json from now on)")
    app = create_app(config, workdir, api_keys, metrics_keys=metrics_keys)
    holder["service"] = app.state.corea.service
    if pending:
        holder["service"].request_reload()
    # Our request log (routes) writes one line per request, with its id: uvicorn's access log is off.
    DrainingServer(app, host=host, port=port, log_level="info", access_log=False).run()
