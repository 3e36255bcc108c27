"""The HTTP routes: parse, call `chat.ChatService`, return (JSON, server-sent events, or errors in
OpenAI's schema). No cascade logic lives here.

  POST /v1/chat/completions   non-streaming, or `stream: true` as server-sent events
  GET  /v1/models             corea, corea-slm, corea-llm
  GET  /health                200 while every local engine runs, else 503
  GET  /metrics               Prometheus text (prometheus_client)
  GET  /                      the dashboard (dashboard.html: plain HTML + JS over /metrics)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError

from corea_jax.serving import protocol
from corea_jax.serving.protocol import SERVED_MODELS, APIError, ChatCompletionRequest, bad_request

router = APIRouter()
DASHBOARD = Path(__file__).with_name("dashboard.html")


def error_response(err: APIError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status, headers=err.headers)


def parse_request(body: bytes) -> ChatCompletionRequest:
    """The request body as a ChatCompletionRequest, or APIError 400 naming the first bad field."""
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise bad_request(None, f"the request body is not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise bad_request(None, "the request body must be a JSON object")
    try:
        return ChatCompletionRequest.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        param = protocol.param_name(tuple(first["loc"]))
        raise bad_request(param, f"{param}: {first['msg']}") from None


class ClientGone(Exception):
    """The client closed the connection before its answer was ready."""


async def _until_disconnect(request: Request, coro):
    """Runs `coro`; cancels it (freeing its slot) if the client disconnects first."""
    task = asyncio.ensure_future(coro)

    async def disconnected():
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        raise ClientGone
    return task.result()


def _usage(usage: dict) -> protocol.Usage:
    return protocol.Usage(**usage)


@router.post("/v1/chat/completions")
async def chat_completions(request: Request):
    state = request.app.state.corea
    started, model = time.perf_counter(), "unknown"
    try:
        client = state.keys.client(request.headers.get("authorization"))
        try:
            state.limiter.check(client)
        except APIError:
            state.metrics.rate_limited.inc()
            raise
        chat = parse_request(await request.body())
        model = chat.model if chat.model in SERVED_MODELS else "unknown"
        if chat.stream:
            return await _stream(request, state, chat, client, started)
        outcome = await _until_disconnect(request, state.service.complete(chat, client))
    except APIError as err:
        state.metrics.request_done(model, err.status, time.perf_counter() - started)
        return error_response(err)
    except ClientGone:
        state.metrics.request_done(model, 499, time.perf_counter() - started)
        return Response(status_code=499)
    state.metrics.request_done(model, 200, time.perf_counter() - started)
    return protocol.ChatCompletion(
        id=outcome.id, created=outcome.created, model=outcome.model,
        choices=[protocol.Choice(message=protocol.ChoiceMessage(content=outcome.text),
                                 finish_reason=outcome.finish_reason)],
        usage=_usage(outcome.usage), corea=outcome.corea).model_dump()


def _sse(payload: protocol.ChatCompletionChunk) -> str:
    return f"data: {payload.model_dump_json()}\n\n"


async def _stream(request: Request, state, chat: ChatCompletionRequest, client: str, started: float):
    """Server-sent events: a role chunk, text deltas, a last chunk with finish_reason and the
    `corea` object, a usage chunk when stream_options.include_usage, then [DONE]. Refusals that
    happen before the first text (validation, a failing LLM) still leave as JSON errors."""
    texts: asyncio.Queue[str] = asyncio.Queue()
    rid, created = protocol.new_id(), protocol.now()
    task = asyncio.ensure_future(state.service.complete(chat, client, on_text=texts.put_nowait, rid=rid))
    first = asyncio.ensure_future(texts.get())
    try:
        await _until_disconnect(request, asyncio.wait({task, first}, return_when=asyncio.FIRST_COMPLETED))
    except ClientGone:
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
        sent, status = "", 200
        pending = first
        try:
            yield chunk(protocol.Delta(role="assistant", content=""))
            while True:
                if pending is None:
                    pending = asyncio.ensure_future(texts.get())
                    await asyncio.wait({task, pending}, return_when=asyncio.FIRST_COMPLETED)
                if pending.done():
                    text, pending = pending.result(), None
                    text = text.rstrip("\ufffd")  # a character still being spelled by byte tokens
                    if text.startswith(sent) and len(text) > len(sent):
                        yield chunk(protocol.Delta(content=text[len(sent):]))
                        sent = text
                    continue
                break
            pending.cancel()
            try:
                outcome = task.result()
            except APIError as err:
                status = err.status
                yield f"data: {json.dumps(err.body())}\n\n"
                return
            if outcome.text.startswith(sent) and len(outcome.text) > len(sent):
                yield chunk(protocol.Delta(content=outcome.text[len(sent):]))
            yield chunk(protocol.Delta(), outcome.finish_reason, corea=outcome.corea)
            if chat.stream_options is not None and chat.stream_options.include_usage:
                yield _sse(protocol.ChatCompletionChunk(id=rid, created=created, model=chat.model,
                                                        choices=[], usage=_usage(outcome.usage)))
            yield "data: [DONE]\n\n"
        finally:
            if not task.done():  # the client went away mid-stream: free the slot
                status = 499
                task.cancel()
            state.metrics.request_done(chat.model, status, time.perf_counter() - started)

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


@router.get("/v1/models")
async def models(request: Request):
    state = request.app.state.corea
    try:
        state.keys.client(request.headers.get("authorization"))
    except APIError as err:
        return error_response(err)
    created = state.started
    return protocol.ModelList(data=[protocol.ModelCard(id=name, created=created)
                                    for name in SERVED_MODELS]).model_dump()


@router.get("/health")
async def health(request: Request):
    state = request.app.state.corea
    engines = {role: bool(a.alive) for role, a in state.service.answerers.items()}
    ok = all(engines.values())
    body = {"status": "ok" if ok else "degraded", "tau": state.service.tau
            if state.service.tau != float("inf") else None, "engines": engines,
            "threshold": state.service.threshold_info}
    return JSONResponse(body, status_code=200 if ok else 503)


@router.get("/metrics")
async def metrics(request: Request):
    return Response(generate_latest(request.app.state.corea.metrics.registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/")
async def dashboard():
    return HTMLResponse(DASHBOARD.read_text(encoding="utf-8"))
