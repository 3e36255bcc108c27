"""An OpenAI-compatible chat endpoint as a cascade backend (vLLM, SGLang, hosted APIs).

Through the maintained `openai` client, with what a long evaluation against a shared server
needs: at most `max_concurrency` requests in flight, at most `requests_per_second` request
starts, `timeout_s` bounding each whole request (connecting, waiting and reading the body,
however slowly it trickles), and retries with exponential backoff on 429, 5xx, timeouts and
dropped connections (a connection reset or cut off while the body is read included),
waiting at least what a `Retry-After` header asks (up to MAX_RETRY_AFTER_S). Token counts
come from the server's `usage`; token log-probs are requested when `logprobs` is set (and
dropped if the server refuses them), so the answer-token probability sources work over
HTTP too.

The API key is read from the environment variable named by `api_key_env` and lives only in
the client: it is never logged, and it is redacted from everything an Answer carries (a server
that echoes it in an error body does not get it into records.jsonl). An item whose request
failed for good (a null message content included) comes back as a failed Answer (recorded,
reported, retried on the next run), never as wrong. An endpoint that refuses every
connection raises ConnectionError naming `base_url`.
"""

from __future__ import annotations

import concurrent.futures
import email.utils
import importlib
import json
import os
import threading
import time
from typing import Sequence

from corea_jax import confidence as confidence_lib
from corea_jax import prompts
from corea_jax.cascade.backends import MODES, Answer, failed_answer, messages_for, score
from corea_jax.cascade.datasets import Item


class _PieceTokenizer:
    """The server's token strings as a tokenizer: id k decodes to piece k, so
    `confidence.confidence_scores` maps the answer to its tokens as it does locally."""

    def __init__(self, pieces: Sequence[str]):
        self.pieces = list(pieces)

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        del skip_special_tokens
        return "".join(self.pieces[i] for i in ids)


class _RateLimiter:
    """Spaces request starts at least 1 / rate seconds apart (0: no limit); thread-safe."""

    def __init__(self, rate: float):
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self._next = 0.0
        self._lock = threading.Lock()

    def wait(self) -> None:
        if not self.interval:
            return
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + self.interval
        time.sleep(max(0.0, start - now))


def _transport_errors() -> tuple[type[Exception], ...]:
    """httpx's TransportError (reset, closed mid-body, read timeout) from whichever of httpx
    and its successor httpx2 is installed: openai releases read bodies through one of them."""
    errors = []
    for name in ("httpx", "httpx2"):
        try:
            errors.append(importlib.import_module(name).TransportError)
        except ImportError:
            pass
    return tuple(errors)


_TRANSPORT_ERRORS = _transport_errors()
MAX_RESPONSE_BYTES = 16 * 2**20  # a larger reply is malformed, not text to pass on (16 MiB)
MAX_USAGE_TOKENS = 10_000_000  # token counts outside [0, this] are malformed
MAX_RETRY_AFTER_S = 60.0  # a longer Retry-After is capped: the item fails rather than stall the run
REDACTED = "[redacted]"


class _Transient(Exception):
    """A retryable failure (429, 5xx, timeout, connection); `retry_after`: seconds the server
    asked to wait (Retry-After), or None."""

    def __init__(self, err: BaseException, retry_after: float | None = None):
        super().__init__(err)
        self.retry_after = retry_after


def _retry_after(response) -> float | None:
    """Seconds from a response's Retry-After (seconds or an HTTP date) or retry-after-ms header."""
    headers = getattr(response, "headers", None) or {}
    try:
        if headers.get("retry-after-ms"):
            return max(0.0, float(headers["retry-after-ms"]) / 1000)
        value = headers.get("retry-after")
        if not value:
            return None
        try:
            return max(0.0, float(value))
        except ValueError:
            return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def check_settings(field: str, *, base_url: str, model: str, api_key_env: str = "",
                   max_concurrency: int = 8, requests_per_second: float = 0.0,
                   timeout_s: float = 120.0, max_retries: int = 4, backoff_s: float = 1.0) -> str:
    """Raises ValueError naming `field`.<setting> for a bad setting; returns the API key
    ("EMPTY" without `api_key_env`: local servers accept any key)."""
    if not base_url:
        raise ValueError(f"{field}.base_url: expected the server's URL (e.g. http://host:8000/v1), found ''")
    if not model:
        raise ValueError(f"{field}.model: expected the served model's name, found ''")
    for key, value, low in (("max_concurrency", max_concurrency, 1), ("max_retries", max_retries, 0)):
        if isinstance(value, bool) or int(value) != value or value < low:
            raise ValueError(f"{field}.{key}: expected an integer >= {low}, found {value!r}")
    if isinstance(timeout_s, bool) or not timeout_s > 0:
        raise ValueError(f"{field}.timeout_s: expected a number > 0 (seconds), found {timeout_s!r}")
    for key, value, meaning in (("requests_per_second", requests_per_second, "0: no limit"),
                                ("backoff_s", backoff_s, "seconds")):
        if isinstance(value, bool) or not value >= 0:
            raise ValueError(f"{field}.{key}: expected a number >= 0 ({meaning}), found {value!r}")
    if not api_key_env:
        return "EMPTY"
    if not os.environ.get(api_key_env):
        raise ValueError(f"{field}.api_key_env: the environment variable {api_key_env!r} "
                         "is unset or empty; export the API key under that name")
    return os.environ[api_key_env]


