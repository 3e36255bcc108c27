"""The wire format: OpenAI's chat-completion request and response, as pydantic models.

Requests are validated here (types and ranges); what depends on the server's settings (model
names, prompt length, the max_tokens limit) is checked by `chat.ChatService`. Every refusal
leaves as `APIError`, rendered in OpenAI's error schema
`{"error": {"message", "type", "param", "code"}}` so clients show it as they show OpenAI's.
OpenAI fields this server does not honour are refused with a 400 naming them
(`UNSUPPORTED`), never silently dropped; fields outside OpenAI's API are ignored, as
OpenAI-compatible servers do. `parse_body` bounds what a body may hold before pydantic sees it:
nesting depth, the digits of a number, and text that is not valid Unicode (a lone surrogate).
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, ValidationError, field_validator

SERVED_MODELS = ("corea", "corea-slm", "corea-llm")


class APIError(Exception):
    """A refusal with an HTTP status, rendered in OpenAI's error schema."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.type = status, message, type
        self.param, self.code, self.headers = param, code, headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.code}}


def shown(value, most: int = 80) -> str:
    """A client's value as JSON (null, true, "abc"; repr for what JSON cannot write), cut to
    `most` characters: what an error message may echo of a client's input."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= most else text[:most] + f"... ({len(text)} characters)"


def bad_request(param: str | None, message: str, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def unavailable(message: str, code: str, retry_after: int | None = None) -> APIError:
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    return APIError(503, message, type="service_unavailable", code=code, headers=headers)


def server_error(rid: str | None = None) -> APIError:
    """An unexpected failure: the details go to the server's log, never to the client."""
    where = f" (request {rid}; the server's log has the details)" if rid else ""
    return APIError(500, f"the server failed to answer{where}", type="server_error", code="internal_error")


# OpenAI request fields that change the reply and that this server does not honour: each is
# refused when set to anything but its no-op value (a caller relying on it gets a 400, not
# plain text it did not ask for).
UNSUPPORTED = {
    "tools": "tool calls are not supported (COREA answers with text only)",
    "tool_choice": "tool calls are not supported",
    "functions": "function calls are not supported",
    "function_call": "function calls are not supported",
    "response_format": "only response_format {\"type\": \"text\"} is supported",
    "logprobs": "token log-probabilities are not returned",
    "top_logprobs": "token log-probabilities are not returned",
    "logit_bias": "logit_bias is not supported",
    "prediction": "predicted outputs are not supported",
    "audio": "audio output is not supported",
    "modalities": "only the text modality is supported",
    "web_search_options": "web search is not supported",
    "reasoning_effort": "reasoning_effort is not supported (COREA's models are prompted, not reasoning models)",
}


def _is_noop(name: str, value) -> bool:
    if value is None or value is False or value == [] or value == {}:
        return True
    if name == "tool_choice":
        return value == "none"
    if name == "response_format":
        return isinstance(value, dict) and value.get("type") == "text"
    if name == "modalities":
        return value == ["text"]
    return False


MAX_DEPTH = 16  # JSON nesting a chat request needs: 4 (messages[i].content[j])
MAX_NUMBER_DIGITS = 32


def _number(text: str):
    if len(text.lstrip("-").replace(".", "").split("e")[0].split("E")[0]) > MAX_NUMBER_DIGITS:
        raise bad_request(None, f"the request body holds a number of {len(text)} characters, more than "
                          f"the {MAX_NUMBER_DIGITS} digits allowed")
    if not any(c in text for c in ".eE"):
        return int(text)
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise bad_request(None, f"the request body holds a number out of range: {text}")
    return value


def _refuse_constant(name: str):
    raise bad_request(None, f"the request body holds {name}, which is not JSON")


def _check_tree(value, path: str = "", depth: int = 0) -> None:
    """Depth and Unicode of a parsed body, naming the field that breaks either."""
    if depth > MAX_DEPTH:
        raise bad_request(path or None, f"{path or 'the request body'}: nested deeper than {MAX_DEPTH} levels")
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise bad_request(path or None, f"{path or 'the request body'}: not valid Unicode (a lone "
                              "surrogate such as \\ud800)") from None
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_tree(key, path, depth + 1)
            _check_tree(item, f"{path}.{key}" if path else str(key), depth + 1)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check_tree(item, f"{path}[{i}]", depth + 1)


def parse_body(body: bytes) -> "ChatCompletionRequest":
    """A request body as a ChatCompletionRequest, or APIError 400 naming the first bad field."""
    try:
        data = json.loads(body, parse_int=_number, parse_float=_number, parse_constant=_refuse_constant)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise bad_request(None, f"the request body is not valid JSON: {err}") from None
    except RecursionError:
        raise bad_request(None, f"the request body is nested deeper than {MAX_DEPTH} levels") from None
    if not isinstance(data, dict):
        raise bad_request(None, "the request body must be a JSON object")
    _check_tree(data)
    for name, why in UNSUPPORTED.items():
        if name in data and not _is_noop(name, data[name]):
            raise bad_request(name, f"{name}: {why}", code="unsupported_parameter")
    try:
        return ChatCompletionRequest.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        param = param_name(tuple(first["loc"]))
        raise bad_request(param, f"{param}: {first['msg']}") from None


