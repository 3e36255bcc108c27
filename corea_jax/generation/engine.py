"""Batched generation, the host side: prompts in, completions out, over two schedules.

Two schedules (`generate(..., schedule=)`): "continuous" keeps B slots busy, decoding in
fixed-trip chunks (`fori_loop`, no per-token host round trip) and refilling a slot whose row
ended (EOS, budget, stop string) with the next waiting row between chunks; "static" runs
batches of rows, each a prefill + `lax.while_loop` decode until its longest row ends. Either
way the n samples of a prompt share one prefill (its cache copied to their rows), and row
(prompt p, sample s) draws step t with fold_in(fold_in(key(seed), p * n + s), t), so a
completion does not depend on the schedule or on the rows beside it (a follow-up turn folds
its turn into that key: `steps.row_keys`). The default, "auto" (`pick_schedule`), runs
continuous on a CPU when the rows outnumber the slots (where it measured faster) and static
otherwise.

The SLM's answers, the RL rollouts and the LLM all come through `generate`. It runs the
same `Decoder` graph the trainer differentiates, so the log-probs it returns (under the
sampling distribution, logits / temperature) are the ones the trainer recomputes.

Compile budget: prompt length, batch size and the new-token budget are rounded up to
buckets (powers of two), so a run over prompts of varied lengths compiles a handful of
programs; `compile_count()` reports how many. `GenerationProgram` is the device program
itself (static settings in, a jitted prefill + decode out), public for ahead-of-time
memory plans.

Modules: `params` (SamplingParams, Completion), `steps` (the device building blocks both
schedules share), `static` (the static schedule's program), `continuous` (continuous
batching); this one encodes prompts, batches rows, and cuts completions at stop strings.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from corea_jax.generation import continuous, steps
from corea_jax.generation.params import Completion, SamplingParams
from corea_jax.generation.static import GenerationProgram
from corea_jax.generation.steps import SamplingScalars, compile_count, eos_token_ids
from corea_jax.models import ModelConfig, KVCache
from corea_jax.parallel import one_cpu

__all__ = ["Completion", "GenerationProgram", "SCHEDULES", "SamplingParams", "SamplingScalars",
           "chat_token_ids", "compile_count", "eos_token_ids", "generate", "generate_followup",
           "generate_tokens"]


# ----------------------------------------------------------------------- host side


def _encode_prompts(tokenizer, prompts: Sequence[Any], raw: bool) -> list[list[int]]:
    if isinstance(prompts, (str, bytes)) or not isinstance(prompts, Sequence):
        raise ValueError("prompts: expected a list of prompts (strings, chat message lists or "
                         f"token-id lists), found {type(prompts).__name__}")
    if len(prompts) == 0:
        raise ValueError("prompts: expected at least one prompt, found an empty list")
    encoded = []
    for i, prompt in enumerate(prompts):
        if isinstance(prompt, str):
            if not prompt:
                raise ValueError(f"prompts[{i}]: expected a non-empty prompt, found ''")
            if tokenizer is None:
                raise ValueError("prompts: text prompts need a tokenizer; this model has none")
            if raw:
                ids = tokenizer(prompt)["input_ids"]
            else:
                ids = chat_token_ids(tokenizer, [{"role": "user", "content": prompt}])
        elif isinstance(prompt, Sequence) and prompt and isinstance(prompt[0], dict):
            if tokenizer is None:
                raise ValueError("prompts: chat prompts need a tokenizer; this model has none")
            ids = chat_token_ids(tokenizer, list(prompt))
        else:
            ids = [int(t) for t in prompt]
            if not ids:
                raise ValueError(f"prompts[{i}]: expected a non-empty prompt, found []")
        encoded.append(list(ids))
    return encoded


_CONTENT_MARK = "@@corea-message-{}@@"  # stands for a message's content while the template renders


def chat_token_ids(tokenizer, messages: Sequence[dict], add_generation_prompt: bool = True) -> list[int]:
    """Token ids of chat `messages` under the tokenizer's chat template.

    Message contents are encoded as plain text: a question holding "<|im_end|>" gets the
    ordinary tokens that spell it, and the only special ids are those the template itself
    writes. For contents free of special-token text the ids equal encoding the rendered
    template in one call. Raises ValueError when a content holds special-token text and
    the template rewrites contents (then they cannot be told apart from the template's text).
    """
    messages = list(messages)
    text = tokenizer.apply_chat_template(messages, tokenize=False,
                                         add_generation_prompt=add_generation_prompt)
    pieces = _template_and_contents(tokenizer, messages, text, add_generation_prompt)
    if pieces is None:  # the template rewrites contents: safe only if none spells a special token
        special = set(_special_tokens(tokenizer).values())
        for i, message in enumerate(messages):
            content = message.get("content")
            if isinstance(content, str) and special & set(tokenizer(content, add_special_tokens=False)["input_ids"]):
                raise ValueError(f"messages[{i}].content: holds special-token text, and the chat template "
                                 "rewrites message contents, so it cannot be encoded as plain text")
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])
    return _encode_pieces(tokenizer, pieces)


def _template_and_contents(tokenizer, messages: list[dict], text: str,
                           add_generation_prompt: bool) -> list[tuple[str, bool]] | None:
    """`text` as [(piece, is_content)] in order, or None when the template does not copy each
    content verbatim (each found once by rendering with marks in their place)."""
    marks = {i: _CONTENT_MARK.format(i) for i, m in enumerate(messages)
             if isinstance(m.get("content"), str) and m["content"]}
    masked = [{**m, "content": marks[i]} if i in marks else m for i, m in enumerate(messages)]
    template = tokenizer.apply_chat_template(masked, tokenize=False,
                                             add_generation_prompt=add_generation_prompt)
    if any(template.count(mark) != 1 for mark in marks.values()):
        return None
    pieces, end = [], 0
    for start, i in sorted((template.index(mark), i) for i, mark in marks.items()):
        pieces += [(template[end:start], False), (messages[i]["content"], True)]
        end = start + len(marks[i])
    pieces.append((template[end:], False))
    if "".join(piece for piece, _ in pieces) != text:  # a content changed on its way through
        return None
    return pieces


def _special_tokens(tokenizer) -> dict[str, int]:
    """The tokenizer's special added tokens, text -> id (those `split_special_tokens` disables)."""
    return {str(token): int(i) for i, token in tokenizer.added_tokens_decoder.items() if token.special}


def _encode_pieces(tokenizer, pieces: list[tuple[str, bool]]) -> list[int]:
    """Special tokens are looked for in the template's pieces only; the text between two of
    them (template text and contents alike) is encoded in one call without special-token
    parsing, as the tokenizer itself encodes the text between special tokens. (A special token
    that absorbs neighbouring whitespace, lstrip/rstrip, is not mimicked; neither shipped model
    family has one.)"""
    special = _special_tokens(tokenizer)
    # Longest first: at one position the longest special token wins, as in the tokenizer.
    pattern = re.compile("|".join(re.escape(s) for s in sorted(special, key=len, reverse=True)))
    ids: list[int] = []
    plain: list[str] = []

    def flush():
        if "".join(plain):
            ids.extend(tokenizer("".join(plain), add_special_tokens=False,
                                 split_special_tokens=True)["input_ids"])
        plain.clear()

    for piece, is_content in pieces:
        if is_content or not special:
            plain.append(piece)
            continue
        end = 0
        for match in pattern.finditer(piece):
            plain.append(piece[end:match.start()])
            flush()
            ids.append(special[match.group()])
            end = match.end()
        plain.append(piece[end:])
    flush()
    return ids


@dataclasses.dataclass
class _Turn:
    """Host copy of one batch's generation, plus its device cache for a follow-up turn."""

    tokens: np.ndarray  # [B, N]
    logprobs: np.ndarray  # [B, N]
    lengths: np.ndarray  # [B] tokens generated, EOS included
    hit_eos: np.ndarray  # [B]
    steps: int  # tokens generated by the longest row
    cache: KVCache
    chunk_start: int  # cache slot of the chunk's first (padded) token
    end_positions: np.ndarray  # [B] RoPE position after the chunk


def _check_prompts(config: ModelConfig, prompt_ids: list[list[int]], budget: int) -> None:
    context = config.max_position_embeddings
    for i, ids in enumerate(prompt_ids):
        if len(ids) + budget > context:
            raise ValueError(f"prompts[{i}]: {len(ids)} prompt tokens + max_new_tokens {budget} "
                             f"exceed the model's context of {context} tokens")
        if min(ids) < 0 or max(ids) >= config.vocab_size:
            raise ValueError(f"prompts[{i}]: token ids must lie in [0, {config.vocab_size})")


def _run_turn(model, cache: KVCache, chunks: list[list[int]], start_positions: np.ndarray,
              row_ids: list[int], sampling: SamplingParams, shared_prefix: bool = False,
              turn: int = 0) -> _Turn:
    """Feeds `chunks` (one per row) into `cache` and generates; row_ids and the conversation's
    `turn` seed each row's PRNG (`steps.row_keys`). With `shared_prefix` (an empty cache),
    rows with the same chunk share one prefill."""
    config = model.config
    pad_id = config.pad_token_id if config.pad_token_id is not None else 0
    source = None
    if shared_prefix:
        distinct, source = steps.distinct_prompts(chunks)
        ids, mask = steps.left_pad(distinct, pad_id)
        source = jnp.asarray(source, jnp.int32)
    else:
        ids, mask = steps.left_pad(chunks, pad_id)
    eos = np.asarray(eos_token_ids(model) or [-1], np.int32)
    chunk_start = int(cache.index)
    program = GenerationProgram.for_sampling(config, sampling, shared_prefix)
    tokens, logprobs, lengths, hit_eos, n_steps, cache = program(
        model.params, cache, jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(start_positions, jnp.int32),
        steps.row_keys(sampling.seed, row_ids, turn), jnp.asarray(eos), SamplingScalars.of(sampling), source)
    tokens, logprobs, lengths, hit_eos, n_steps = jax.device_get(
        (tokens, logprobs, lengths, hit_eos, n_steps))
    return _Turn(tokens, logprobs, lengths, hit_eos, int(n_steps), cache, chunk_start,
                 np.asarray(start_positions) + np.array([len(c) for c in chunks]))


def _batches(model, prompt_ids: list[list[int]], n: int, batch_size: int, desc: str,
             progress: bool):
    """Yields (rows, padded_rows) per device batch, inside the model's mesh context.

    rows are (prompt index, sample index) pairs, longest prompts first so rows of similar
    length share a batch and a length bucket; padded_rows repeats the first row up to a
    power-of-two batch size (few compiled shapes). A tqdm bar counts finished rows.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size: expected an integer >= 1, found {batch_size}")
    rows = [(p, s) for p in range(len(prompt_ids)) for s in range(n)]
    rows.sort(key=lambda r: -len(prompt_ids[r[0]]))
    with tqdm(total=len(rows), desc=desc, unit="seq", disable=not progress) as bar, \
            steps.mesh_context(model):
        for start in range(0, len(rows), batch_size):
            chunk = rows[start:start + batch_size]
            padded = min(batch_size, 1 << (len(chunk) - 1).bit_length())
            yield chunk, chunk + [chunk[0]] * (padded - len(chunk))
            bar.update(len(chunk))


SCHEDULES = ("continuous", "static")


def pick_schedule(model, rows: int, batch_size: int) -> str:
    """What `schedule="auto"` runs: "continuous" where it measured faster, on a CPU without a
    mesh when the rows (prompts x n) outnumber the batch's slots (GSM8K answers, 48 rows in
    16 slots: 1.28x static on an Intel Xeon, 1.21x on the AMD box, BENCHMARKS.md); else
    "static" (rows that fit one batch tied on CPU, and the accelerator numbers were measured
    with it)."""
    return "continuous" if one_cpu(model.mesh) and rows > batch_size else "static"


def generate_tokens(model, prompt_ids: list[list[int]], sampling: SamplingParams, *,
                    batch_size: int = 32, progress: bool = True, schedule: str = "auto",
                    ) -> list[list[tuple[list[int], list[float], bool]]]:
    """Token-level generation: per prompt, n tuples (token_ids, logprobs, hit_eos).

    schedule: "continuous" (a slot whose row ends takes the next waiting row; decoding in
    fixed chunks of steps), "static" (batches of rows, each run until its longest row ends) or
    "auto" (the default: `pick_schedule`, continuous on a CPU when rows outnumber slots).
    Both give the same tokens for the same seed: a row's PRNG stream depends only on (seed,
    prompt, sample) and its own step count. The n samples of a prompt share one prefill.
    Stop strings are not applied here (`generate` cuts at them).
    """
    _check_prompts(model.config, prompt_ids, sampling.max_new_tokens)
    if schedule == "auto":
        schedule = pick_schedule(model, len(prompt_ids) * sampling.n, batch_size)
    if schedule == "continuous":
        return continuous.generate_continuous(model, prompt_ids, sampling, batch_size, progress, stop=False)
    if schedule != "static":
        raise ValueError(f"schedule: expected one of {SCHEDULES + ('auto',)}, found {schedule!r}")
    results: list[list[Any]] = [[None] * sampling.n for _ in prompt_ids]
    for chunk, padded in _batches(model, prompt_ids, sampling.n, batch_size, "generate", progress):
        chunks = [prompt_ids[p] for p, _ in padded]
        cache = steps.new_cache(model, len(padded),
                           steps.bucket(max(map(len, chunks))) + steps.bucket(sampling.max_new_tokens))
        turn = _run_turn(model, cache, chunks, np.zeros(len(padded), np.int32),
                         [p * sampling.n + s for p, s in padded], sampling, sampling.n > 1)
        for b, (p, s) in enumerate(chunk):
            n = int(turn.lengths[b])
            results[p][s] = (turn.tokens[b, :n].tolist(), turn.logprobs[b, :n].tolist(),
                             bool(turn.hit_eos[b]))
    return results


def _answer_tokens(tokenizer, token_ids: list[int], answer_text: str) -> tuple[int, str]:
    """(k, rest): the most leading tokens of `token_ids` whose text is a prefix of
    `answer_text`, and the text of the answer they miss. A completion cut at a stop string
    (its text ends before the stop) keeps fewer tokens than it generated, and a token that
    straddles the cut leaves its part before the cut in `rest`."""
    for k in range(len(token_ids), -1, -1):
        text = tokenizer.decode(token_ids[:k], skip_special_tokens=True)
        if answer_text.startswith(text):
            return k, answer_text[len(text):]
    return 0, answer_text


def _continue_cache(turn: _Turn, answer: np.ndarray) -> tuple[KVCache, list[list[int]], np.ndarray]:
    """The cache of `turn` holding each row's prompt + its first `answer[b]` generated tokens
    (slots past them, e.g. tokens generated beyond a stop string, are masked out), and the
    answer tokens still to feed (a row's last token is generated but never fed back)."""
    fed = np.minimum(turn.lengths, turn.steps - 1)
    kept = np.minimum(fed, answer)
    pending = [turn.tokens[b, kept[b]:answer[b]].tolist() for b in range(len(answer))]
    slots = np.arange(turn.cache.max_length)
    first_gen_slot = int(turn.cache.index) - (turn.steps - 1)
    in_answer = (slots[None, :] >= first_gen_slot) & (slots[None, :] < first_gen_slot + kept[:, None])
    before = slots[None, :] < first_gen_slot
    valid = np.asarray(turn.cache.valid) & before | in_answer
    cache = turn.cache.replace(valid=jnp.asarray(valid))
    return cache, pending, turn.end_positions + kept


def generate_followup(model, conversations: Sequence[list[dict]], followup_suffix,
                      sampling: SamplingParams, followup_sampling: SamplingParams, *,
                      batch_size: int = 32, progress: bool = True
                      ) -> list[list[tuple[Completion, Completion]]]:
    """Two-turn generation that reuses the first turn's KV cache for the second.

    For each conversation (chat messages), generates `sampling.n` answers; then, for each
    answer, feeds only `followup_suffix(tokenizer, conversation, answer_text)` (e.g.
    `corea_jax.prompts.followup_suffix`: end of the assistant turn, a follow-up question,
    the next generation prompt) and generates the second reply. The second turn costs a
    forward pass over the suffix alone, not over the whole conversation again.

    With `sampling.stop`, the answer is cut before the first stop string and the second turn
    continues that cut answer: the cache drops the tokens generated past the cut (a token
    that straddles it is dropped and the text of it before the cut is fed with the suffix),
    so the second reply is the one the model gives to the conversation as returned.

    Returns per conversation `n` (first Completion, follow-up Completion) pairs.
    """
    tokenizer = model.tokenizer
    if tokenizer is None:
        raise ValueError("generate_followup: the model has no tokenizer")
    if followup_sampling.n != 1:
        raise ValueError(f"followup_sampling.n: expected 1 (one follow-up per answer), "
                         f"found {followup_sampling.n}")
    prompt_ids = _encode_prompts(tokenizer, list(conversations), raw=False)
    budget = sampling.max_new_tokens + followup_sampling.max_new_tokens + _SUFFIX_BUDGET
    _check_prompts(model.config, prompt_ids, budget)
    results: list[list[Any]] = [[None] * sampling.n for _ in prompt_ids]
    for chunk, padded in _batches(model, prompt_ids, sampling.n, batch_size, "generate (2 turns)",
                                  progress):
        row_ids = [p * sampling.n + s for p, s in padded]
        chunks = [prompt_ids[p] for p, _ in padded]
        cache = steps.new_cache(model, len(padded), steps.bucket(max(map(len, chunks)))
                           + steps.bucket(sampling.max_new_tokens) + _SUFFIX_BUDGET
                           + steps.bucket(followup_sampling.max_new_tokens))
        first = _run_turn(model, cache, chunks, np.zeros(len(padded), np.int32), row_ids, sampling,
                          sampling.n > 1)
        firsts = [_completion(tokenizer, first, b, len(chunks[b]), sampling.stop)
                  for b in range(len(padded))]
        # The second turn continues the answer's text as returned (cut at a stop string):
        # the cache keeps the tokens that spell it, the rest of it is fed with the suffix.
        answers = [_answer_tokens(tokenizer, first.tokens[b, :first.lengths[b] - first.hit_eos[b]].tolist(),
                                  firsts[b].text) for b in range(len(padded))]
        cache, pending, positions = _continue_cache(first, np.array([k for k, _ in answers]))
        suffixes = []
        for b, (p, _) in enumerate(padded):
            text = answers[b][1] + followup_suffix(tokenizer, conversations[p], firsts[b].text)
            suffix = pending[b] + list(tokenizer(text, add_special_tokens=False)["input_ids"])
            if len(suffix) > _SUFFIX_BUDGET:
                raise ValueError(f"followup_suffix: {len(suffix)} tokens, more than the "
                                 f"{_SUFFIX_BUDGET} reserved for it")
            suffixes.append(suffix)
        second = _run_turn(model, cache, suffixes, positions, row_ids, followup_sampling, turn=1)
        for b, (p, s) in enumerate(chunk):
            follow = _completion(tokenizer, second, b, int(positions[b]) + len(suffixes[b]),
                                 followup_sampling.stop)
            results[p][s] = (firsts[b], follow)
    return results


_SUFFIX_BUDGET = 64


def _completion(tokenizer, turn: _Turn, b: int, num_prompt_tokens: int, stop) -> Completion:
    n = int(turn.lengths[b])
    return _make_completion(tokenizer, turn.tokens[b, :n].tolist(), turn.logprobs[b, :n].tolist(),
                            bool(turn.hit_eos[b]), num_prompt_tokens, stop)


def generate(model, prompts: Sequence[Any], sampling: SamplingParams | None = None, *,
             raw: bool = False, batch_size: int = 32, progress: bool = True,
             schedule: str = "auto") -> list[list[Completion]]:
    """Generates `sampling.n` completions for each prompt.

    Args:
      model: a `corea_jax.Model`; fastest in the decoding layout `load_model` picks by
        default (`models.model.decoding_scan_layers`: one parameter set per layer, so no
        decode step slices weights, unless the mesh shards parameters over fsdp).
      prompts: strings (the tokenizer's chat template is applied unless `raw`), chat
        message lists ([{"role": ..., "content": ...}, ...]) or token-id lists.
      sampling: `SamplingParams` (default: greedy, 256 new tokens).
      batch_size: rows (prompts x n) per device batch; the caller never chunks by hand.
      progress: show a tqdm bar.
      schedule: "continuous", "static" or "auto" (see `generate_tokens`); continuously
        batched rows also end at a stop string, freeing their slot.
    Returns:
      One list of `n` Completions per prompt, in prompt order.
    """
    sampling = sampling or SamplingParams()
    prompt_ids = _encode_prompts(model.tokenizer, prompts, raw)
    if schedule == "auto":
        schedule = pick_schedule(model, len(prompt_ids) * sampling.n, batch_size)
    if schedule == "continuous":
        _check_prompts(model.config, prompt_ids, sampling.max_new_tokens)
        token_results = continuous.generate_continuous(model, prompt_ids, sampling, batch_size, progress, stop=True)
    else:
        token_results = generate_tokens(model, prompt_ids, sampling, batch_size=batch_size,
                                        progress=progress, schedule=schedule)
    return [[_make_completion(model.tokenizer, token_ids, logprobs, hit_eos, len(ids), sampling.stop)
             for token_ids, logprobs, hit_eos in per_prompt]
            for ids, per_prompt in zip(prompt_ids, token_results)]


def _make_completion(tokenizer, token_ids: list[int], logprobs: list[float], hit_eos: bool,
                     num_prompt_tokens: int, stop: tuple[str, ...]) -> Completion:
    """Decodes a completion and applies the stop strings (text and tokens cut at the first)."""
    finish = "stop" if hit_eos else "length"
    text = ""
    if tokenizer is not None:
        cut = steps.cut_at_stop(tokenizer, token_ids, stop) if stop else None
        if cut is not None:
            text, keep = cut
            token_ids, logprobs, finish = token_ids[:keep], logprobs[:keep], "stop"
        else:
            text = tokenizer.decode(token_ids, skip_special_tokens=True)
    return Completion(text=text, token_ids=token_ids, logprobs=logprobs, finish_reason=finish,
                      num_prompt_tokens=num_prompt_tokens, num_generated_tokens=len(token_ids))
