"""The generation engine: parity with transformers' greedy `generate` on real models, and its
contract on tiny random models (seeds, batching, compile budget, log-probs, EOS, sharding)."""

import dataclasses

import jax
import numpy as np
import pytest

import corea_jax
from corea_jax.generation import compile_count
from corea_jax.models import fetch
from corea_jax.parallel.sharding import make_mesh
from tests.helpers import save_random_hf_model

SMOLLM2 = "smollm2-135m-instruct"
QWEN_CODER = "qwen2.5-coder-0.5b-instruct"
# Three chat prompts of different lengths; at least one answer runs the full 64 tokens.
CHAT_PROMPTS = [
    "What is 2+2?",
    "Write a Python function that returns the n-th Fibonacci number, iteratively, with a "
    "docstring.",
    "Name three primary colors and explain, in one sentence each, why they are called primary.",
]
GREEDY_64 = corea_jax.SamplingParams(max_new_tokens=64)


def _prompts(lengths, vocab_size, seed=0) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(3, vocab_size, size=n).tolist() for n in lengths]


def _tokens(results) -> list[list[list[int]]]:
    return [[c.token_ids for c in per_prompt] for per_prompt in results]


def _logprobs(results) -> list[np.ndarray]:
    return [np.asarray(c.logprobs) for per_prompt in results for c in per_prompt]


# ----------------------------------------------------------------------- real models


@pytest.fixture(scope="module")
def real_greedy():
    """name -> (Model, our greedy 64-token completions of CHAT_PROMPTS), each computed once."""
    cache = {}

    def get(name):
        if name not in cache:
            model = corea_jax.load_model(fetch.fetch_model(name, fetch.default_model_dir(name)))
            cache[name] = model, corea_jax.generate(model, CHAT_PROMPTS, GREEDY_64, progress=False)
        return cache[name]

    return get


def _transformers_greedy(model_dir, max_new_tokens: int) -> tuple[np.ndarray, object]:
    """transformers' greedy `generate` of CHAT_PROMPTS, left-padded.

    Returns (new tokens [B, N] (padded after EOS), the tokenizer).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    texts = [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                           add_generation_prompt=True) for p in CHAT_PROMPTS]
    batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    threads = torch.get_num_threads()
    # One thread: on a small, busy CPU box torch's spinning worker threads make decode 5x slower.
    torch.set_num_threads(1)
    hf_model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    try:
        with torch.no_grad():
            out = hf_model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False)
    finally:
        del hf_model
        torch.set_num_threads(threads)
    return out[:, batch["input_ids"].shape[1]:].numpy(), tokenizer


@pytest.mark.real_model
@pytest.mark.parametrize("name", [SMOLLM2, QWEN_CODER])
@pytest.mark.slow
def test_greedy_matches_transformers(name, real_greedy):
    model, ours = real_greedy(name)
    hf_tokens, tokenizer = _transformers_greedy(fetch.default_model_dir(name), 64)
    lengths = [len(c[0].token_ids) for c in ours]
    assert max(lengths) == 64, "no prompt exercised the full 64-token budget"
    assert len(set(c[0].num_prompt_tokens for c in ours)) == len(CHAT_PROMPTS)
    eos = set(corea_jax.generation.eos_token_ids(model))
    for row, (completion,) in enumerate(ours):
        n = len(completion.token_ids)
        # transformers pads after EOS, so only our length is compared.
        assert completion.token_ids == hf_tokens[row, :n].tolist(), f"row {row} diverges"
        if completion.finish_reason == "stop":
            assert completion.token_ids[-1] in eos
        else:
            assert completion.finish_reason == "length" and n == 64
        assert completion.text == tokenizer.decode(hf_tokens[row, :n], skip_special_tokens=True)
        assert completion.num_generated_tokens == n == len(completion.logprobs)


@pytest.mark.real_model
@pytest.mark.slow
def test_stop_string_cuts_text_and_tokens(real_greedy):
    model, full = real_greedy(SMOLLM2)
    row = max(range(len(full)), key=lambda i: len(full[i][0].text))
    reference = full[row][0]
    # A stop string from the middle of the greedy answer (only its first occurrence counts).
    mid = len(reference.text) // 2
    stop = reference.text[mid:mid + 5]
    assert stop.strip(), stop
    cut = reference.text.find(stop)
    sampling = dataclasses.replace(GREEDY_64, stop=(stop, "<never-generated>"))
    out = corea_jax.generate(model, CHAT_PROMPTS, sampling, progress=False)

    got = out[row][0]
    assert got.text == reference.text[:cut]
    assert got.finish_reason == "stop"
    keep = len(got.token_ids)
    assert 0 < keep < len(reference.token_ids)
    assert got.token_ids == reference.token_ids[:keep]
    assert got.logprobs == reference.logprobs[:keep]
    assert got.num_generated_tokens == keep
    # The fewest tokens that reach the stop string.
    decode = model.tokenizer.decode
    assert stop in decode(got.token_ids, skip_special_tokens=True)
    assert stop not in decode(got.token_ids[:-1], skip_special_tokens=True)
    for i, (completion,) in enumerate(out):
        if stop not in full[i][0].text:
            assert completion == full[i][0]


# ----------------------------------------------------------------- tiny random model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny random qwen2 (GQA) without a tokenizer: token-id prompts only.

    Untied: the tied random model's greedy output repeats one token, which would hide bugs.
    """
    out = tmp_path_factory.mktemp("tiny_qwen2")
    save_random_hf_model("qwen2_untied", out)
    return corea_jax.load_model(out)