def settings_from_config(http) -> dict:
    """check_settings' keyword arguments from a config's `http` ConfigDict."""
    return dict(base_url=http.base_url, model=http.model, api_key_env=http.api_key_env,
                max_concurrency=http.max_concurrency, requests_per_second=http.requests_per_second,
                timeout_s=http.timeout_s, max_retries=http.max_retries, backoff_s=http.backoff_s)


class HTTPBackend:
    """Answers Items through `POST {base_url}/chat/completions`."""

    def __init__(self, *, base_url: str, model: str, api_key_env: str = "", name: str = "http",
                 mode: str = "one_turn", prompt: str = "corea", system_prompt: str | None = None,
                 worked_example: bool | None = None,
                 max_new_tokens: int = 256, followup_tokens: int = 24, batch_size: int = 32,
                 temperature: float = 0.0, max_concurrency: int = 8, requests_per_second: float = 0.0,
                 timeout_s: float = 120.0, max_retries: int = 4, backoff_s: float = 1.0,
                 logprobs: bool = True, non_embedding_params: int | None = None, field: str = "http"):
        import openai

        if mode not in MODES:
            raise ValueError(f"mode: expected one of {MODES}, found {mode!r}")
        key = check_settings(field, base_url=base_url, model=model, api_key_env=api_key_env,
                             max_concurrency=max_concurrency, requests_per_second=requests_per_second,
                             timeout_s=timeout_s, max_retries=max_retries, backoff_s=backoff_s)
        self._client = openai.OpenAI(base_url=base_url, api_key=key, timeout=timeout_s, max_retries=0)
        self._openai = openai
        self._secret = key if api_key_env else None
        self.timeout_s = timeout_s
        self.base_url, self.model, self.field = base_url, model, field
        self.name, self.mode, self.prompt, self.system_prompt = name, mode, prompt, system_prompt
        self.worked_example = worked_example
        self.max_new_tokens, self.followup_tokens, self.temperature = max_new_tokens, followup_tokens, temperature
        self.batch_size, self.max_concurrency = batch_size, max_concurrency
        self.max_retries, self.backoff_s, self.logprobs = max_retries, backoff_s, logprobs
        self.non_embedding_params = non_embedding_params
        self._limiter = _RateLimiter(requests_per_second)

    def __repr__(self) -> str:  # never the key
        return f"HTTPBackend(base_url={self.base_url!r}, model={self.model!r})"

    @classmethod
    def from_config(cls, http, *, field: str = "http", non_embedding_params: int | None = None,
                    **common) -> "HTTPBackend":
        """From a config's `http` ConfigDict plus the model-level settings (mode, prompt, ...)."""
        return cls(**settings_from_config(http), logprobs=http.logprobs,
                   non_embedding_params=non_embedding_params or None, field=field, **common)

    # ------------------------------------------------------------------ requests

    def _post(self, kwargs: dict, deadline: float) -> dict:
        """One request -> the response's JSON; the body is read as it arrives and dropped
        once past `deadline` (so a trickling server is cut off, not waited out)."""
        with self._client.chat.completions.with_streaming_response.create(**kwargs) as response:
            body = bytearray()
            try:
                for chunk in response.iter_bytes():
                    body += chunk
                    if time.monotonic() > deadline:
                        raise self._timeout()
                    if len(body) > MAX_RESPONSE_BYTES:
                        raise ValueError(f"malformed response from {self.base_url}: more than "
                                         f"{MAX_RESPONSE_BYTES} bytes")
            except _TRANSPORT_ERRORS as err:  # reset or cut off mid-body: the client does not wrap it
                raise _Transient(err) from err
        return json.loads(bytes(body))

    def _timeout(self) -> TimeoutError:
        return TimeoutError(f"{self.field}.timeout_s: no complete response within {self.timeout_s} s")

    def _within_deadline(self, kwargs: dict) -> dict:
        """`_post` in a daemon thread, given up at `timeout_s` (the thread ends at its next read)."""
        deadline = time.monotonic() + self.timeout_s
        box = {}

        def post():
            try:
                box["response"] = self._post(kwargs, deadline)
            except BaseException as err:  # noqa: BLE001 - handed to the waiting thread
                box["error"] = err

        thread = threading.Thread(target=post, daemon=True)
        thread.start()
        thread.join(max(0.0, deadline - time.monotonic()))
        if thread.is_alive():
            raise self._timeout()
        if "error" in box:
            raise box["error"]
        return box["response"]

    def _create(self, messages, max_tokens: int, stop: Sequence[str] = ()):
        """One request -> (text, prompt_tokens, completion_tokens, pieces or None, logprobs or None)."""
        kwargs = dict(model=self.model, messages=messages, max_tokens=max_tokens,
                      temperature=self.temperature)
        if stop:  # the server cuts the reply, so its usage counts what it returned
            kwargs["stop"] = list(stop)
        if self.logprobs:
            kwargs["logprobs"] = True
        self._limiter.wait()
        try:
            response = self._within_deadline(kwargs)
        except self._openai.BadRequestError as err:
            if self.logprobs and "logprob" in str(err).lower():
                self.logprobs = False  # the server does not offer them: ask without
                return self._create(messages, max_tokens, stop)
            raise
        except (self._openai.APITimeoutError, self._openai.APIConnectionError, TimeoutError) as err:
            raise _Transient(err) from err
        except self._openai.APIStatusError as err:
            if err.status_code == 429 or err.status_code >= 500:
                raise _Transient(err, _retry_after(err.response)) from err
            raise
        try:
            choice = response["choices"][0]
            text = choice["message"]["content"]
            if text is None:  # e.g. a refusal or a tool call: no answer, not a wrong one
                raise ValueError("the message content is null")
            usage = response["usage"]
            pieces = logprobs = None
            content = (choice.get("logprobs") or {}).get("content")
            if content:
                pieces = [t["token"] for t in content]
                logprobs = [float(t["logprob"]) for t in content]
            counts = [usage["prompt_tokens"], usage["completion_tokens"]]
            if any(isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= MAX_USAGE_TOKENS for n in counts):
                raise ValueError(f"usage: expected token counts in [0, {MAX_USAGE_TOKENS}], found {counts}")
            return str(text), counts[0], counts[1], pieces, logprobs
        except (AttributeError, IndexError, KeyError, TypeError, ValueError) as err:
            raise ValueError(f"malformed response from {self.base_url}: {err}") from err

    def _with_retries(self, messages, max_tokens: int, stop: Sequence[str] = ()):
        for attempt in range(self.max_retries + 1):
            try:
                return self._create(messages, max_tokens, stop)
            except _Transient as err:
                if attempt == self.max_retries:
                    raise
                wait = self.backoff_s * 2 ** attempt
                if err.retry_after is not None:
                    wait = max(wait, min(err.retry_after, MAX_RETRY_AFTER_S))
                time.sleep(wait)
        raise AssertionError("unreachable")

    def _redact(self, text: str | None) -> str | None:
        """`text` without the API key (a server may echo it in an error body)."""
        if text is None or not self._secret:
            return text
        return text.replace(self._secret, REDACTED)

    def answer_one(self, item: Item, *, max_new_tokens: int | None = None, stop: Sequence[str] = (),
                   history: Sequence[dict] = ()) -> Answer:
        """One Answer for `item`, in the calling thread, under the backend's retries, timeout and
        rate limit; a request that failed for good gives a failed Answer, not an exception (a
        history turn `messages_for` cannot place raises its ValueError).

        max_new_tokens: the reply's budget (None: the backend's); stop: OpenAI's `stop` strings,
        sent to the server when given; history: earlier turns of the conversation
        (`messages_for`). Concurrency is the caller's: `answer` runs `max_concurrency` at a time.
        """
        start = time.perf_counter()
        ask_confidence = None if self.mode == "one_turn" else False
        messages = messages_for(item, self.prompt, ask_confidence, self.system_prompt, self.worked_example,
                                history=history)
        budget = self.max_new_tokens if max_new_tokens is None else max_new_tokens
        try:
            text, n_in, n_out, pieces, logprobs = self._with_retries(messages, budget, stop)
            stated = None
            if self.mode == "two_turn":
                follow = prompts.followup_messages(messages, text)
                stated, f_in, f_out, _, _ = self._with_retries(follow, self.followup_tokens)
                n_in, n_out = n_in + f_in, n_out + f_out
        except Exception as err:  # noqa: BLE001 - malformed JSON, 4xx: this item fails, the run goes on
            cause = (err.__cause__ or err) if isinstance(err, _Transient) else err
            return failed_answer(self._redact(f"{type(cause).__name__}: {cause}"),
                                 time.perf_counter() - start)
        token_scores = None
        if pieces:
            token_scores = confidence_lib.confidence_scores(
                _PieceTokenizer(pieces), list(range(len(pieces))), logprobs, text, item.task)
        answer = score(item, text, stated, token_scores, prompt_tokens=n_in, generated_tokens=n_out,
                       seconds=time.perf_counter() - start)
        answer.response, answer.confidence_text = self._redact(answer.response), self._redact(answer.confidence_text)
        return answer

    def answer(self, items: Sequence[Item]) -> list[Answer]:
        """One Answer per item, in order; requests run `max_concurrency` at a time."""
        with concurrent.futures.ThreadPoolExecutor(self.max_concurrency) as pool:
            answers = list(pool.map(self.answer_one, items))
        if answers and all(a.failed and "APIConnectionError" in (a.error or "") for a in answers):
            raise ConnectionError(f"{self.field}.base_url: could not connect to {self.base_url} "
                                  f"({answers[0].error}); is the server running?")
        return answers
