"""The HTTP routes: parse, call `chat.ChatService`, return (JSON, server-sent events, or errors in
OpenAI's schema). No cascade logic lives here.

  POST /v1/chat/completions   non-streaming, or `stream: true` as server-sent events
  POST /v1/corea/feedback     {id, correct}: whether a response's answer was right (live calibration)
  GET  /v1/models, /v1/models/{id}   corea, corea-slm, corea-llm
  GET  /health                liveness for anyone (ok / not ok, tau); the details with a key
  GET  /metrics               Prometheus text (prometheus_client); a key when keys are set
  GET  /                      the dashboard (dashboard.html: plain HTML + JS over /metrics)

Every chat request ends in one response (an answer or an error in OpenAI's schema, a failed
stream in an error event and [DONE]), one counted status and one line in the server's log.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.requests import ClientDisconnect
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from corea_jax.serving import protocol
from corea_jax.serving.protocol import SERVED_MODELS, APIError, ChatCompletionRequest

router = APIRouter()
DASHBOARD = Path(__file__).with_name("dashboard.html")
log = logging.getLogger("corea_jax.serving.requests")


def error_response(err: APIError, rid: str | None = None) -> JSONResponse:
    """The error in OpenAI's schema; `rid` (the X-Request-Id header) finds its log line."""
    headers = {**err.headers, **({"X-Request-Id": rid} if rid else {})}
    return JSONResponse(err.body(), status_code=err.status, headers=headers)


