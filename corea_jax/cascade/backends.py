"""Answering backends: a model answers Items with a response, a verdict and its confidences.

  LocalBackend  the JAX engine (`corea_jax.generate` / `generate_followup`), on the model's
                mesh when it has one; optionally the last hidden state for the probe.
  HTTPBackend   an OpenAI-compatible chat endpoint (vLLM, SGLang, a hosted API), see `http`.

Both expose `answer(items) -> list[Answer]` (one per item, in order), `name`, `batch_size`
(items per call, the unit `records.collect` appends after) and `non_embedding_params` (for the
FLOPs cost; None when unknown).

How a question is asked (`mode`):
  one_turn  one prompt (`prompt` preset, COREA's by default); a confidence is read from the
            same reply.
  two_turn  the answer without a confidence line, then a follow-up turn that asks only for it,
            continuing the first turn's KV cache (local) or resending the conversation (HTTP).
A multiple-choice Item lists its options and asks for the letter, whatever the preset.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from typing import Sequence

import jax
import numpy as np

from corea_jax import confidence as confidence_lib
from corea_jax import grading, prompts
from corea_jax.cascade.datasets import Item

MODES = ("one_turn", "two_turn")


@dataclasses.dataclass
class Answer:
    """One model's answer to one Item.

    confidence: source -> value in [0, 1] or None (`confidence.SOURCES`: verbal, the answer
      tokens' mean and minimum probability, the whole reply's mean token probability).
    seconds: wall time of the call that produced it, divided among the items it answered
      (a batch of 32 that took 64 s gives each item 2 s).
    hidden: the SLM's final normed hidden state at the reply's last token (for the probe), or None;
      computed over the last `probe_window` tokens of prompt + reply (0: all of them).
    failed: the call failed for good (HTTP errors after retries); `error` says why. A failed
      answer is recorded, reported and retried on the next run, never scored as wrong.
    """

    response: str
    answer: str | None
    correct: bool
    confidence: dict[str, float | None]
    prompt_tokens: int
    generated_tokens: int
    seconds: float
    confidence_text: str | None = None
    format_ok: bool = False
    hidden: list[float] | None = None
    failed: bool = False
    error: str | None = None


def failed_answer(error: str, seconds: float = 0.0) -> Answer:
    return Answer(response="", answer=None, correct=False, confidence={}, prompt_tokens=0,
                  generated_tokens=0, seconds=seconds, failed=True, error=error)


def messages_for(item: Item, prompt: str, ask_confidence: bool | None = None,
                 system_prompt: str | None = None, worked_example: bool | None = None,
                 history: Sequence[dict] = ()) -> list[dict]:
    """Chat messages for `item` under preset `prompt`; options listed for a multiple-choice item.

    ask_confidence overrides the preset's (two-turn elicitation asks for it in the follow-up);
    system_prompt, when given, replaces the preset's system message; worked_example, when not
    None, overrides the preset's (a shorter prompt for a model that needs no example).
    history: the client's earlier turns, each {"role": "system" | "user" | "assistant",
    "content": str} (a caller maps OpenAI's "developer" to "system"). Their system texts join
    the preset's system message after it (or become one), and the user/assistant turns go
    between it and the final user turn, which carries COREA's instruction and the question.
    """
    cfg = prompts.get_prompt_config(prompt)
    if ask_confidence is not None:
        cfg = dataclasses.replace(cfg, ask_confidence=ask_confidence)
    if worked_example is not None:
        cfg = dataclasses.replace(cfg, worked_example=worked_example)
    if system_prompt:
        cfg = dataclasses.replace(cfg, system_prompt=system_prompt)
    cfg = dataclasses.replace(cfg, multiple_choice=item.choices is not None)
    messages = prompts.build_messages(item.question, cfg, item.choices)
    if not history:
        return messages
    systems, turns = [], []
    for i, turn in enumerate(history):
        role, content = turn.get("role"), turn.get("content")
        if role not in ("system", "user", "assistant"):
            raise ValueError(f"history[{i}].role: expected 'system', 'user' or 'assistant', found {role!r}")
        if not isinstance(content, str):
            raise ValueError(f"history[{i}].content: expected a string, found {type(content).__name__}")
        if role == "system":
            systems.append(content)
        else:
            turns.append({"role": role, "content": content})
    *system, question = messages  # build_messages: [system?, user]
    if systems:  # COREA's system text first, the client's after it
        system = [{"role": "system", "content": "\n\n".join([m["content"] for m in system] + systems)}]
    return [*system, *turns, question]


def score(item: Item, response: str, stated: str | None, token_scores: dict[str, float] | None,
          *, prompt_tokens: int, generated_tokens: int, seconds: float,
          hidden: list[float] | None = None) -> Answer:
    """Grades `response` and gathers its confidences into an Answer.

    stated: the follow-up reply holding the verbal confidence (two-turn), or None to read it
      from `response`. token_scores: `confidence.confidence_scores` of the reply (NaN -> None),
      or None when the backend has no log-probs.
    """
    confidence = {source: None for source in confidence_lib.SOURCES}
    for source, value in (token_scores or {}).items():
        confidence[source] = None if value is None or math.isnan(value) else float(value)
    confidence["verbal"] = grading.parse_confidence(response if stated is None else stated)
    answer = grading.extract_answer(response, item.task)
    return Answer(response=response, answer=answer, correct=bool(grading.grade(response, item.gold, item.task)),
                  confidence=confidence, prompt_tokens=int(prompt_tokens),
                  generated_tokens=int(generated_tokens), seconds=float(seconds),
                  confidence_text=stated, format_ok=answer is not None, hidden=hidden)


def non_embedding_params(config) -> int:
    """Parameters of a `ModelConfig` outside the token embedding and the LM head."""
    embed = config.vocab_size * config.hidden_size
    return config.num_params - embed * (1 if config.tie_word_embeddings else 2)


class LocalBackend:
    """The JAX engine on a loaded `corea_jax.Model` (greedy unless `temperature` > 0)."""

    def __init__(self, model, *, name: str = "local", mode: str = "one_turn", prompt: str = "corea",
                 max_new_tokens: int = 256, followup_tokens: int = 24, batch_size: int = 32,
                 temperature: float = 0.0, seed: int = 0, system_prompt: str | None = None,
                 worked_example: bool | None = None, probe_hidden: bool = False, probe_window: int = 0,
                 schedule: str = "static", progress: bool = False):
        if mode not in MODES:
            raise ValueError(f"mode: expected one of {MODES}, found {mode!r}")
        # `generate` checks the name; `cascade.config.validate` checks it before any load.
        self.schedule = schedule  # one-turn answers; the two-turn follow-up runs static
        prompts.get_prompt_config(prompt)
        if model.tokenizer is None:
            raise ValueError(f"{name}: the model has no tokenizer; the cascade asks in chat messages")
        self.model, self.name, self.mode, self.prompt = model, name, mode, prompt
        self.system_prompt = system_prompt or None
        self.worked_example = worked_example
        self.batch_size, self.probe_hidden, self.progress = batch_size, probe_hidden, progress
        if probe_window < 0:
            raise ValueError(f"probe_window: expected an integer >= 0 (0 = whole sequence), found {probe_window}")
        self.probe_window = probe_window
        self.non_embedding_params = non_embedding_params(model.config)
        self.sampling = _sampling(max_new_tokens, temperature, seed)
        self.followup_sampling = _sampling(followup_tokens, temperature, seed)

    def answer(self, items: Sequence[Item]) -> list[Answer]:
        from corea_jax.generation import generate, generate_followup

        start = time.perf_counter()
        tok = self.model.tokenizer
        if self.mode == "one_turn":
            conversations = [messages_for(item, self.prompt, system_prompt=self.system_prompt,
                                          worked_example=self.worked_example) for item in items]
            outputs = generate(self.model, conversations, self.sampling, batch_size=self.batch_size,
                               progress=self.progress, schedule=self.schedule)
            pairs = [(out[0], None) for out in outputs]
        else:
            conversations = [messages_for(item, self.prompt, ask_confidence=False,
                                          system_prompt=self.system_prompt,
                                          worked_example=self.worked_example) for item in items]
            outputs = generate_followup(self.model, conversations, prompts.followup_suffix,
                                        self.sampling, self.followup_sampling,
                                        batch_size=self.batch_size, progress=self.progress)
            pairs = [out[0] for out in outputs]
        seconds = (time.perf_counter() - start) / len(items)
        hidden = [None] * len(items)
        if self.probe_hidden:
            sequences = [_chat_ids(tok, c) + a.token_ids for c, (a, _) in zip(conversations, pairs)]
            if self.probe_window:  # the last tokens only: a cheaper pass, the same last position
                sequences = [seq[-self.probe_window:] for seq in sequences]
            hidden = last_hidden_states(self.model, sequences)
        results = []
        for item, (first, follow), h in zip(items, pairs, hidden):
            scores = confidence_lib.confidence_scores(tok, first.token_ids, first.logprobs, first.text,
                                                      item.task)
            prompt_tokens, generated = first.num_prompt_tokens, first.num_generated_tokens
            if follow is not None:  # the follow-up's new context is its suffix, not the whole turn
                prompt_tokens += follow.num_prompt_tokens - first.num_prompt_tokens - generated
                generated += follow.num_generated_tokens
            results.append(score(item, first.text, None if follow is None else follow.text, scores,
                                 prompt_tokens=prompt_tokens, generated_tokens=generated,
                                 seconds=seconds, hidden=None if h is None else h.tolist()))
        return results


def _sampling(max_new_tokens: int, temperature: float, seed: int):
    from corea_jax.generation import SamplingParams

    return SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, seed=seed)


def _chat_ids(tokenizer, messages) -> list[int]:
    from corea_jax.generation import chat_token_ids

    return chat_token_ids(tokenizer, messages)


@functools.partial(jax.jit, static_argnames=("config",))
def _final_hidden(config, params, tokens, mask):
    """[B, T] left-padded tokens -> the final normed hidden state of the last token [B, D]."""
    from corea_jax.models import Decoder, positions_from_mask

    hidden, _ = Decoder(config).apply({"params": params}, tokens, positions_from_mask(mask), mask,
                                      None, head=False)
    return hidden[:, -1].astype("float32")


def last_hidden_states(model, sequences: Sequence[Sequence[int]], batch_size: int = 8) -> list[np.ndarray]:
    """The final normed hidden state [D] at the last token of each token sequence.

    A forward pass without the LM head over prompt + reply, in batches of `batch_size` left-padded
    to a power-of-two length (few compiled shapes).
    """
    import jax.numpy as jnp

    from corea_jax.parallel import mesh_context

    pad = model.config.pad_token_id or 0
    out: list[np.ndarray] = []
    with mesh_context(model.mesh):
        for start in range(0, len(sequences), batch_size):
            chunk = [list(s) for s in sequences[start:start + batch_size]]
            length = max(16, 1 << (max(map(len, chunk)) - 1).bit_length())
            ids = np.full((batch_size, length), pad, np.int32)
            mask = np.zeros((batch_size, length), bool)
            for b, seq in enumerate(chunk):
                ids[b, length - len(seq):], mask[b, length - len(seq):] = seq, True
            mask[len(chunk):, -1] = True  # padding rows: one real token, so no row is empty
            hidden = np.asarray(_final_hidden(model.config, model.params, jnp.asarray(ids),
                                              jnp.asarray(mask)))
            out.extend(hidden[:len(chunk)])
    return out
