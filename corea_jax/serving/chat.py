"""The chat-completion logic, free of HTTP: route a question through the cascade, log it, count it.

`ChatService.complete(request, client)` answers one validated request:
  corea      the SLM answers; its confidence (config.confidence_source) below tau defers the
             question to the LLM, whose answer is returned; a missing confidence defers (as in
             `cascade.thresholds.keeps`). If the LLM fails or is full: per config.on_llm_failure,
             the SLM's answer flagged `degraded`, or a 503.
  corea-slm  the SLM alone;  corea-llm  the LLM alone.
The conversation's earlier turns and system messages reach the models through the chat
template, before COREA's instruction and the question (config.conversation = "pass"), or are
refused with a 400 naming `messages` ("refuse"): the SLM's confidence was calibrated on single
questions.

Every request that passes validation ends in exactly one line of DIR/records.jsonl
(`log.RequestLog`, the cascade's record schema) and one counted outcome, whatever happens:
answered, refused (a full queue, a failed model, shutdown), failed unexpectedly, or abandoned by
its client. A `shadow_rate` share of the corea requests is audited: a kept one is also sent to the
LLM in the background and the SLM-LLM agreement logged (deferred ones have both answers anyway),
so `refit` gets an unbiased labelled sample of the traffic; the shadow call is counted as an LLM
call with its tokens and cost.

Costs (`corea.cost`, `corea_cost_total`): a request pays every call made for it; its LLM-only
cost is the LLM's measured cost where the LLM answered (deferred or shadowed), else estimated
from the SLM's token counts. A request the LLM did not serve as planned (degraded or refused)
counts its spend on both sides: it saves nothing.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import logging
import math
import random
import time
from pathlib import Path
from typing import Callable

from corea_jax import grading
from corea_jax.cascade import (failed_answer, CostModel, Item, make_record, check_tau, keeps,
                               tau_to_json)
from corea_jax.serving.answerers import Overloaded
from corea_jax.serving.live import LiveMonitor
from corea_jax.serving.refit import read_threshold
from corea_jax.serving.log import RequestLog
from corea_jax.serving.protocol import (SERVED_MODELS, APIError, ChatCompletionRequest, bad_request,
                                        new_id, now, shown, unavailable)

RETRY_AFTER_S = 5  # what a 503 / 429 refusal asks the client to wait
log = logging.getLogger(__name__)


@dataclasses.dataclass
class Outcome:
    """What the route turns into a response."""

    id: str
    created: int
    model: str
    text: str
    finish_reason: str
    usage: dict
    corea: dict


class ChatService:
    """The cascade behind the routes; `config` is a validated server config (`serving.config`)."""

    def __init__(self, config, workdir: Path, slm, llm, metrics):
        self.config, self.workdir = config, Path(workdir)
        self.answerers = {"slm": slm, "llm": llm}
        self.metrics = metrics
        self.log = RequestLog(self.workdir / "records.jsonl")
        self.cost_model = CostModel(config.cost_model,
                                    params={r: a.non_embedding_params for r, a in self.answerers.items()},
                                    prices={r: tuple(config[r].price_per_million) or None
                                            for r in self.answerers},
                                    # a local model's head as loaded; an HTTP model's as configured
                                    head_params={r: getattr(a, "lm_head_params", None) or config[r].lm_head_params
                                                 or None for r, a in self.answerers.items()})
        self._random = random.Random(config.seed)
        self._background: set[asyncio.Task] = set()
        self.draining = False
        self._drain_deadline: asyncio.Future | None = None
        self.threshold_error: str | None = None  # why the last reload was refused
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reload_pending = False
        self.set_tau(check_tau(config.threshold.tau, "threshold.tau"), rule="config")
        self.started_at = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        fitted = read_threshold(self.workdir, config.confidence_source)  # a bad file stops the start
        if fitted is not None:
            self.apply_threshold(fitted)
        self.monitor = LiveMonitor(config, self.workdir, self.apply_threshold)

    # ------------------------------------------------------------------ threshold

    def apply_threshold(self, fitted: dict) -> None:
        """Makes a threshold (threshold.json's content, tau as a float; math.inf: defer everything)
        the one requests are routed by from now on."""
        self.tau = check_tau(fitted["tau"], "threshold.json: tau")
        self.threshold_info = {**fitted, "tau": tau_to_json(self.tau), "version": int(fitted.get("version", 0))}
        self.metrics.set_tau(self.tau, self.threshold_info["version"])
        log.info("tau = %s (%s)", self.tau if math.isfinite(self.tau) else "defer everything",
                 fitted.get("rule"))

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """The event loop SIGHUP reloads run on; a reload asked for before it is applied now."""
        self._loop = loop
        if self._reload_pending:
            loop.call_soon(self._reload_now)

    def request_reload(self) -> None:
        """Signal-safe: asks for `reload_threshold` on the server's loop (a signal handler must not
        take the locks the interrupted code may hold)."""
        self._reload_pending = True
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._reload_now)

    def _reload_now(self) -> None:
        if self._reload_pending:
            self._reload_pending = False
            self.reload_threshold()

    def reload_threshold(self) -> float:
        """Loads DIR/threshold.json again (a refit, SIGHUP); a bad file is refused with a log line
        and the current tau kept (`threshold_error` and /health say why)."""
        try:
            fitted = read_threshold(self.workdir, self.config.confidence_source)
        except (ValueError, OSError) as err:
            self.threshold_error = str(err)
            self.metrics.threshold_refused.inc()
            log.error("threshold.json refused, tau stays %s: %s", self.tau, err)
            return self.tau
        self.threshold_error = None
        if fitted is not None:
            self.apply_threshold(fitted)
            if hasattr(self, "monitor"):
                self.monitor.restart_drift(None)  # a tau fitted elsewhere: the next decisions are the reference
                self.monitor.reload_history()
        return self.tau

    def threshold_history(self) -> list[dict]:
        """The config's tau (version 0, from the server's start) and the latest fits, oldest first:
        version, tau (None: defer everything), rule, items, guarantee or reason, fitted_at, the LLM
        share the fit expected."""
        keep = ("version", "tau", "rule", "items", "guarantee", "reason", "fitted_at", "fitted_by")
        config_tau = check_tau(self.config.threshold.tau, "threshold.tau")
        fits = [dict(version=0, tau=tau_to_json(config_tau), rule="config", items=None, guarantee=None,
                     reason=None, fitted_at=self.started_at, fitted_by="config")]
        for fit in self.monitor.history:
            fits.append({**{k: fit.get(k) for k in keep},
                         "llm_share": (fit.get("evidence") or {}).get("llm_share_at_tau")})
        return fits

    def set_tau(self, tau: float, rule: str = "set") -> None:
        self.tau = check_tau(tau)
        self.threshold_info = {"rule": rule, "tau": tau_to_json(self.tau),
                               "defer_everything": self.tau == math.inf, "version": 0}
        self.metrics.set_tau(self.tau, 0)

    # ------------------------------------------------------------------ validation

    def validate(self, request: ChatCompletionRequest) -> tuple[str, list[dict], int, dict]:
        """(the question, the earlier turns, the max_tokens budget, role -> prompt token ids or
        None), or APIError 400 naming the field."""
        limits = self.config.limits
        if request.model not in SERVED_MODELS:
            raise bad_request("model", f"model: expected one of {list(SERVED_MODELS)}, found "
                              f"{shown(request.model)}", code="model_not_found")
        if len(request.messages) > limits.max_messages:
            raise bad_request("messages", f"messages: expected at most {limits.max_messages} messages, found "
                              f"{len(request.messages)}", code="context_length_exceeded")
        roles = {"corea": ("slm", "llm"), "corea-slm": ("slm",), "corea-llm": ("llm",)}[request.model]
        self._check_decoding(request, roles)
        budget = request.budget() or limits.default_max_tokens
        most = min(self.answerers[r].max_new_tokens for r in roles)
        if budget > most:
            if limits.max_tokens_policy != "clamp":
                raise bad_request(request.budget_param(), f"{request.budget_param()}: expected at most "
                                  f"{most} for model {request.model!r}, found {budget}")
            budget = most
        question, history = request.question(), request.history()
        if history and self.config.conversation == "refuse":
            raise bad_request("messages", "messages: expected one user message (this server's "
                              "config.conversation is 'refuse': the SLM's confidence is calibrated on "
                              f"single questions), found {len(request.messages)} messages")
        chars = len(question) + sum(len(turn["content"]) for turn in history)
        if chars > limits.max_question_chars:
            raise bad_request("messages", f"messages: the conversation has {chars} characters, more "
                              f"than the {limits.max_question_chars} allowed", code="context_length_exceeded")
        prompts = {}
        for role in roles:
            ids = prompts[role] = self.answerers[role].prompt_ids(question, history)
            most_prompt = self.config[role].get("max_prompt_tokens", 0)
            if ids is not None and len(ids) > most_prompt:
                raise bad_request("messages", f"messages: the prompt is {len(ids)} tokens for the {role}, "
                                  f"more than the {most_prompt} allowed", code="context_length_exceeded")
        return question, history, budget, prompts

    def _check_decoding(self, request: ChatCompletionRequest, roles) -> None:
        """temperature, top_p, seed and the penalties: the served decoding is the config's (the
        SLM's confidence is calibrated under it); a request may restate it, not change it."""
        served = {self.config[r].temperature for r in roles}
        if request.temperature is not None and {float(request.temperature)} != served:
            raise bad_request("temperature", f"temperature: this server decodes {request.model!r} at "
                              f"temperature {sorted(served)[0]:g}; expected that value or none, found "
                              f"{request.temperature:g}", code="unsupported_parameter")
        if request.top_p is not None and request.top_p != 1:
            raise bad_request("top_p", f"top_p: expected 1 or none (no nucleus sampling here), found "
                              f"{request.top_p:g}", code="unsupported_parameter")
        if request.seed is not None and served != {0.0}:
            raise bad_request("seed", "seed: per-request seeds are not supported for sampled decoding "
                              "(greedy decoding, temperature 0, is deterministic and accepts any seed)",
                              code="unsupported_parameter")
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(request, name) not in (None, 0):
                raise bad_request(name, f"{name}: expected 0 or none (penalties are not supported), "
                                  f"found {getattr(request, name):g}", code="unsupported_parameter")

    # ------------------------------------------------------------------ answering

    async def complete(self, request: ChatCompletionRequest, client: str,
                       on_text: Callable[[str], None] | None = None, rid: str | None = None) -> Outcome:
        """Answers `request` (validated here); `on_text` receives the growing reply text of the
        answering model (for `corea`, the SLM's only once kept: its confidence comes last).
        rid: the request's id (the response's and the log line's); a new one by default.
        Exactly one log line is written for a validated request, whatever ends it."""
        if self.draining:
            raise unavailable("the server is shutting down; retry shortly", "shutting_down", RETRY_AFTER_S)
        question, history, budget, prompts = self.validate(request)
        started, rid, model = time.perf_counter(), rid or new_id(), request.model
        item = Item(id=rid, question=question, gold="", task=self.config.task)
        line = dict(request_id=rid, served_model=model, client=client, created=now(),
                    question=question if self.config.log_questions else None,
                    turns=len(request.messages), confidence_source=self.config.confidence_source,
                    tau=None, deferred=None, answered_by=None, degraded=False, audit=False, shadow=False,
                    agree=None, llm=None, threshold_rule=self.threshold_info.get("rule"),
                    threshold_version=self.threshold_info["version"])
        state = {"head": None, "written": False}
        try:
            return await self._route(request, item, history, budget, prompts, line, state, started, on_text)
        except BaseException as err:
            if not state["written"]:
                self._end_unanswered(err, item, line, state, started, "llm" if model == "corea-llm" else "slm")
            raise

    async def _ask(self, role: str, question: str, budget: int, stop, on_text, prompt, history):
        try:
            return await self.answerers[role].answer(question, budget, stop, on_text, prompt=prompt,
                                                     history=history)
        except Overloaded as err:
            self.metrics.overloaded.labels(role).inc()
            return failed_answer(str(err)), "overloaded"

    async def _route(self, request, item, history, budget, prompts, line, state, started, on_text) -> Outcome:
        model, question, rid = request.model, item.question, item.id
        first = "llm" if model == "corea-llm" else "slm"
        reply, finish = await self._ask(first, question, budget, request.stop,
                                        None if model == "corea" else on_text, prompts[first], history)
        head = state["head"] = self._record(item, first, reply)
        text, answered_by = reply.response, first
        if reply.failed:  # the first model is full or down: nothing to answer with
            raise self._refusal(first, finish)
        if model == "corea":
            confidence = reply.confidence.get(self.config.confidence_source)
            deferred = not bool(keeps([confidence], self.tau)[0])
            line.update(tau=tau_to_json(self.tau), deferred=deferred,
                        audit=self._random.random() < self.config.shadow_rate)
            if deferred:
                state["llm_pending"] = True
                llm_reply, llm_finish = await self._ask("llm", question, budget, request.stop, on_text,
                                                        prompts["llm"], history)
                state["llm_pending"] = False
                line["llm"] = self._record(item, "llm", llm_reply)
                if llm_reply.failed:
                    line["degraded"] = True
                    if self.config.on_llm_failure == "error":
                        raise self._refusal("llm", llm_finish)
                    self.metrics.degraded.inc()
                    log.warning("request %s: the LLM failed (%s); answered by the SLM, degraded", rid,
                                llm_reply.error)
                else:
                    text, finish, answered_by = llm_reply.response, llm_finish, "llm"
                    line["agree"] = self._agree(reply.response, reply.answer, llm_reply)
            if answered_by == "slm" and on_text is not None:
                on_text(text)
        shadow = bool(line["audit"] and not line["deferred"])  # kept and audited: the LLM answers too
        line.update(answered_by=answered_by, finish_reason=finish, shadow=shadow)
        record = {**head, **line}
        outcome = self._outcome(rid, model, text, finish, record)
        record["latency_s"] = round(time.perf_counter() - started, 4)  # the answer's, not a shadow's
        self.monitor.expect(rid)  # feedback may name it from now on
        if shadow:
            state["written"] = True  # the shadow task writes it
            self.metrics.answered(model, answered_by, bool(line["deferred"]))
            self._count_calls(record)
            self._spawn(self._shadow(item, record, budget, history))
        else:
            await self._finish(record, state)
        return outcome

    def _refusal(self, role: str, finish: str) -> APIError:
        """The 503 (or the configured status for a full queue) for a model that could not answer;
        the client hears which role, never its address (the log line has the error)."""
        name = {"slm": "SLM", "llm": "LLM"}[role]
        if finish == "overloaded":
            status = int(self.config.limits.queue_full_status)
            return APIError(status, f"the {name} is at capacity; retry after {RETRY_AFTER_S} s",
                            type="rate_limit_error" if status == 429 else "service_unavailable",
                            code=f"{role}_overloaded", headers={"Retry-After": str(RETRY_AFTER_S)})
        return unavailable(f"the {name} is unavailable; retry after {RETRY_AFTER_S} s", f"{role}_unavailable",
                           RETRY_AFTER_S)

    def _end_unanswered(self, err: BaseException, item: Item, line: dict, state: dict, started: float,
                        first: str) -> None:
        """The one line (and counts) of a request that ends without an answer: refused, failed,
        cancelled by its client, or cut by shutdown."""
        if isinstance(err, asyncio.CancelledError):
            reason = "shutdown" if self.draining else "client disconnected"
            finish = "shutdown" if self.draining else "cancelled"
        elif isinstance(err, APIError):
            reason, finish = err.message, "error"
        else:
            reason, finish = f"{type(err).__name__}: {err}", "error"
            log.error("request %s failed", item.id, exc_info=err)
        head = state["head"] or self._record(item, first, failed_answer(reason, time.perf_counter() - started))
        record = {**head, **line, "finish_reason": finish}
        if state.get("llm_pending"):
            record["llm"] = self._record(item, "llm", failed_answer(reason))
        record["latency_s"] = round(time.perf_counter() - started, 4)
        state["written"] = True
        self._count_calls(record)
        self._count_costs(record)
        self.monitor.observe(record)
        self._spawn(self.log.append_async(record))

    async def _finish(self, record: dict, state: dict) -> None:
        """Writes the answered request's line, then counts it (a line that cannot be written
        leaves the request to `_end_unanswered`)."""
        self._count_costs(record, publish=False)
        await self.log.append_async(record)
        state["written"] = True
        self.monitor.observe(record)
        self.metrics.answered(record["served_model"], record["answered_by"], bool(record["deferred"]))
        self._count_calls(record)
        self.metrics.costs(record["request_cost"], record["llm_only_cost"])

    def _record(self, item: Item, role: str, reply) -> dict:
        record = make_record(item, reply, model=role, split="test", cost=None, cost_model=self.config.cost_model)
        record.update(split="live", gold=None, correct=None)
        if not reply.failed:
            record["cost"] = self.cost_model(record)
        return record

    def _costs(self, record: dict) -> tuple[float | None, float | None]:
        """(what a corea request cost, all calls made for it; what the LLM alone would have cost);
        (None, None) for the other models."""
        if record["served_model"] != "corea":
            return None, None
        llm = record["llm"]
        served_by_llm = bool(llm and not llm["failed"])
        spent = sum(r["cost"] for r in [record] + ([llm] if served_by_llm else []) if not r["failed"])
        if served_by_llm:
            alone = llm["cost"]
        elif record["degraded"] or record["finish_reason"] in ("error", "shutdown", "cancelled") or record["failed"]:
            alone = spent  # not served as planned: no saving claimed
        else:
            alone = self.cost_model({**record, "model": "llm"})
        return spent, alone

    def _agree(self, slm_response: str, slm_answer: str | None, llm) -> bool | None:
        """Does the SLM's answer equal the LLM's (the label of an audited request)? None when
        the LLM gave no answer."""
        if llm.failed or llm.answer is None:
            return None
        if slm_answer is None:
            return False
        try:
            agree = bool(grading.grade(slm_response, llm.answer, self.config.task))
        except ValueError:  # the LLM's answer is no gold of this task (e.g. not a number)
            agree = slm_answer.strip() == llm.answer.strip()
        self.metrics.agree.labels(str(agree).lower()).inc()
        return agree

    async def _shadow(self, item: Item, record: dict, budget: int, history) -> None:
        """The LLM's answer to a kept, audited request, logged with the agreement; counted as an
        LLM call (tokens, cost) once it ends."""
        try:
            llm_reply, _ = await self._ask("llm", item.question, budget, [], None, None, history)
        except asyncio.CancelledError:  # shutdown: the line is still written
            llm_reply = failed_answer("shutdown")
            record["llm"] = self._record(item, "llm", llm_reply)
            self._count_costs(record)
            self.log.append(record)
            raise
        except Exception as err:  # noqa: BLE001 - the shadow call never fails the request
            llm_reply = failed_answer(f"{type(err).__name__}: {err}")
        record["llm"] = self._record(item, "llm", llm_reply)
        record["agree"] = self._agree(record["response"], record["answer"], llm_reply)
        self.metrics.shadow.inc()
        if not llm_reply.failed:
            self.metrics.model_call("llm", llm_reply.prompt_tokens, llm_reply.generated_tokens)
        self._count_costs(record)
        await self.log.append_async(record)
        self.monitor.observe(record)

    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _outcome(self, rid, model, text, finish, record) -> Outcome:
        llm = record["llm"]
        tokens = {"slm": None, "llm": None}
        for r in [record] + ([llm] if llm else []):
            if not r.get("failed"):
                tokens[r["model"]] = {"prompt": r["prompt_tokens"], "completion": r["generated_tokens"]}
        used = [t for t in tokens.values() if t]
        usage = dict(prompt_tokens=sum(t["prompt"] for t in used),
                     completion_tokens=sum(t["completion"] for t in used))
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        confidence = record["confidence"].get(self.config.confidence_source) if record["model"] == "slm" else None
        costs = self._costs(record)
        cost = costs[0] if costs[0] is not None else sum(
            r["cost"] for r in [record] + ([llm] if llm else []) if not r["failed"])
        corea = dict(answered_by=record["answered_by"], confidence=confidence,
                     confidence_source=self.config.confidence_source,
                     tau=record["tau"], threshold_rule=record["threshold_rule"],
                     threshold_version=record["threshold_version"],
                     deferred=record["deferred"], degraded=record["degraded"], shadow=record["shadow"],
                     cost=cost, cost_model=self.config.cost_model, llm_only_cost=costs[1], tokens=tokens)
        return Outcome(rid, record["created"], model, text, finish, usage, corea)

    def _count_calls(self, record: dict) -> None:
        """Model calls and tokens of the calls in `record`, and the SLM's confidence."""
        m = self.metrics
        for r in [record] + ([record["llm"]] if record["llm"] else []):
            if not r["failed"]:
                m.model_call(r["model"], r["prompt_tokens"], r["generated_tokens"])
        if record["model"] == "slm" and not record["failed"]:
            confidence = record["confidence"].get(self.config.confidence_source)
            if confidence is not None:
                m.confidence.observe(confidence)

    def _count_costs(self, record: dict, publish: bool = True) -> None:
        costs = self._costs(record)
        record["request_cost"], record["llm_only_cost"] = costs
        if publish:
            self.metrics.costs(*costs)

    # ------------------------------------------------------------------ lifecycle

    def begin_drain(self, seconds: float) -> None:
        """Shutdown began: new requests are refused, and those still running after `seconds`
        are answered with a 503 (`drain_deadline` resolves)."""
        self.draining = True
        expired = self.drain_expired()
        asyncio.get_running_loop().call_later(max(0.0, seconds), lambda: expired.done() or expired.set_result(None))
        log.info("draining: requests still running in %.1f s will be answered 503", seconds)

    def drain_expired(self) -> asyncio.Future:
        """Resolves when the drain time is over (wait on it; never await it from a task that may be
        cancelled)."""
        if self._drain_deadline is None:
            self._drain_deadline = asyncio.get_running_loop().create_future()
        return self._drain_deadline

    async def close(self, timeout: float | None = None) -> None:
        """Waits for the background work (shadow calls, log writes), so every request's line is
        written; after `timeout` seconds the shadow calls still running are cancelled (their
        lines say so)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._background:
            pending = list(self._background)
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            done, late = await asyncio.wait(pending, timeout=left)
            if late and deadline is not None and time.monotonic() >= deadline:
                for task in late:
                    task.cancel()
                await asyncio.gather(*late, return_exceptions=True)
        for answerer in self.answerers.values():
            if hasattr(answerer, "close"):
                answerer.close()
        self.log.close()
        self.monitor.close()
