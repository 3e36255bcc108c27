"""The chat-completion logic, free of HTTP: route a question through the cascade, log it, count it.

`ChatService.complete(request, client)` answers one validated request:
  corea      the SLM answers; its confidence (config.confidence_source) below tau defers the
             question to the LLM, whose answer is returned; a missing confidence defers (as in
             `cascade.thresholds.keeps`). If the LLM fails: per config.on_llm_failure, the SLM's
             answer flagged `degraded`, or a 503.
  corea-slm  the SLM alone;  corea-llm  the LLM alone.
Every request, answered, refused by a failing LLM or abandoned by its client, is appended to
DIR/records.jsonl as one fsynced line (`log.RequestLog`) in the cascade's record schema.
A `shadow_rate` share of the corea requests is audited: a kept one is also sent to the LLM in
the background and the SLM-LLM agreement logged (deferred ones have both answers anyway), so
`refit` gets an unbiased labelled sample of the traffic.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import math
import random
import time
from pathlib import Path
from typing import Callable

from corea_jax import grading
from corea_jax.cascade.backends import failed_answer
from corea_jax.cascade.costs import CostModel
from corea_jax.cascade.datasets import Item
from corea_jax.cascade.records import make_record
from corea_jax.cascade.thresholds import keeps
from corea_jax.serving.log import RequestLog
from corea_jax.serving.protocol import (SERVED_MODELS, APIError, ChatCompletionRequest, bad_request,
                                        new_id, now)

THRESHOLD_FILE = "threshold.json"
ON_LLM_FAILURE = ("degraded", "error")
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


def read_threshold(workdir: Path) -> dict | None:
    """DIR/threshold.json (written by `refit`), or None when there is none."""
    path = Path(workdir) / THRESHOLD_FILE
    if not path.exists():
        return None
    fitted = json.loads(path.read_text())
    tau = fitted.get("tau")
    if not isinstance(tau, (int, float)) or not (0 <= tau <= 1 or tau == math.inf):
        raise ValueError(f"{path}: tau: expected a number in [0, 1], found {tau!r}")
    return fitted


class ChatService:
    def __init__(self, config, workdir: Path, slm, llm, metrics):
        if config.on_llm_failure not in ON_LLM_FAILURE:
            raise ValueError(f"on_llm_failure: expected one of {ON_LLM_FAILURE}, found {config.on_llm_failure!r}")
        if not 0 <= config.shadow_rate <= 1:
            raise ValueError(f"shadow_rate: expected a number in [0, 1], found {config.shadow_rate!r}")
        self.config, self.workdir = config, Path(workdir)
        self.answerers = {"slm": slm, "llm": llm}
        self.metrics = metrics
        self.log = RequestLog(self.workdir / "records.jsonl")
        self.cost_model = CostModel(config.cost_model,
                                    params={r: a.non_embedding_params for r, a in self.answerers.items()},
                                    prices={r: tuple(config[r].price_per_million) or None
                                            for r in self.answerers})
        self._random = random.Random(config.seed)
        self._background: set[asyncio.Task] = set()
        self.tau = float(config.threshold.tau)
        self.threshold_info: dict = {"rule": "config", "tau": self.tau}
        self.reload_threshold()

    # ------------------------------------------------------------------ threshold

    def reload_threshold(self) -> float:
        """Loads DIR/threshold.json if present (a refit); a bad file keeps the current tau."""
        try:
            fitted = read_threshold(self.workdir)
        except (ValueError, OSError) as err:
            log.error("threshold not reloaded: %s", err)
            return self.tau
        if fitted is not None:
            self.tau, self.threshold_info = float(fitted["tau"]), fitted
            log.info("tau = %s (%s)", self.tau, fitted.get("rule"))
        self.metrics.tau.set(self.tau if math.isfinite(self.tau) else 1.0)
        return self.tau

    def set_tau(self, tau: float) -> None:
        self.tau, self.threshold_info = float(tau), {"rule": "set", "tau": float(tau)}
        self.metrics.tau.set(self.tau)

    # ------------------------------------------------------------------ validation

    def validate(self, request: ChatCompletionRequest) -> tuple[str, int, dict]:
        """(the question, the max_tokens budget, role -> prompt token ids or None), or APIError 400
        naming the field."""
        limits = self.config.limits
        if request.model not in SERVED_MODELS:
            raise bad_request("model", f"model: expected one of {list(SERVED_MODELS)}, found "
                              f"{request.model!r}", code="model_not_found")
        roles = {"corea": ("slm", "llm"), "corea-slm": ("slm",), "corea-llm": ("llm",)}[request.model]
        budget = request.budget() or limits.default_max_tokens
        most = min(self.answerers[r].max_new_tokens for r in roles)
        if budget > most:
            raise bad_request(request.budget_param(), f"{request.budget_param()}: expected at most {most} "
                              f"for model {request.model!r}, found {budget}")
        question = request.question()
        if len(question) > limits.max_question_chars:
            raise bad_request("messages", f"messages: the question has {len(question)} characters, more "
                              f"than the {limits.max_question_chars} allowed", code="context_length_exceeded")
        prompts = {}
        for role in roles:
            ids = prompts[role] = self.answerers[role].prompt_ids(question)
            most_prompt = self.config[role].get("max_prompt_tokens", 0)
            if ids is not None and len(ids) > most_prompt:
                raise bad_request("messages", f"messages: the prompt is {len(ids)} tokens for the {role}, "
                                  f"more than the {most_prompt} allowed", code="context_length_exceeded")
        return question, budget, prompts

    # ------------------------------------------------------------------ answering

    async def complete(self, request: ChatCompletionRequest, client: str,
                       on_text: Callable[[str], None] | None = None, rid: str | None = None) -> Outcome:
        """Answers `request` (validated here); `on_text` receives the growing reply text of the
        answering model (for `corea`, the SLM's only once kept: its confidence comes last).
        rid: the request's id (the response's and the log line's); a new one by default."""
        question, budget, prompts = self.validate(request)
        started, rid, model = time.perf_counter(), rid or new_id(), request.model
        line = dict(request_id=rid, served_model=model, client=client, created=now(),
                    question=question if self.config.log_questions else None, tau=None, deferred=None,
                    answered_by=None, degraded=False, audit=False, shadow=False, agree=None, llm=None)
        item = Item(id=rid, question=question, gold="", task=self.config.task)
        first = "llm" if model == "corea-llm" else "slm"
        try:
            reply, finish = await self.answerers[first].answer(
                question, budget, request.stop, None if model == "corea" else on_text, prompt=prompts[first])
        except asyncio.CancelledError:
            self._abandoned(item, first, line, started)
            raise
        head = self._record(item, first, reply)
        text, answered_by = reply.response, first
        if reply.failed:  # corea-llm with its backend down
            self._write({**head, **line, "finish_reason": "error"}, started)
            raise APIError(503, f"the LLM backend failed: {reply.error}", type="service_unavailable",
                           code="llm_unavailable")
        llm_reply = None
        if model == "corea":
            confidence = reply.confidence.get(self.config.confidence_source)
            deferred = not bool(keeps([confidence], self.tau)[0])
            line.update(tau=self.tau if math.isfinite(self.tau) else None, deferred=deferred, audit=self._random.random() < self.config.shadow_rate)
            if deferred:
                try:
                    llm_reply, llm_finish = await self.answerers["llm"].answer(
                        question, budget, request.stop, on_text, prompt=prompts["llm"])
                except asyncio.CancelledError:
                    self._abandoned(item, "llm", line, started, head)
                    raise
                line["llm"] = self._record(item, "llm", llm_reply)
                if llm_reply.failed:
                    line["degraded"] = True
                    if self.config.on_llm_failure == "error":
                        self._write({**head, **line, "finish_reason": "error"}, started)
                        raise APIError(503, f"the LLM backend failed: {llm_reply.error}",
                                       type="service_unavailable", code="llm_unavailable")
                    self.metrics.degraded.inc()
                else:
                    text, finish, answered_by = llm_reply.response, llm_finish, "llm"
                    line["agree"] = self._agree(reply.response, reply.answer, llm_reply)
            if answered_by == "slm" and on_text is not None:
                on_text(text)
        shadow = bool(line["audit"] and not line["deferred"])  # kept and audited: the LLM answers too
        line.update(answered_by=answered_by, finish_reason=finish, shadow=shadow)
        record = {**head, **line}
        costs = self._costs(record)
        outcome = self._outcome(rid, model, text, finish, record, costs)
        if shadow:
            record["latency_s"] = round(time.perf_counter() - started, 4)  # the answer's, not the shadow's
            self._spawn(self._shadow(item, record, budget, started))
        else:
            await asyncio.to_thread(self._write, record, started)
        self._count(record, costs)
        return outcome

    def _record(self, item: Item, role: str, reply) -> dict:
        record = make_record(item, reply, model=role, split="test", cost=None, cost_model=self.config.cost_model)
        record.update(split="live", gold=None, correct=None)
        if not reply.failed:
            record["cost"] = self._cost(record)
        return record

    def _cost(self, record: dict) -> float | None:
        try:
            return self.cost_model(record)
        except ValueError:  # e.g. no price configured for the price cost model
            return None

    def _costs(self, record: dict) -> tuple[float | None, float | None]:
        """(what the request cost, what it would have cost with the LLM alone) for a corea request."""
        if record["served_model"] != "corea":
            return None, None
        llm = record["llm"]
        cascade = [record["cost"]] + ([llm["cost"]] if llm and not llm["failed"] else [])
        if any(c is None for c in cascade):
            return None, None
        alone = llm["cost"] if llm and not llm["failed"] else self._cost({**record, "model": "llm"})
        return sum(cascade), alone

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
        if self.metrics is not None:
            self.metrics.agree.labels(str(agree).lower()).inc()
        return agree

    async def _shadow(self, item: Item, record: dict, budget: int, started: float) -> None:
        """The LLM's answer to a kept, audited request, logged with the agreement."""
        try:
            llm_reply, _ = await self.answerers["llm"].answer(item.question, budget, [], None)
        except Exception as err:  # noqa: BLE001 - the shadow call never fails the request
            llm_reply = failed_answer(f"{type(err).__name__}: {err}")
        record["llm"] = self._record(item, "llm", llm_reply)
        record["agree"] = self._agree(record["response"], record["answer"], llm_reply)
        self.metrics.shadow.inc()
        await asyncio.to_thread(self._write, record, started)

    def _abandoned(self, item: Item, role: str, line: dict, started: float, head: dict | None = None) -> None:
        """Logs a request whose client went away (its slot is already being freed)."""
        reply = failed_answer("client disconnected", time.perf_counter() - started)
        record = {**(head or self._record(item, role, reply)), **line, "finish_reason": "cancelled"}
        if head is not None:
            record["llm"] = self._record(item, "llm", reply)
        self._write(record, started)

    def _write(self, record: dict, started: float) -> None:
        record.setdefault("latency_s", round(time.perf_counter() - started, 4))
        self.log.append(record)

    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _outcome(self, rid, model, text, finish, record, costs) -> Outcome:
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
        cost = costs[0] if costs[0] is not None else sum(
            r["cost"] for r in [record] + ([llm] if llm else []) if r.get("cost") is not None)
        corea = dict(answered_by=record["answered_by"], confidence=confidence,
                     confidence_source=self.config.confidence_source,
                     tau=record["tau"],
                     deferred=record["deferred"], degraded=record["degraded"], shadow=record["shadow"],
                     cost=cost, cost_model=self.config.cost_model, llm_only_cost=costs[1], tokens=tokens)
        return Outcome(rid, record["created"], model, text, finish, usage, corea)

    def _count(self, record: dict, costs) -> None:
        m = self.metrics
        m.answered(record["served_model"], record["answered_by"], bool(record["deferred"]))
        for r in [record] + ([record["llm"]] if record["llm"] else []):
            if not r["failed"]:
                m.model_call(r["model"], r["prompt_tokens"], r["generated_tokens"])
        if record["model"] == "slm":
            confidence = record["confidence"].get(self.config.confidence_source)
            if confidence is not None:
                m.confidence.observe(confidence)
        m.costs(*costs)

    async def close(self) -> None:
        """Waits for the background (shadow) calls, so every request's line is written."""
        while self._background:
            await asyncio.gather(*list(self._background), return_exceptions=True)