def test_n_samples_per_prompt_differ(tiny):
    prompts = _prompts([7, 19], tiny.config.vocab_size)
    sampling = corea_jax.SamplingParams(max_new_tokens=12, temperature=1.0, n=4, ignore_eos=True)
    out = corea_jax.generate(tiny, prompts, sampling, progress=False)
    assert [len(per_prompt) for per_prompt in out] == [4, 4]
    for prompt, per_prompt in zip(prompts, out):
        samples = {tuple(c.token_ids) for c in per_prompt}
        assert len(samples) == 4
        for c in per_prompt:
            assert c.num_prompt_tokens == len(prompt)
            assert c.num_generated_tokens == len(c.token_ids) == len(c.logprobs) == 12
            assert c.text == "" and c.finish_reason == "length"
    # Two prompts do not share their sample streams either.
    assert not {tuple(c.token_ids) for c in out[0]} & {tuple(c.token_ids) for c in out[1]}


@pytest.mark.slow
def test_seed_reproduces_and_different_seed_differs(tiny):
    prompts = _prompts([5, 11, 30], tiny.config.vocab_size)
    sampling = corea_jax.SamplingParams(max_new_tokens=12, temperature=1.0, top_p=0.9, n=2,
                                        seed=3)
    first = corea_jax.generate(tiny, prompts, sampling, progress=False)
    again = corea_jax.generate(tiny, prompts, sampling, progress=False)
    other = corea_jax.generate(tiny, prompts, dataclasses.replace(sampling, seed=4), progress=False)
    assert _tokens(first) == _tokens(again)
    assert all(np.array_equal(a, b) for a, b in zip(_logprobs(first), _logprobs(again)))
    pairs = [(a, b) for pa, pb in zip(_tokens(first), _tokens(other)) for a, b in zip(pa, pb)]
    assert all(a != b for a, b in pairs) and len(pairs) == 6


