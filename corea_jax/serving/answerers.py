"""The two ways a served model answers a question, both returning a cascade `Answer`.

  LocalAnswerer  a JAX model behind an `EngineBatcher` (shared decode steps, streaming).
  HTTPAnswerer   the cascade's `HTTPBackend` (an OpenAI-compatible server), in a worker thread.

Either asks with the cascade's prompt (`backends.messages_for`: COREA's instruction around the
question, after the conversation's earlier turns) and reads the answer and confidences as the
cascade does; live traffic has no gold, so no verdict is computed (`correct` is left to the
caller, who logs null).

Each answerer bounds what it admits: `capacity` requests at once (the engine's slots, or the
HTTP backend's max_concurrency, plus `max_queued` waiting); one more raises `Overloaded`. A
failed engine or endpoint gives a failed Answer (finish reason "error"), never an exception.
HTTP calls run on the answerer's own pool of max_concurrency threads, so a slow LLM holds its
own threads only.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import math
from pathlib import Path
from typing import Callable

from corea_jax import confidence as confidence_lib
from corea_jax import grading, prompts
from corea_jax.cascade import Answer, failed_answer, lm_head_params, messages_for, non_embedding_params, Item
from corea_jax.serving.batcher import EngineBatcher, EngineStopped

# A gold the cascade's HTTPBackend can grade against (it always grades); the verdict is dropped.
_PLACEHOLDER_GOLD = {"gsm8k": "0", "math": "0", "choice": "A"}


def _item(question: str, task: str) -> Item:
    return Item(id="live", question=question, gold=_PLACEHOLDER_GOLD[task], task=task)


def reply_answer(tokenizer, token_ids: list[int], logprobs: list[float], text: str, task: str, *,
                 prompt_tokens: int, seconds: float) -> Answer:
    """An Answer from a local reply: the extracted answer and every confidence source."""
    scores = confidence_lib.confidence_scores(tokenizer, token_ids, logprobs, text, task)
    confidence = {source: None for source in confidence_lib.SOURCES}
    for source, value in scores.items():
        confidence[source] = None if value is None or math.isnan(value) else float(value)
    answer = grading.extract_answer(text, task)
    return Answer(response=text, answer=answer, correct=False, confidence=confidence,
                  prompt_tokens=int(prompt_tokens), generated_tokens=len(token_ids), seconds=float(seconds),
                  format_ok=answer is not None)


def cut_at_stop(text: str, stop: list[str]) -> tuple[str, bool]:
    """(text before the first stop string, whether one occurred)."""
    hits = [i for i in (text.find(s) for s in stop) if i >= 0]
    return (text[:min(hits)], True) if hits else (text, False)


def covering_tokens(decode: Callable[[list[int]], str], ids: list[int], chars: int) -> int:
    """The fewest leading tokens of `ids` whose text has at least `chars` characters: what a
    reply cut at a stop string used (the tokens generated past the cut are not counted)."""
    lo, hi = 0, len(ids)
    while lo < hi:
        mid = (lo + hi) // 2
        if len(decode(ids[:mid])) >= chars:
            hi = mid
        else:
            lo = mid + 1
    return lo


FAILING_AFTER = 3  # an HTTP LLM whose last this many calls failed is reported down on /health


class Overloaded(Exception):
    """The answerer's admission bound is reached (`capacity` requests in flight)."""

    def __init__(self, role: str, capacity: int):
        super().__init__(f"the {role} has {capacity} requests in flight, its limit")
        self.role, self.capacity = role, capacity


class LocalAnswerer:
    """A local model: prompt -> shared slots -> Answer; `on_text` streams the reply as it grows."""

    kind = "local"

    def __init__(self, model, batcher: EngineBatcher, *, prompt: str, task: str,
                 system_prompt: str | None = None, worked_example: bool | None = None, max_queued: int = 64):
        from corea_jax.generation import chat_token_ids

        self.model, self.batcher, self.task = model, batcher, task
        self.prompt, self.system_prompt, self.worked_example = prompt, system_prompt, worked_example
        self._chat_ids = chat_token_ids
        self.non_embedding_params = non_embedding_params(model.config)
        self.lm_head_params = lm_head_params(model.config)  # the flops cost's head, from the loaded model
        self.max_new_tokens = batcher.max_new_tokens
        self.capacity = batcher.slots + max_queued

    def prompt_ids(self, question: str, history=()) -> list[int]:
        messages = messages_for(_item(question, self.task), self.prompt, system_prompt=self.system_prompt,
                                worked_example=self.worked_example, history=history)
        return self._chat_ids(self.model.tokenizer, messages)

    async def answer(self, question: str, max_tokens: int, stop: list[str],
                     on_text: Callable[[str], None] | None = None,
                     prompt: list[int] | None = None, history=()) -> tuple[Answer, str]:
        """(the Answer, finish reason "stop", "length" or "error"); prompt: `prompt_ids(question,
        history)` if known. Raises Overloaded at capacity."""
        if self.batcher.in_flight >= self.capacity:
            raise Overloaded(self.batcher.name, self.capacity)
        tokenizer = self.model.tokenizer
        decode = lambda ids: tokenizer.decode(ids, skip_special_tokens=True)  # noqa: E731
        on_tokens = None
        if on_text is not None:
            on_tokens = lambda ids: on_text(cut_at_stop(decode(ids), stop)[0])  # noqa: E731
        prompt = self.prompt_ids(question, history) if prompt is None else prompt
        try:
            generation = await self.batcher.generate(prompt, max_tokens, tuple(stop), on_tokens)
        except EngineStopped as err:
            return failed_answer(str(err)), "error"
        ids, logprobs = generation.token_ids, generation.logprobs
        text, stopped = cut_at_stop(decode(ids), stop)
        if stopped:  # count (and score) the tokens that made the returned text, not those past the cut
            kept = covering_tokens(decode, ids, len(text))
            ids, logprobs = ids[:kept], logprobs[:kept]
        reply = reply_answer(tokenizer, ids, logprobs, text, self.task,
                             prompt_tokens=generation.prompt_tokens, seconds=generation.seconds)
        return reply, "stop" if stopped else generation.finish_reason

    @property
    def alive(self) -> bool:
        return self.batcher.alive