FEEDBACK_FIELDS = ("id", "correct")
MAX_FEEDBACK_BYTES = 4096


def parse_feedback(body: bytes) -> tuple[str, bool]:
    """POST /v1/corea/feedback's body {"id": a response id, "correct": true | false} as
    (id, correct), or APIError 400 naming the field."""
    try:
        data = json.loads(body, parse_constant=_refuse_constant)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
        raise bad_request(None, f"the request body is not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise bad_request(None, 'the request body must be a JSON object {"id": ..., "correct": true | false}')
    for name in data:
        if name not in FEEDBACK_FIELDS:
            raise bad_request(str(name)[:80], f"{shown(name)}: unknown field; expected only {json.dumps(list(FEEDBACK_FIELDS))}")
    for name in FEEDBACK_FIELDS:
        if name not in data:
            raise bad_request(name, f"{name}: required, missing (expected {{\"id\": ..., \"correct\": true | false}})")
    rid, correct = data["id"], data["correct"]
    if not isinstance(rid, str) or not 0 < len(rid) <= 100:
        raise bad_request("id", f"id: expected the id of a response of this server (a string), found {shown(rid)}")
    if not isinstance(correct, bool):
        raise bad_request("correct", f"correct: expected true or false, found {shown(correct)}")
    return rid, correct


def param_name(loc: tuple) -> str | None:
    """A pydantic error location ('body', 'messages', 0, 'role') as 'messages[0].role'."""
    name = ""
    for part in loc[1:] if loc and loc[0] == "body" else loc:
        name += f"[{part}]" if isinstance(part, int) else (f".{part}" if name else str(part))
    return name or None


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    """POST /v1/chat/completions. The served decoding is the server's (greedy unless its config
    says otherwise: the SLM's confidence is calibrated under it), so temperature and top_p are
    range-checked and otherwise not applied."""

    model_config = ConfigDict(extra="allow")

    model: str
    messages: list[Message] = Field(min_length=1)
    max_tokens: StrictInt | None = Field(default=None, ge=1)
    max_completion_tokens: StrictInt | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    n: StrictInt = Field(default=1, ge=1, le=1)
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = Field(default=None, validate_default=True)  # a list after validation
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    seed: StrictInt | None = None
    user: str | None = None

    @field_validator("stop")
    @classmethod
    def _stops(cls, value):
        stops = [value] if isinstance(value, str) else list(value or [])
        if len(stops) > 4 or any(not s for s in stops):
            raise ValueError("expected at most 4 non-empty strings")
        return stops

    def budget(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def budget_param(self) -> str:
        return "max_completion_tokens" if self.max_completion_tokens else "max_tokens"

    def question(self) -> str:
        """The last message, a user's: the question COREA answers (COREA's prompt goes around it)."""
        last = self.messages[-1]
        if last.role == "tool" or getattr(last, "tool_calls", None) or getattr(last, "function_call", None):
            raise bad_request("messages", "messages: a conversation ending in a tool result is not "
                              "supported (this server makes no tool calls)", code="unsupported_parameter")
        if last.role != "user" or not last.text().strip():
            raise bad_request("messages", f"messages: expected the last message to be a user's with text, "
                              f"found a {last.role} message")
        return last.text()

    def history(self) -> list[dict]:
        """The turns before the question, as chat messages ("developer" as "system"); a tool
        message or an assistant tool call is refused (no tool calls here)."""
        turns = []
        for i, message in enumerate(self.messages[:-1]):
            if message.role == "tool" or getattr(message, "tool_calls", None) or getattr(message, "function_call", None):
                raise bad_request(f"messages[{i}]", f"messages[{i}]: tool calls and tool results are not "
                                  "supported", code="unsupported_parameter")
            role = "system" if message.role == "developer" else message.role
            turns.append({"role": role, "content": message.text()})
        return turns


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChoiceMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    index: int = 0
    message: ChoiceMessage
    finish_reason: str
    logprobs: Any = None


class _Reply(BaseModel):
    id: str
    created: int
    model: str


class ChatCompletion(_Reply):
    object: Literal["chat.completion"] = "chat.completion"
    choices: list[Choice]
    usage: Usage
    corea: dict  # what the cascade did: answered_by, confidence, tau, deferred, cost, tokens


class Delta(BaseModel):
    role: str | None = None
    content: str | None = None


class ChunkChoice(BaseModel):
    index: int = 0
    delta: Delta
    finish_reason: str | None = None
    logprobs: Any = None


class ChatCompletionChunk(_Reply):
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    choices: list[ChunkChoice]
    usage: Usage | None = None
    corea: dict | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "corea_jax"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


def new_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex[:24]}"


def now() -> int:
    return int(time.time())