async def read_body(request: Request, limit: int, timeout_s: float) -> bytes:
    """The request body, or APIError 413 once it passes `limit` bytes (read no further), or 408
    when it has not all arrived within `timeout_s` (a slow-body client holds no slot for long)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise APIError(413, f"the request body is {declared} bytes, more than the {limit} allowed",
                       code="request_too_large")

    async def read() -> bytes:
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise APIError(413, f"the request body is more than the {limit} bytes allowed",
                               code="request_too_large")
        return bytes(body)

    try:
        return await asyncio.wait_for(read(), timeout_s)
    except asyncio.TimeoutError:
        raise APIError(408, f"the request body did not arrive within {timeout_s:g} s",
                       code="request_timeout") from None
    except ClientDisconnect:
        raise ClientGone from None


class ClientGone(Exception):
    """The client closed the connection before its answer was ready."""


def shutting_down() -> APIError:
    return protocol.unavailable("the server is shutting down and could not finish this request in "
                                "its drain time; retry it", "shutting_down", 5)


async def _until_done(request: Request, service, coro):
    """Runs `coro`; cancels it (freeing its slot) if the client disconnects first (ClientGone),
    or if the server's drain time runs out (APIError 503)."""
    task = asyncio.ensure_future(coro)

    async def disconnected():
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(disconnected())
    try:  # the drain future is waited on, never awaited: cancelling us must not cancel it
        await asyncio.wait({task, watcher, service.drain_expired()}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        if not service.drain_expired().done():
            raise ClientGone
        raise shutting_down()
    return task.result()


def _done(state, model: str, status: int, started: float, rid: str | None, error: str | None = None) -> None:
    """The request's count and its one line in the server's log."""
    seconds = time.perf_counter() - started
    state.metrics.request_done(model, status, seconds)
    if status >= 500:
        log.warning("POST /v1/chat/completions %s model=%s status=%d %.3fs: %s", rid, model, status, seconds, error)
    else:
        log.info("POST /v1/chat/completions %s model=%s status=%d %.3fs%s", rid, model, status, seconds,
                 f": {error}" if error else "")


def _usage(usage: dict) -> protocol.Usage:
    return protocol.Usage(**usage)


@router.post("/v1/chat/completions")
async def chat_completions(request: Request):
    state = request.app.state.corea
    started, model, rid = time.perf_counter(), "unknown", protocol.new_id()
    try:
        client = state.keys.client(request.headers.get("authorization"))
        try:
            state.limiter.check(client)
        except APIError:
            state.metrics.rate_limited.inc()
            raise
        limits = state.service.config.limits
        chat = protocol.parse_body(await read_body(request, limits.max_body_bytes, limits.body_timeout_s))
        model = chat.model if chat.model in SERVED_MODELS else "unknown"
        if chat.stream:
            return await _stream(request, state, chat, client, started, rid)
        outcome = await _until_done(request, state.service, state.service.complete(chat, client, rid=rid))
    except APIError as err:
        _done(state, model, err.status, started, rid, err.message)
        return error_response(err, rid)
    except ClientGone:
        _done(state, model, 499, started, rid, "the client disconnected")
        return Response(status_code=499)
    except Exception as err:  # noqa: BLE001 - one answer in OpenAI's schema, whatever failed
        log.error("request %s failed", rid, exc_info=err)
        failure = protocol.server_error(rid)
        _done(state, model, failure.status, started, rid, f"{type(err).__name__}: {err}")
        return error_response(failure, rid)
    _done(state, model, 200, started, rid)
    return JSONResponse(protocol.ChatCompletion(
        id=outcome.id, created=outcome.created, model=outcome.model,
        choices=[protocol.Choice(message=protocol.ChoiceMessage(content=outcome.text),
                                 finish_reason=outcome.finish_reason)],
        usage=_usage(outcome.usage), corea=outcome.corea).model_dump(), headers={"X-Request-Id": rid})


def _sse(payload: protocol.ChatCompletionChunk) -> str:
    return f"data: {payload.model_dump_json()}\n\n"


async def _stream(request: Request, state, chat: ChatCompletionRequest, client: str, started: float, rid: str):
    """Server-sent events: a role chunk, text deltas, a last chunk with finish_reason and the
    `corea` object, a usage chunk when stream_options.include_usage, then [DONE]. Refusals that
    happen before the first text (validation, a failing LLM) still leave as JSON errors; a
    failure after it is an error event, then [DONE]."""
    texts: asyncio.Queue[str] = asyncio.Queue()
    created = protocol.now()
    task = asyncio.ensure_future(state.service.complete(chat, client, on_text=texts.put_nowait, rid=rid))
    first = asyncio.ensure_future(texts.get())
    try:
        await _until_done(request, state.service, asyncio.wait({task, first}, return_when=asyncio.FIRST_COMPLETED))
    except (ClientGone, APIError):
        first.cancel()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        raise
    if task.done() and task.exception() is not None and not first.done():
        first.cancel()
        raise task.exception()

    def chunk(delta: protocol.Delta, finish=None, **extra) -> str:
        return _sse(protocol.ChatCompletionChunk(id=rid, created=created, model=chat.model, choices=[
            protocol.ChunkChoice(delta=delta, finish_reason=finish)], **extra))

    async def events():
        sent, status, error = "", 200, None
        pending = first
        try:
            yield chunk(protocol.Delta(role="assistant", content=""))
            while True:
                if pending is None:
                    pending = asyncio.ensure_future(texts.get())
                    deadline = state.service.drain_expired()
                    await asyncio.wait({task, pending, deadline}, return_when=asyncio.FIRST_COMPLETED)
                    if deadline.done() and not task.done():
                        raise shutting_down()
                if pending.done():
                    text, pending = pending.result(), None
                    text = text.rstrip("\ufffd")  # a character still being spelled by byte tokens
                    if text.startswith(sent) and len(text) > len(sent):
                        yield chunk(protocol.Delta(content=text[len(sent):]))
                        sent = text
                    continue
                break
            pending.cancel()
            outcome = task.result()
            if outcome.text.startswith(sent) and len(outcome.text) > len(sent):
                yield chunk(protocol.Delta(content=outcome.text[len(sent):]))
            yield chunk(protocol.Delta(), outcome.finish_reason, corea=outcome.corea)
            if chat.stream_options is not None and chat.stream_options.include_usage:
                yield _sse(protocol.ChatCompletionChunk(id=rid, created=created, model=chat.model,
                                                        choices=[], usage=_usage(outcome.usage)))
            yield "data: [DONE]\n\n"
        except asyncio.CancelledError:
            status, error = 499, "the client disconnected mid-stream"
            raise
        except Exception as err:  # noqa: BLE001 - the stream ends in an error event and [DONE]
            failure = err if isinstance(err, APIError) else protocol.server_error(rid)
            if not isinstance(err, APIError):
                log.error("request %s failed mid-stream", rid, exc_info=err)
            status, error = failure.status, failure.message
            yield f"data: {json.dumps(failure.body())}\n\n"
            yield "data: [DONE]\n\n"
        finally:
            if not task.done():  # the client went away, or shutdown cut the stream: free the slot
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
            _done(state, chat.model, status, started, rid, error)

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", "X-Request-Id": rid})


@router.post("/v1/corea/feedback")
async def feedback(request: Request):
    """A label for one response of this server: {"id": its id, "correct": true | false}. 200
    {"id", "correct", "status": "recorded" | "unchanged"}; 404 for an id this server did not answer
    (or no longer holds); 409 for a label contradicting the one recorded. One log line each."""
    state = request.app.state.corea
    rid, result = None, "invalid"
    try:
        client = state.keys.client(request.headers.get("authorization"))
        rid, correct = protocol.parse_feedback(await read_body(request, protocol.MAX_FEEDBACK_BYTES, 10.0))
        try:
            status = state.service.monitor.label(rid, correct, client)
        except KeyError:
            result = "unknown_id"
            raise APIError(404, f"id: no response {protocol.shown(rid)} of this server is held for feedback",
                           type="not_found_error", param="id", code="unknown_id") from None
        except ValueError as err:
            result = "conflict"
            raise APIError(409, str(err), param="correct", code="conflicting_label") from None
    except APIError as err:
        state.metrics.feedback.labels(result if err.status != 401 else "unauthorized").inc()
        log.info("POST /v1/corea/feedback %s status=%d: %s", protocol.shown(rid, 40), err.status, err.message)
        return error_response(err)
    except ClientGone:
        return Response(status_code=499)
    state.metrics.feedback.labels(status).inc()
    log.info("POST /v1/corea/feedback %s status=200 %s correct=%s", rid, status, str(correct).lower())
    return JSONResponse({"id": rid, "correct": correct, "status": status})


@router.get("/v1/models")
async def models(request: Request):
    state = request.app.state.corea
    try:
        state.keys.client(request.headers.get("authorization"))
    except APIError as err:
        return error_response(err)
    return protocol.ModelList(data=[protocol.ModelCard(id=name, created=state.started)
                                    for name in SERVED_MODELS]).model_dump()


@router.get("/v1/models/{model_id}")
async def model(request: Request, model_id: str):
    state = request.app.state.corea
    try:
        state.keys.client(request.headers.get("authorization"))
        if model_id not in SERVED_MODELS:
            raise APIError(404, f"model: expected one of {list(SERVED_MODELS)}, found {model_id!r}",
                           type="not_found_error", param="model", code="model_not_found")
    except APIError as err:
        return error_response(err)
    return protocol.ModelCard(id=model_id, created=state.started).model_dump()


@router.get("/health")
async def health(request: Request):
    """200 while every model can answer, else 503. Anyone learns ok / not ok, tau and the
    threshold state; the engines, the fitted threshold and a refused reload need a key (when
    keys are set)."""
    state = request.app.state.corea
    service = state.service
    engines = {role: bool(a.alive) for role, a in service.answerers.items()}
    # The LLM down with on_llm_failure="degraded": the server still answers (the SLM's answers,
    # flagged), so it stays in rotation, saying "degraded"; the SLM down, or the LLM down when
    # its failures are 503s, takes it out.
    if engines["slm"] and (engines["llm"] or service.config.on_llm_failure == "degraded"):
        status = "ok" if engines["llm"] else "degraded"
    else:
        status = "unhealthy"
    tau = service.tau
    body = {"status": status, "tau": tau if tau != float("inf") else None,
            "defer_everything": tau == float("inf"), "draining": service.draining,
            "threshold_version": service.threshold_info["version"], "drift_alarm": service.monitor.drift_alarm()}
    if tau == float("inf"):
        body["defer_reason"] = service.threshold_info.get("reason") or "tau is the defer-everything state"
    if state.keys.allows(request.headers.get("authorization")):
        snap = service.monitor.snapshot(service.tau, service.threshold_info)
        body.update(engines=engines, threshold=service.threshold_info, threshold_error=service.threshold_error,
                    monitor={key: snap[key] for key in ("labels", "risk", "drift", "drift_policy", "refit")},
                    threshold_history=service.threshold_history())
    return JSONResponse(body, status_code=200 if status != "unhealthy" and not service.draining else 503)


@router.get("/metrics")
async def metrics(request: Request):
    state = request.app.state.corea
    try:
        state.keys.metrics_client(request.headers.get("authorization"))
    except APIError as err:
        return error_response(err)
    service = state.service
    state.metrics.live(service.monitor.snapshot(service.tau, service.threshold_info))
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/")
async def dashboard():
    """The page itself holds no numbers: it reads /metrics with the key its user types in."""
    return HTMLResponse(DASHBOARD.read_text(encoding="utf-8"))
