"""An OpenAI-compatible chat endpoint as a cascade backend (vLLM, SGLang, hosted APIs).

Through the maintained `openai` client, with what a long evaluation against a shared server
needs: at most `max_concurrency` requests in flight, at most `requests_per_second` request
starts, a per-request `timeout_s`, and retries with exponential backoff on 429, 5xx,
timeouts and dropped connections. Token counts come from the server's `usage`; token
log-probs are requested when `logprobs` is set (and dropped if the server refuses them), so
the answer-token probability sources work over HTTP too.

The API key is read from the environment variable named by `api_key_env` and lives only in
the client: it is never logged, recorded or reported. An item whose request failed for good
comes back as a failed Answer (recorded, reported, retried on the next run), never as wrong.
An endpoint that refuses every connection raises ConnectionError naming `base_url`.
"""

from __future__ import annotations

import concurrent.futures
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


class _Transient(Exception):
    """A retryable failure (429, 5xx, timeout, connection)."""


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

        if not base_url:
            raise ValueError(f"{field}.base_url: expected the server's URL (e.g. http://host:8000/v1), found ''")
        if not model:
            raise ValueError(f"{field}.model: expected the served model's name, found ''")
        if mode not in MODES:
            raise ValueError(f"mode: expected one of {MODES}, found {mode!r}")
        for key, value, low in (("max_concurrency", max_concurrency, 1), ("max_retries", max_retries, 0)):
            if int(value) != value or value < low:
                raise ValueError(f"{field}.{key}: expected an integer >= {low}, found {value!r}")
        for key, value in (("timeout_s", timeout_s), ("requests_per_second", requests_per_second + 1),
                           ("backoff_s", backoff_s + 1)):
            if not value > 0:
                raise ValueError(f"{field}.{key}: expected a positive number, found {value!r}")
        key = "EMPTY"  # local servers accept any key
        if api_key_env:
            if not os.environ.get(api_key_env):
                raise ValueError(f"{field}.api_key_env: the environment variable {api_key_env!r} "
                                 "is unset or empty; export the API key under that name")
            key = os.environ[api_key_env]
        self._client = openai.OpenAI(base_url=base_url, api_key=key, timeout=timeout_s, max_retries=0)
        self._openai = openai
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
        return cls(base_url=http.base_url, model=http.model, api_key_env=http.api_key_env,
                   max_concurrency=http.max_concurrency, requests_per_second=http.requests_per_second,
                   timeout_s=http.timeout_s, max_retries=http.max_retries, backoff_s=http.backoff_s,
                   logprobs=http.logprobs, non_embedding_params=non_embedding_params or None,
                   field=field, **common)

    # ------------------------------------------------------------------ requests

    def _create(self, messages, max_tokens: int):
        """One request -> (text, prompt_tokens, completion_tokens, pieces or None, logprobs or None)."""
        kwargs = dict(model=self.model, messages=messages, max_tokens=max_tokens,
                      temperature=self.temperature)
        if self.logprobs:
            kwargs["logprobs"] = True
        self._limiter.wait()
        try:
            response = self._client.chat.completions.create(**kwargs)
        except self._openai.BadRequestError as err:
            if self.logprobs and "logprob" in str(err).lower():
                self.logprobs = False  # the server does not offer them: ask without
                return self._create(messages, max_tokens)
            raise
        except (self._openai.RateLimitError, self._openai.InternalServerError,
                self._openai.APITimeoutError, self._openai.APIConnectionError) as err:
            raise _Transient(err) from err
        except self._openai.APIStatusError as err:
            if err.status_code >= 500:
                raise _Transient(err) from err
            raise
        try:
            choice = response.choices[0]
            text = choice.message.content or ""
            usage = response.usage
            pieces = logprobs = None
            content = getattr(getattr(choice, "logprobs", None), "content", None)
            if content:
                pieces = [t.token for t in content]
                logprobs = [float(t.logprob) for t in content]
            return text, int(usage.prompt_tokens), int(usage.completion_tokens), pieces, logprobs
        except (AttributeError, IndexError, TypeError, ValueError) as err:
            raise ValueError(f"malformed response from {self.base_url}: {err}") from err

    def _with_retries(self, messages, max_tokens: int):
        for attempt in range(self.max_retries + 1):
            try:
                return self._create(messages, max_tokens)
            except _Transient:
                if attempt == self.max_retries:
                    raise
                time.sleep(self.backoff_s * 2 ** attempt)
        raise AssertionError("unreachable")

    def _answer_one(self, item: Item) -> Answer:
        start = time.perf_counter()
        ask_confidence = None if self.mode == "one_turn" else False
        messages = messages_for(item, self.prompt, ask_confidence, self.system_prompt, self.worked_example)
        try:
            text, n_in, n_out, pieces, logprobs = self._with_retries(messages, self.max_new_tokens)
            stated = None
            if self.mode == "two_turn":
                follow = prompts.followup_messages(messages, text)
                stated, f_in, f_out, _, _ = self._with_retries(follow, self.followup_tokens)
                n_in, n_out = n_in + f_in, n_out + f_out
        except _Transient as err:
            cause = err.__cause__ or err
            return failed_answer(f"{type(cause).__name__}: {cause}", time.perf_counter() - start)
        except Exception as err:  # noqa: BLE001 - malformed JSON, 4xx: this item fails, the run goes on
            return failed_answer(f"{type(err).__name__}: {err}", time.perf_counter() - start)
        token_scores = None
        if pieces:
            token_scores = confidence_lib.confidence_scores(
                _PieceTokenizer(pieces), list(range(len(pieces))), logprobs, text, item.task)
        return score(item, text, stated, token_scores, prompt_tokens=n_in, generated_tokens=n_out,
                     seconds=time.perf_counter() - start)

    def answer(self, items: Sequence[Item]) -> list[Answer]:
        """One Answer per item, in order; requests run `max_concurrency` at a time."""
        with concurrent.futures.ThreadPoolExecutor(self.max_concurrency) as pool:
            answers = list(pool.map(self._answer_one, items))
        if answers and all(a.failed and "APIConnectionError" in (a.error or "") for a in answers):
            raise ConnectionError(f"{self.field}.base_url: could not connect to {self.base_url} "
                                  f"({answers[0].error}); is the server running?")
        return answers