@pytest.mark.parametrize("sampling", [
    corea_jax.SamplingParams(max_new_tokens=10),
    corea_jax.SamplingParams(max_new_tokens=10, temperature=0.8, top_k=50, top_p=0.9, n=2, seed=1),
], ids=["greedy", "sampled"])
@pytest.mark.slow
def test_results_do_not_depend_on_batch_size(tiny, sampling):
    prompts = _prompts([5, 23, 9, 30], tiny.config.vocab_size, seed=1)
    # One row per batch (no padding beyond the length bucket) against one padded batch.
    runs = [corea_jax.generate(tiny, prompts, sampling, batch_size=b, progress=False)
            for b in (1, 32)]
    for run in runs[1:]:
        assert _tokens(run) == _tokens(runs[0])
        for a, b in zip(_logprobs(run), _logprobs(runs[0])):
            np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("schedule, new_tokens, most", [
    # One program per prompt-length bucket (64, 32, 16), at most one more.
    ("static", 20, 4),
    # One admit (prefill) program per (length bucket, distinct-prompt count 1 or 2), one decode
    # chunk and one cache shift.
    ("continuous", 40, 3 * 2 + 2),
])
@pytest.mark.slow
def test_varied_prompt_lengths_compile_a_handful_of_programs(tiny, schedule, new_tokens, most):
    lengths = np.linspace(3, 60, 20).astype(int).tolist()
    prompts = _prompts(lengths, tiny.config.vocab_size, seed=2)
    # A new-token bucket (32, 64) no other test uses, so this run compiles afresh.
    before = compile_count()
    out = corea_jax.generate(tiny, prompts, corea_jax.SamplingParams(max_new_tokens=new_tokens),
                             batch_size=2, progress=False, schedule=schedule)
    compiled = compile_count() - before
    assert 1 <= compiled <= most, f"{compiled} programs for 20 prompts in 2 slots"
    assert [c[0].num_prompt_tokens for c in out] == lengths
    # Another budget in the same bucket, another seed: nothing new to compile.
    before = compile_count()
    corea_jax.generate(tiny, prompts, corea_jax.SamplingParams(max_new_tokens=new_tokens + 5, seed=9),
                       batch_size=2, progress=False, schedule=schedule)
    assert compile_count() == before


@pytest.mark.parametrize("sampling", [
    corea_jax.SamplingParams(max_new_tokens=12, temperature=1.0, n=3, seed=2),
    corea_jax.SamplingParams(max_new_tokens=12, temperature=0.7, n=2, seed=3),
    corea_jax.SamplingParams(max_new_tokens=12, n=2),
], ids=["temperature1", "temperature0.7", "greedy"])
@pytest.mark.slow
def test_samples_sharing_a_prefill_match_separately_prefilled_rows(tiny, sampling):
    """n samples of a prompt are prefilled once and copied to n rows; they give the tokens and
    log-probs of n separate copies of the prompt (row p * n + s keyed alike), on both schedules."""
    prompts = _prompts([5, 23, 9], tiny.config.vocab_size, seed=6)
    copies = [p for p in prompts for _ in range(sampling.n)]
    want = corea_jax.generate(tiny, copies, dataclasses.replace(sampling, n=1), progress=False,
                              schedule="static")
    for schedule in corea_jax.generation.SCHEDULES:
        got = corea_jax.generate(tiny, prompts, sampling, progress=False, schedule=schedule)
        assert [c.token_ids for per in got for c in per] == [c[0].token_ids for c in want], schedule
        for a, b in zip(_logprobs(got), _logprobs(want)):
            np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.mark.slow
def test_continuous_completion_does_not_depend_on_its_batch(tiny):
    """A prompt alone and among others of other lengths, rows ending at EOS at different steps
    (slots refilled mid-run, the cache shifted), gives the same completions; so does the static
    path."""
    # 15 EOS tokens: at temperature 1 some rows end early, some run the whole budget.
    model = dataclasses.replace(tiny, config=tiny.config.replace(eos_token_ids=tuple(range(100, 115))))
    sampling = corea_jax.SamplingParams(max_new_tokens=16, temperature=1.0, n=2, seed=11)
    mixed = _prompts([6, 3, 28, 11, 40, 13], model.config.vocab_size, seed=7)
    alone = corea_jax.generate(model, mixed[:1], sampling, progress=False, schedule="continuous")
    among = corea_jax.generate(model, mixed, sampling, batch_size=2, progress=False, schedule="continuous")
    static = corea_jax.generate(model, mixed, sampling, batch_size=4, progress=False, schedule="static")
    assert _tokens(among)[0] == _tokens(alone)[0]
    np.testing.assert_allclose(among[0][1].logprobs, alone[0][1].logprobs, atol=1e-5)
    assert _tokens(among) == _tokens(static)
    assert {c.finish_reason for per in among for c in per} == {"stop", "length"}
    for a, b in zip(_logprobs(among), _logprobs(static)):
        np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.mark.slow