class HTTPAnswerer:
    """The cascade's HTTPBackend (retries, timeouts, rate limit) answering one question per call,
    on a pool of the backend's max_concurrency threads of its own."""

    kind = "http"

    def __init__(self, backend, task: str, max_queued: int = 64):
        self.backend, self.task = backend, task
        self.non_embedding_params = backend.non_embedding_params
        self.max_new_tokens = backend.max_new_tokens
        self.capacity = backend.max_concurrency + max_queued
        self.in_flight = 0
        self.failures_in_a_row = 0  # calls that failed since the last one that answered
        self._pool = concurrent.futures.ThreadPoolExecutor(backend.max_concurrency, thread_name_prefix="llm-http")

    @property
    def alive(self) -> bool:
        """False once FAILING_AFTER calls in a row failed (the endpoint is down or refusing), until
        one answers again (the server keeps asking: a deferred request is its probe)."""
        return self.failures_in_a_row < FAILING_AFTER

    def prompt_ids(self, question: str, history=()) -> None:
        return None  # counted by the server

    async def answer(self, question: str, max_tokens: int, stop: list[str],
                     on_text: Callable[[str], None] | None = None, prompt=None,
                     history=()) -> tuple[Answer, str]:
        del prompt  # the server applies its own template
        if self.in_flight >= self.capacity:
            raise Overloaded("llm", self.capacity)
        call = asyncio.get_running_loop().run_in_executor(
            self._pool, lambda: self.backend.answer_one(_item(question, self.task), max_new_tokens=max_tokens,
                                                        stop=tuple(stop), history=tuple(history)))
        self.in_flight += 1  # until the call ends, even if its caller gave up waiting
        call.add_done_callback(lambda _: setattr(self, "in_flight", self.in_flight - 1))
        reply = await asyncio.shield(call)
        self.failures_in_a_row = self.failures_in_a_row + 1 if reply.failed else 0
        if reply.failed:
            return reply, "error"
        text, stopped = cut_at_stop(reply.response, stop)  # the upstream stops there too
        reply.response, reply.correct = text, False
        if on_text is not None:
            on_text(text)
        finish = "stop" if stopped or reply.generated_tokens < max_tokens else "length"
        return reply, finish

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


# ----------------------------------------------------------------------- building them


def random_model(spec, tokenizer_dir: Path, seed: int = 0):
    """A random-weight Qwen2-family decoder with a byte-level BPE tokenizer trained on COREA's
    prompts (test-size models that need no download: configs/serve/tiny.py).

    spec.arch: hidden_size, intermediate_size, num_layers, num_heads, num_kv_heads,
    max_position_embeddings, vocab_size, init_scale (the weights' std: a larger one makes the
    reply's token probabilities, hence its confidence, vary across questions).
    """
    import jax
    import numpy as np
    from transformers import AutoTokenizer

    from corea_jax.data import train_tokenizer
    from corea_jax.models import Model, for_tokenizer, param_shapes

    arch = spec.arch
    if (tokenizer_dir / "tokenizer.json").exists():  # trained by an earlier start
        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    else:
        texts = [prompts.instruction(cfg) for cfg in prompts.PROMPTS.values()]
        texts += ["What is 12 + 30? The answer is \\boxed{42}.\nConfidence: 0.8"] * 4
        tokenizer = train_tokenizer(texts, tokenizer_dir, vocab_size=arch.vocab_size)
    config = for_tokenizer(arch, tokenizer, scan_layers=False)  # qwen2; the decoding layout
    # Drawn on the host: no init program to compile. Norm scales 1, biases 0, weights normal.
    rng = np.random.default_rng(seed)

    def draw(path, shape):
        name = jax.tree_util.keystr(path)
        if "scale" in name:
            return np.ones(shape.shape, np.float32)
        if "bias" in name:
            return np.zeros(shape.shape, np.float32)
        return (arch.init_scale * rng.standard_normal(shape.shape)).astype(np.float32)

    params = jax.tree_util.tree_map_with_path(draw, param_shapes(config))
    return Model(config, jax.device_put(params), tokenizer)


def build_answerer(spec, role: str, *, task: str, workdir: Path, metrics=None, seed: int = 0,
                   max_queued: int = 64):
    """The answerer config.<role> (a validated `serving.config.model_spec`) describes: backend
    "local" (a registry name, a path, or "random" for `random_model`) or "http" (the cascade's
    HTTPBackend)."""
    from corea_jax.cascade import loading

    if spec.backend == "http":
        backend = loading.make_backend(spec, role, progress=False)
        if spec.non_embedding_params:
            backend.non_embedding_params = int(spec.non_embedding_params)
        return HTTPAnswerer(backend, task, max_queued=max_queued)
    if spec.name == "random":
        model = random_model(spec, workdir / "models" / role, seed=seed)
    else:
        model = loading.load_model(spec)
    batcher = EngineBatcher(model, name=role, slots=spec.slots, max_prompt_tokens=spec.max_prompt_tokens,
                            max_new_tokens=spec.max_new_tokens, temperature=spec.temperature, seed=seed,
                            metrics=metrics)
    return LocalAnswerer(model, batcher, prompt=spec.prompt, task=task,
                         system_prompt=spec.system_prompt or None, worked_example=spec.worked_example,
                         max_queued=max_queued)
