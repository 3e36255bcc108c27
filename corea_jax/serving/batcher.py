"""Concurrent requests sharing one model's decode steps: an async queue feeding the
continuous-batching scheduler (`generation.continuous.SlotScheduler`).

`EngineBatcher.generate` is called from the server's event loop; the jobs go into a queue that
one engine thread drains between decode chunks: a request that arrives while others decode takes
the next free slot at the next chunk boundary (16 decode steps), never waiting for the batch to
finish. A cancelled request (its client went away) leaves its slot at the next chunk boundary.
Streaming callers get the tokens generated so far after every chunk.

An exception in the engine thread fails the requests it holds (each hears `EngineStopped`, and
the server answers them per its failure policy), is logged, and the engine starts again with a
fresh scheduler; after MAX_RESTARTS failures within RESTART_WINDOW_S it stays down and `alive`
turns False (`/health` answers 503).
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import itertools
import logging
import queue
import threading
import time
from typing import Callable

from corea_jax.generation import SamplingParams, compile_count, SlotRow, SlotScheduler

log = logging.getLogger(__name__)
MAX_RESTARTS = 3  # engine failures tolerated within RESTART_WINDOW_S before it stays down
RESTART_WINDOW_S = 60.0


@dataclasses.dataclass
class Generation:
    """A finished row: generated token ids and log-probs, prompt length, why it ended."""

    token_ids: list[int]
    logprobs: list[float]
    prompt_tokens: int
    finish_reason: str  # "stop" (EOS or a stop string) or "length"
    seconds: float


@dataclasses.dataclass(eq=False)
class _Job:
    prompt: list[int]
    max_tokens: int
    stop: tuple[str, ...]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future
    on_tokens: Callable[[list[int]], None] | None
    started: float
    cancelled: bool = False


class EngineStopped(RuntimeError):
    """The engine thread is not running (closed, or it failed)."""


def _resolve(future: asyncio.Future, value=None, error: BaseException | None = None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)


class EngineBatcher:
    """One model behind `slots` decoding slots, shared by every request.

    Args:
      model: a `corea_jax.Model` with a tokenizer.
      slots: rows decoded together (the scheduler's batch).
      max_prompt_tokens: the longest prompt a slot holds.
      max_new_tokens: the largest budget a request may ask for.
      temperature, seed: the served sampling (0: greedy).
      metrics: a `metrics.ServerMetrics` or None.
    """

    def __init__(self, model, *, name: str, slots: int, max_prompt_tokens: int, max_new_tokens: int,
                 temperature: float = 0.0, seed: int = 0, metrics=None):
        self.model, self.name, self.slots = model, name, slots
        self.max_prompt_tokens, self.max_new_tokens = max_prompt_tokens, max_new_tokens
        self.sampling = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, seed=seed)
        self.metrics = metrics
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._rows = itertools.count()
        self._thread: threading.Thread | None = None
        self._closing = False
        self._failures: list[float] = []  # monotonic times of engine failures
        self.error: BaseException | None = None  # set when the engine stays down
        self.in_flight = 0  # requests queued or decoding (the admission bound's count)
        if metrics is not None:
            metrics.slots.labels(name).set(slots)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and self.error is None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"engine-{self.name}", daemon=True)
        self._thread.start()

    def close(self, timeout: float | None = None) -> None:
        """Stops taking jobs, finishes the ones queued or decoding, and joins the thread."""
        self._closing = True
        self._inbox.put(None)
        if self._thread is not None:
            self._thread.join(timeout)

    async def generate(self, prompt: list[int], max_tokens: int, stop=(),
                       on_tokens: Callable[[list[int]], None] | None = None) -> Generation:
        """Generates up to `max_tokens` tokens after `prompt` (token ids) in a shared slot.

        on_tokens: called on the event loop with the tokens generated so far, after every chunk.
        Cancelling the awaiting task frees the slot at the next chunk boundary.
        """
        if not self.alive or self._closing:
            raise EngineStopped(f"{self.name}: the engine is not running"
                                + (f" ({self.error!r})" if self.error else ""))
        loop = asyncio.get_running_loop()
        job = _Job(list(prompt), int(max_tokens), tuple(stop), loop, loop.create_future(), on_tokens,
                   time.perf_counter())
        self._inbox.put(job)
        self.in_flight += 1
        try:
            return await job.future
        except asyncio.CancelledError:
            job.cancelled = True
            self._inbox.put(False)  # wake the engine so the slot frees now, not at the next arrival
            raise
        finally:
            self.in_flight -= 1

    # ------------------------------------------------------------------ the engine thread

    def _run(self) -> None:
        """The engine thread: serve until closed; after a failure, fail the held requests and
        start again (at most MAX_RESTARTS times within RESTART_WINDOW_S)."""
        while True:
            waiting: collections.deque[_Job] = collections.deque()
            held: list[SlotScheduler] = []
            try:
                self._serve(waiting, held)
                return
            except Exception as err:  # noqa: BLE001 - every held request hears of it
                self._fail(err, waiting, held)
                now = time.monotonic()
                self._failures = [t for t in self._failures if now - t < RESTART_WINDOW_S] + [now]
                if self.metrics is not None:
                    self.metrics.engine_failures.labels(self.name).inc()
                if self._closing or len(self._failures) > MAX_RESTARTS:
                    self.error = err
                    log.error("engine %s: failed %d times in %.0f s, staying down: %r", self.name,
                              len(self._failures), RESTART_WINDOW_S, err)
                    self._fail(err, collections.deque(), [])  # whatever arrived meanwhile
                    return
                log.exception("engine %s failed; restarting it", self.name)

    def _fail(self, err: BaseException, waiting, held) -> None:
        """Resolves every request the engine holds (queued, waiting, decoding) with EngineStopped."""
        error = EngineStopped(f"{self.name}: the engine failed ({type(err).__name__})")
        jobs = list(waiting) + self._drain()
        for scheduler in held:
            jobs += [row.tag for row in scheduler.slots if row is not None]
        for job in jobs:
            job.loop.call_soon_threadsafe(_resolve, job.future, None, error)
        if self.metrics is not None:
            self.metrics.busy.labels(self.name).set(0)
            self.metrics.queued.labels(self.name).set(0)

    def _serve(self, waiting, held: list) -> None:
        scheduler = SlotScheduler(self.model, self.sampling, self.slots, self.max_prompt_tokens)
        held.append(scheduler)
        stopping = False
        while True:
            block = not scheduler.busy and not waiting
            if block and stopping:
                return
            stopping |= self._take(waiting, block)
            self._cancel(scheduler, waiting)
            if scheduler.free and waiting:
                admit = [waiting.popleft() for _ in range(min(scheduler.free, len(waiting)))]
                scheduler.admit([SlotRow(job, job.prompt, next(self._rows), job.max_tokens, job.stop)
                                 for job in admit])
            self._gauge(scheduler, waiting)
            if not scheduler.busy:
                continue
            busy = scheduler.busy
            ended = scheduler.step()
            if self.metrics is not None:
                self.metrics.decode_chunk(self.name, busy)
                self.metrics.compiled.set(compile_count())
            for row, ids, logprobs, hit_eos in ended:
                job = row.tag
                reason = "stop" if hit_eos or len(ids) < job.max_tokens else "length"
                job.loop.call_soon_threadsafe(_resolve, job.future, Generation(
                    ids, logprobs, len(job.prompt), reason, time.perf_counter() - job.started))
            if any(r is not None and r.tag.on_tokens is not None for r in scheduler.slots):
                for job, ids in scheduler.tokens_so_far().items():
                    if job.on_tokens is not None and not job.cancelled:
                        job.loop.call_soon_threadsafe(job.on_tokens, ids)
            self._gauge(scheduler, waiting)  # idle again: the gauges say so now, not at the next request

    def _drain(self) -> list[_Job]:
        jobs = []
        while True:
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                return jobs
            if isinstance(item, _Job):
                jobs.append(item)

    def _take(self, waiting, block: bool) -> bool:
        """Moves queued jobs to `waiting` (blocking for the first when idle); True on close."""
        stop = False
        items = [self._inbox.get()] if block else []
        while True:
            try:
                items.append(self._inbox.get_nowait())
            except queue.Empty:
                break
        for item in items:
            if item is None:
                stop = True
            elif isinstance(item, _Job):
                waiting.append(item)
        return stop

    def _cancel(self, scheduler: SlotScheduler, waiting) -> None:
        for job in [j for j in waiting if j.cancelled]:
            waiting.remove(job)
        gone = scheduler.cancel([row.tag for row in scheduler.slots if row is not None and row.tag.cancelled])
        if gone and self.metrics is not None:
            self.metrics.cancelled.labels(self.name).inc(len(gone))

    def _gauge(self, scheduler: SlotScheduler, waiting) -> None:
        if self.metrics is not None:
            self.metrics.busy.labels(self.name).set(scheduler.busy)
            self.metrics.queued.labels(self.name).set(len(waiting))