def test_continuous_tail_shrinks_the_batch_and_keeps_every_completion(tiny, monkeypatch):
    """Once no row waits, the slots halve as rows end (8 -> 4 -> 2 -> 1 here); the moved rows
    keep their cache, keys and step counts, so completions match the static schedule."""
    from corea_jax.generation import continuous

    sizes = []
    compact = continuous._compact

    def counting(state, keep):
        sizes.append(int(keep.shape[0]))
        return compact(state, keep)

    monkeypatch.setattr(continuous, "_compact", counting)
    # 6 EOS tokens at temperature 1: rows end at scattered steps over several decode chunks.
    model = dataclasses.replace(tiny, config=tiny.config.replace(eos_token_ids=tuple(range(100, 106))))
    sampling = corea_jax.SamplingParams(max_new_tokens=96, temperature=1.0, seed=4)
    prompts = _prompts([5, 9, 31, 12, 3, 20, 7, 16, 25, 11], model.config.vocab_size, seed=8)
    got = corea_jax.generate(model, prompts, sampling, batch_size=8, progress=False, schedule="continuous")
    want = corea_jax.generate(model, prompts, sampling, batch_size=8, progress=False, schedule="static")
    assert sizes and sizes == sorted(sizes, reverse=True) and sizes[0] <= 4
    assert _tokens(got) == _tokens(want)
    for a, b in zip(_logprobs(got), _logprobs(want)):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_unknown_schedule_names_the_field(tiny):
    with pytest.raises(ValueError, match=r"^schedule: expected one of"):
        corea_jax.generation.generate_tokens(tiny, [[4, 5]], corea_jax.SamplingParams(max_new_tokens=2),
                                             schedule="eager")


def _sampling_log_probs(logits: np.ndarray, sampling) -> np.ndarray:
    """Reference log-probs [..., V] of the distribution `sampling` draws from: softmax(logits / T)
    (greedy: T = 1), renormalised over the top-k / top-p set when those filter (top-p taken
    over the top-k-renormalised softmax)."""
    scaled = logits / (sampling.temperature or 1.0)
    log_probs = scaled - np.logaddexp.reduce(scaled, axis=-1, keepdims=True)
    if sampling.greedy or (sampling.top_k == 0 and sampling.top_p == 1):
        return log_probs
    order = np.argsort(-scaled, axis=-1, kind="stable")
    ranks = np.arange(scaled.shape[-1])
    in_top_k = ranks < (sampling.top_k or scaled.shape[-1])
    # top-p over the softmax renormalised within the top k, as transformers applies them
    top = np.where(in_top_k, np.take_along_axis(scaled, order, axis=-1), -np.inf)
    probs = np.exp(top - np.logaddexp.reduce(top, axis=-1, keepdims=True))
    keep_sorted = in_top_k & (np.cumsum(probs, -1) - probs < sampling.top_p)
    keep = np.zeros_like(keep_sorted)
    np.put_along_axis(keep, order, keep_sorted, axis=-1)
    kept = np.where(keep, scaled, -np.inf)
    return kept - np.logaddexp.reduce(kept, axis=-1, keepdims=True)


@pytest.mark.parametrize("sampling", [
    corea_jax.SamplingParams(max_new_tokens=16, temperature=1.0, n=2, seed=5),
    # Log-probs are under the sampling distribution: logits / T, as the trainer scores them.
    corea_jax.SamplingParams(max_new_tokens=16, temperature=0.7, n=2, seed=7),
    # ... renormalised over the tokens the filters keep.
    corea_jax.SamplingParams(max_new_tokens=16, temperature=0.7, top_k=20, top_p=0.8, n=2, seed=6),
    corea_jax.SamplingParams(max_new_tokens=16),
], ids=["temperature1", "temperature0.7", "filtered", "greedy"])
def test_logprobs_are_under_the_sampling_distribution(tiny, sampling):
    prompts = _prompts([4, 17, 30], tiny.config.vocab_size, seed=3)
    out = corea_jax.generate(tiny, prompts, sampling, progress=False)
    rows = [(p, c) for p, per_prompt in zip(prompts, out) for c in per_prompt]
    # The trainer's view: one forward over prompt + completion (right-padded to one length).
    width = max(len(p) + len(c.token_ids) for p, c in rows)
    ids = np.zeros((len(rows), width), np.int32)
    mask = np.zeros((len(rows), width), bool)
    for r, (p, c) in enumerate(rows):
        seq = p + c.token_ids
        ids[r, :len(seq)], mask[r, :len(seq)] = seq, True
    logits = np.asarray(corea_jax.logits(tiny, ids, mask), np.float64)
    for r, (p, c) in enumerate(rows):
        steps = len(p) - 1 + np.arange(len(c.token_ids))
        reference = _sampling_log_probs(logits[r, steps], sampling)[np.arange(len(steps)), c.token_ids]
        assert np.abs(np.asarray(c.logprobs) - reference).max() <= 1e-4


@pytest.fixture(scope="module")
def eos_case(tiny):
    """(model, prompts, j, greedy output without EOS): the model's only EOS is the token
    greedy row 0 first emits at step j >= 1 and row 1 never emits."""
    prompts = _prompts([6, 13], tiny.config.vocab_size, seed=4)
    sampling = corea_jax.SamplingParams(max_new_tokens=20, ignore_eos=True)
    free = corea_jax.generate(tiny, prompts, sampling, progress=False)
    row0, row1 = free[0][0].token_ids, free[1][0].token_ids
    j = next(j for j in range(1, 20) if row0[j] not in row0[:j] and row0[j] not in row1)
    eos_model = dataclasses.replace(tiny, config=tiny.config.replace(eos_token_ids=(row0[j],)))
    return eos_model, prompts, j, free


def test_eos_stops_a_row_and_the_budget_gives_length(eos_case):
    model, prompts, j, free = eos_case
    out = corea_jax.generate(model, prompts, corea_jax.SamplingParams(max_new_tokens=20),
                             progress=False)
    stopped, running = out[0][0], out[1][0]
    assert stopped.finish_reason == "stop"
    assert stopped.token_ids == free[0][0].token_ids[:j + 1]  # the EOS token included
    np.testing.assert_allclose(stopped.logprobs, free[0][0].logprobs[:j + 1], atol=1e-5)
    assert stopped.num_generated_tokens == j + 1
    assert running.finish_reason == "length"
    assert running.token_ids == free[1][0].token_ids and running.num_generated_tokens == 20


@pytest.mark.parametrize("sampling", [
    corea_jax.SamplingParams(max_new_tokens=13, ignore_eos=True),
    corea_jax.SamplingParams(max_new_tokens=13, ignore_eos=True, temperature=1.0, n=3),
], ids=["greedy", "sampled"])
@pytest.mark.slow
def test_ignore_eos_generates_exactly_max_new_tokens(eos_case, sampling):
    model, prompts, j, free = eos_case
    out = corea_jax.generate(model, prompts, sampling, progress=False)
    for per_prompt in out:
        for c in per_prompt:
            assert len(c.token_ids) == c.num_generated_tokens == 13
            assert c.finish_reason == "length"
    if sampling.greedy:  # the EOS token really was generated, and generation went on
        assert model.config.eos_token_ids[0] in out[0][0].token_ids[:-1]


# ------------------------------------------------- two turns (a character tokenizer)


_CHAT = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
         "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


@pytest.fixture(scope="module")
def chat_tiny(tmp_path_factory):
    """The tiny random qwen2 with a one-character-a-token tokenizer and a chat template, so
    every generated token spells text (ids 0-2: <pad>, <|im_start|>, <|im_end|> = EOS)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    out = tmp_path_factory.mktemp("chat_tiny")
    save_random_hf_model("qwen2_untied", out)
    chars = [chr(c) for c in range(32, 127)] + ["\n"]
    chars += [chr(0x100 + i) for i in range(211 - 3 - len(chars))]
    vocab = {t: i for i, t in enumerate(["<pad>", "<|im_start|>", "<|im_end|>", *chars])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="?"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("[\\s\\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="<|im_end|>",
                                        additional_special_tokens=["<|im_start|>"],
                                        clean_up_tokenization_spaces=False)
    tokenizer.chat_template = _CHAT
    model = dataclasses.replace(corea_jax.load_model(out), tokenizer=tokenizer)
    assert model.tokenizer.decode(model.tokenizer("a b\nc")["input_ids"]) == "a b\nc"
    return model


@pytest.mark.slow
def test_followup_after_a_stop_string_continues_the_cut_answer(chat_tiny):
    """The second turn after a stop string is the model's reply to the answer as returned
    (cut before the stop): the first turn's tokens past the cut are not in the cache."""
    from corea_jax import prompts
    from corea_jax.generation import chat_token_ids, generate_followup

    model, tok = chat_tiny, chat_tiny.tokenizer

    def followup(conversation, answer):  # a short question: one character is one token here
        return [*conversation, {"role": "assistant", "content": answer}, {"role": "user", "content": "Sure?"}]

    def suffix(tokenizer, conversation, answer):
        prefix = prompts.render(tokenizer, conversation) + answer
        return prompts.render(tokenizer, followup(conversation, answer))[len(prefix):]

    conversations = [[{"role": "user", "content": "What is 2 + 3?"}],
                     [{"role": "user", "content": "Name a prime number larger than ten, please."}]]
    first, follow = (corea_jax.SamplingParams(max_new_tokens=24, ignore_eos=True),
                     corea_jax.SamplingParams(max_new_tokens=8))
    free = corea_jax.generate(model, conversations, first, progress=False)
    text = free[0][0].text
    stop = text[10:13]  # cuts row 0 mid-answer (only its first occurrence counts)
    assert text.find(stop) >= 5 and len(free[0][0].token_ids) == 24, text
    cut = dataclasses.replace(first, stop=(stop,))
    out = generate_followup(model, conversations, suffix, cut, follow, progress=False)
    assert out[0][0][0].text == text[:text.find(stop)] and out[0][0][0].finish_reason == "stop"
    # The reference: the whole two-turn conversation, with the cut answer, encoded afresh.
    for conversation, ((answer, reply),) in zip(conversations, out):
        messages = followup(conversation, answer.text)
        [[want]] = corea_jax.generate(model, [chat_token_ids(tok, messages)], follow, progress=False)
        assert reply.token_ids == want.token_ids
        np.testing.assert_allclose(reply.logprobs, want.logprobs, atol=1e-4)
        assert reply.num_prompt_tokens == want.num_prompt_tokens


# ------------------------------------------------------------------------ bad input


@pytest.mark.parametrize("prompts, match", [
    ([], r"prompts: expected at least one prompt"),
    ([[5, 6], []], r"prompts\[1\]: expected a non-empty prompt"),
    ([[5, 6], ""], r"prompts\[1\]: expected a non-empty prompt"),
    ([[3] * 600], r"prompts\[0\]: .*context of 512"),
    ([[4, 5], [3] * 500], r"prompts\[1\]: .*context of 512"),  # 500 + 16 new tokens
], ids=["no-prompts", "empty-ids", "empty-text", "longer-than-context", "no-room-to-generate"])
def test_bad_prompts_raise_naming_the_field(tiny, prompts, match):
    with pytest.raises(ValueError, match=match):
        corea_jax.generate(tiny, prompts, corea_jax.SamplingParams(max_new_tokens=16),
                           progress=False)


@pytest.mark.parametrize("kwargs, field", [
    (dict(max_new_tokens=0), "max_new_tokens"),
    (dict(max_new_tokens=-3), "max_new_tokens"),
    (dict(top_p=0.0), "top_p"),
    (dict(top_p=1.5), "top_p"),
    (dict(top_p=-1.0), "top_p"),
    (dict(temperature=-0.5), "temperature"),
    (dict(n=0), "n"),
])
def test_bad_sampling_params_raise_naming_the_field(kwargs, field):
    with pytest.raises(ValueError, match=rf"^{field}: expected"):
        corea_jax.SamplingParams(**kwargs)


# ------------------------------------------------------------------------ sharding


@pytest.mark.slow
def test_sharded_params_give_the_single_device_output(tmp_path):
    # Head counts and vocabulary divisible by the 4-way tensor axis.
    save_random_hf_model("qwen2_untied", tmp_path, num_key_value_heads=4, vocab_size=212)
    mesh = make_mesh({"data": 2, "tensor": 4})
    single = corea_jax.load_model(tmp_path)
    sharded = corea_jax.load_model(tmp_path, mesh=mesh)

    kernel = sharded.params["layers_0"]["self_attn"]["q_proj"]["kernel"]  # [D, H, Dh]
    assert kernel.sharding.spec[1] == "tensor"
    assert len(kernel.sharding.device_set) == 8
    assert kernel.addressable_shards[0].data.shape[1] == kernel.shape[1] // 4
    assert sharded.params["embed_tokens"]["embedding"].sharding.spec[0] == "tensor"

    prompts = _prompts([5, 17, 9, 30], 212, seed=5)
    sampling = corea_jax.SamplingParams(max_new_tokens=12)
    want = corea_jax.generate(single, prompts, sampling, progress=False)
    got = corea_jax.generate(sharded, prompts, sampling, progress=False)
    assert len({tuple(c[0].token_ids) for c in want}) == len(prompts)
    assert _tokens(got) == _tokens(want)
    for a, b in zip(_logprobs(got), _logprobs(want)):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_the_cache_is_created_in_its_shardings(tmp_path):
    from corea_jax.generation.steps import new_cache as _new_cache

    save_random_hf_model("qwen2_untied", tmp_path, num_key_value_heads=4, vocab_size=212)
    model = corea_jax.load_model(tmp_path, mesh=make_mesh({"data": 2, "tensor": 4}))
    cache = _new_cache(model, 4, 16)  # per layer [B, K, ...]: batch over data, kv heads over tensor
    assert len(cache.k) == len(cache.v) == model.config.num_layers
    for k in cache.k + cache.v:
        assert k.sharding.spec[:2] == (("data", "fsdp"), "tensor")
        assert k.addressable_shards[0].data.shape[:2] == (2, 1)
    single_row = _new_cache(model, 1, 16)  # a batch of 1 cannot split 2 ways: replicated
    assert single_row.k[0].sharding.spec[0] is None and single_row.k[0].sharding.spec[1] == "tensor"
    stacked = corea_jax.load_model(tmp_path, mesh=model.mesh, scan_layers=True)
    cache = _new_cache(stacked, 4, 16)  # [L, B, K, ...]
    assert cache.k.sharding.spec[1:3] == (("data", "fsdp"), "tensor")


@pytest.mark.slow
def test_followup_draws_from_its_own_random_stream(chat_tiny):
    """At temperature > 0 the second turn's draws are not the answer's replayed: at a
    temperature where every token is about equally likely, the same keys would pick the same
    tokens in both turns."""
    from corea_jax.generation import generate_followup

    def suffix(tokenizer, conversation, answer):
        return "<|im_end|>\n<|im_start|>user\nSure?<|im_end|>\n<|im_start|>assistant\n"

    conversations = [[{"role": "user", "content": "What is 2 + 3?"}],
                     [{"role": "user", "content": "Name a prime number."}]]
    hot = corea_jax.SamplingParams(max_new_tokens=12, temperature=1e4, ignore_eos=True, n=2, seed=3)
    out = generate_followup(chat_tiny, conversations, suffix, hot, dataclasses.replace(hot, n=1),
                            progress=False)
    pairs = [(answer.token_ids, reply.token_ids) for per_prompt in out for answer, reply in per_prompt]
    assert all(len(a) == len(r) == 12 for a, r in pairs)
    same = sum(x == y for a, r in pairs for x, y in zip(a, r))
    assert same <= 4, f"{same} of 48 follow-up tokens repeat the answer's draw at the same step"


def test_auto_schedule_is_continuous_on_cpu_only_when_rows_outnumber_slots():
    import types

    from corea_jax.generation.engine import pick_schedule

    one_cpu, meshed = types.SimpleNamespace(mesh=None), types.SimpleNamespace(mesh=object())
    assert jax.default_backend() == "cpu"
    assert pick_schedule(one_cpu, rows=48, batch_size=16) == "continuous"
    assert pick_schedule(one_cpu, rows=16, batch_size=16) == "static"
    assert pick_schedule(meshed, rows=48, batch_size=16) == "static"
