"""Generation throughput: corea_jax vs transformers `generate`, plus the machine's roofline.

  python -m benchmarks.generate [--model=qwen2.5-coder-0.5b-instruct] [--batches=1,8,32]
                                [--dtypes=float32,bfloat16] [--out=benchmarks/results/generate.json]
  python -m benchmarks.generate --architecture=qwen2.5-7b-instruct --dtypes=bfloat16  # on a GPU
  python -m benchmarks.generate --workload=gsm8k --dtypes=float32 --batches=16,32 --new_tokens=512
                                [--questions=48]  # realistic: answers end at EOS
  python -m benchmarks.generate --workload=grpo --model=smollm2-135m-instruct --dtypes=float32 \
                                --batches=64 --new_tokens=256  # 8 prompts x n = 8, temperature 1

`--architecture` (a corea_jax.models.architectures name) measures a model of the real shapes
with random weights on both sides (nothing to download; prompts are random token ids):
throughput does not depend on the weights when EOS is ignored. On a GPU transformers runs
there too (CUDA, its default attention).

Same prompts for both (GSM8K questions under the chat template, cut to exactly
--prompt_tokens tokens), greedy, --new_tokens forced (EOS ignored). Throughput counts
generated tokens over the whole call, prefill included, after one warm-up call (compilation
excluded). Decode-only speed comes from the difference with a 1-new-token call. The roofline of
one decode step is the larger of 2 x params x batch FLOPs over the measured `jnp.dot` peak and the
weight + KV-cache bytes over the measured memory bandwidth.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

from absl import app, flags

_MODEL = flags.DEFINE_string("model", "qwen2.5-coder-0.5b-instruct", "fetch registry name")
_BATCHES = flags.DEFINE_list("batches", ["1", "8", "32"], "batch sizes")
_DTYPES = flags.DEFINE_list("dtypes", ["float32", "bfloat16"], "dtypes")
_PROMPT_TOKENS = flags.DEFINE_integer("prompt_tokens", 100, "prompt length")
_NEW_TOKENS = flags.DEFINE_integer("new_tokens", 128, "forced new tokens")
_ARCHITECTURE = flags.DEFINE_string("architecture", None,
                                    "random weights of this architecture instead of --model")
_SCAN_LAYERS = flags.DEFINE_bool("scan_layers", False,
                                  "corea_jax parameter layout: stacked layers run by one scan "
                                  "(the training layout) instead of one parameter set per layer")
_FEATURE_MAJOR = flags.DEFINE_bool("feature_major", None, "[out, in] MLP and LM-head kernels, the rows "
                                   "minor (default: the decoding layout, `decoding_feature_major`)")
_SKIP_COREA = flags.DEFINE_bool("skip_corea", False, "gsm8k workload: measure transformers only "
                                "(e.g. at its best dtype, bfloat16 with AMX)")
_SKIP_HF = flags.DEFINE_bool("skip_hf", False, "measure corea_jax only")
_OUT = flags.DEFINE_string("out", None, "write the results as JSON here")
_WORKLOAD = flags.DEFINE_enum("workload", "forced", ["forced", "gsm8k", "grpo"],
                              "forced: --new_tokens forced, EOS ignored; gsm8k: --questions GSM8K test "
                              "questions under the chat template, greedy, up to --new_tokens, stop at EOS; "
                              "grpo: --questions GSM8K train questions x --group samples at temperature 1, "
                              "up to --new_tokens, stop at EOS (a GRPO rollout)")
_QUESTIONS = flags.DEFINE_integer("questions", 48, "gsm8k / grpo workload: how many questions "
                                  "(grpo: 8 unless set)")
_GROUP = flags.DEFINE_integer("group", 8, "grpo workload: samples per question (n)")

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def machine_peaks(header: dict | None = None) -> dict:
    """Measured fp32/bf16 `jnp.dot` GFLOP/s and memory bandwidth GB/s (benchmarks.peaks); on a
    CPU, read from the header's measurements instead of measuring them again."""
    from benchmarks import peaks

    if header:
        return {f"dot_gflops_{dtype}": header[f"xla_{dtype}_square_gflops"] for dtype in ("float32", "bfloat16")
                } | {"mem_gbps": header["mem_gbps"]}
    return {"dot_gflops_float32": peaks.dot_gflops("float32"),
            "dot_gflops_bfloat16": peaks.dot_gflops("bfloat16"), "mem_gbps": peaks.memory_gbps()}


def make_prompts(tokenizer, batch: int, length: int) -> list[list[int]]:
    """`batch` chat-templated GSM8K questions, each cut or padded (with more text) to `length` tokens."""
    questions = [json.loads(line)["question"] for line in
                 (SHARED / "gsm8k" / "test.jsonl").read_text().splitlines()[:batch * 2]]
    from corea_jax.generation import chat_token_ids

    prompts = []
    for i in range(batch):
        ids = chat_token_ids(tokenizer, [{"role": "user", "content": " ".join(questions[i:i + 2])}])
        prompts.append((ids * (length // len(ids) + 1))[-length:] if len(ids) < length else ids[-length:])
    return prompts


def time_corea(model, prompts, new_tokens) -> float:
    import corea_jax
    from corea_jax.generation import generate_tokens

    sampling = corea_jax.SamplingParams(max_new_tokens=new_tokens, ignore_eos=True)
    # Warm-up compiles the same program (same new-token bucket) in about half the steps.
    warm = corea_jax.SamplingParams(max_new_tokens=new_tokens // 2 + 1, ignore_eos=True)
    generate_tokens(model, prompts, warm, batch_size=len(prompts), progress=False)
    start = time.perf_counter()
    generate_tokens(model, prompts, sampling, batch_size=len(prompts), progress=False)
    return time.perf_counter() - start


def random_prompts(vocab_size: int, batch: int, length: int) -> list[list[int]]:
    import numpy as np

    return np.random.default_rng(0).integers(0, vocab_size, (batch, length)).tolist()


def load_models(dtype: str):
    """(corea_jax Model, transformers model or None) for --model or --architecture."""
    import jax

    import corea_jax
    from corea_jax.models import fetch

    if _ARCHITECTURE.value:
        from corea_jax.models.architectures import architecture
        from corea_jax.models.model import init_params

        from corea_jax.models.model import decoding_feature_major

        config = architecture(_ARCHITECTURE.value, dtype=dtype).replace(scan_layers=_SCAN_LAYERS.value)
        fm = _FEATURE_MAJOR.value
        config = config.replace(feature_major=decoding_feature_major(config, None) if fm is None else fm)
        model = corea_jax.Model(config=config, params=init_params(config, jax.random.key(0)))
    else:
        model_dir = fetch.fetch_model(_MODEL.value, fetch.default_model_dir(_MODEL.value))
        model = corea_jax.load_model(model_dir, dtype=dtype, scan_layers=_SCAN_LAYERS.value,
                                     feature_major=_FEATURE_MAJOR.value)
    if _SKIP_HF.value:
        return model, None
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.set_num_threads(os.cpu_count())
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if _ARCHITECTURE.value:
        hf_config = model.config.to_hf()
        hf_config = AutoConfig.for_model(hf_config.pop("model_type"), **hf_config)
        with torch.device(device):
            hf_model = AutoModelForCausalLM.from_config(hf_config, dtype=getattr(torch, dtype))
    else:
        hf_model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype)).to(device)
    return model, hf_model.eval()


def time_hf(hf_model, prompts, new_tokens, pad_id) -> float:
    import torch

    ids = torch.tensor(prompts, device=hf_model.device)
    mask = torch.ones_like(ids)
    kwargs = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                  pad_token_id=pad_id)
    warm = dict(kwargs, max_new_tokens=4, min_new_tokens=4)
    with torch.inference_mode():
        hf_model.generate(input_ids=ids, attention_mask=mask, **warm)
        if ids.is_cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        hf_model.generate(input_ids=ids, attention_mask=mask, **kwargs)
        if ids.is_cuda:
            torch.cuda.synchronize()
    return time.perf_counter() - start


def gsm8k_prompts(tokenizer, count: int, split: str = "test") -> list[list[int]]:
    """The first `count` GSM8K questions of `split` under the chat template, as they are."""
    from corea_jax.generation import chat_token_ids

    lines = (SHARED / "gsm8k" / f"{split}.jsonl").read_text().splitlines()[:count]
    return [chat_token_ids(tokenizer, [{"role": "user", "content": json.loads(line)["question"]}])
            for line in lines]


def time_corea_answers(model, prompts, new_tokens, batch, schedule, n: int = 1,
                       temperature: float = 0.0) -> tuple[float, list[list[int]]]:
    """(seconds, completions, n per prompt) of `prompts` up to `new_tokens`, stopping at EOS
    (greedy unless `temperature`), after a warm-up on the first batch (programs the timed run
    needs beyond those still compile in it)."""
    import corea_jax
    from corea_jax.generation import generate_tokens

    sampling = corea_jax.SamplingParams(max_new_tokens=new_tokens, n=n, temperature=temperature)
    warm = prompts[:max(1, batch // n)]
    generate_tokens(model, warm, sampling, batch_size=batch, progress=False, schedule=schedule)
    start = time.perf_counter()
    out = generate_tokens(model, prompts, sampling, batch_size=batch, progress=False, schedule=schedule)
    return time.perf_counter() - start, [ids for group in out for ids, _, _ in group]


def time_hf_answers(hf_model, prompts, new_tokens, batch, pad_id, eos_ids, n: int = 1,
                    temperature: float = 0.0) -> tuple[float, list[list[int]]]:
    """transformers `generate` in batches of `batch` rows (batch // n prompts x n samples,
    left-padded), stopping at EOS; greedy, or pure sampling at `temperature` (no top-k/top-p)."""
    import torch

    sampled = dict(do_sample=True, temperature=temperature, top_k=0, top_p=1.0) if temperature else \
        dict(do_sample=False)
    per_call = max(1, batch // n)

    def run(chunk, max_new):
        width = max(map(len, chunk))
        ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in chunk], device=hf_model.device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk], device=hf_model.device)
        out = hf_model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new,
                                num_return_sequences=n, pad_token_id=pad_id, eos_token_id=eos_ids,
                                **sampled)[:, width:].tolist()
        cut = []
        for row in out:
            end = next((i + 1 for i, t in enumerate(row) if t in eos_ids), len(row))
            cut.append(row[:end])
        return cut

    with torch.inference_mode():
        torch.manual_seed(0)
        run(prompts[:per_call], 4)
        start = time.perf_counter()
        completions = [c for i in range(0, len(prompts), per_call)
                       for c in run(prompts[i:i + per_call], new_tokens)]
    return time.perf_counter() - start, completions


def main_gsm8k() -> list[dict]:
    """The realistic workload: answers/s and generated tokens/s of corea_jax (continuous and
    static schedules) and transformers on the same prompts, batch size and dtype."""
    from corea_jax.generation import eos_token_ids

    rows = []
    for dtype in _DTYPES.value:
        model, hf_model = load_models(dtype)
        prompts = gsm8k_prompts(model.tokenizer, _QUESTIONS.value)
        eos = eos_token_ids(model)
        for batch in map(int, _BATCHES.value):
            row = dict(workload="gsm8k", dtype=dtype, batch=batch, questions=len(prompts),
                       max_new_tokens=_NEW_TOKENS.value, feature_major=model.config.feature_major)
            answers = {}
            for schedule in () if _SKIP_COREA.value else ("continuous", "static"):
                seconds, answers[schedule] = time_corea_answers(model, prompts, _NEW_TOKENS.value, batch,
                                                                schedule)
                row[f"corea_{schedule}_answers_s"] = len(prompts) / seconds
                row[f"corea_{schedule}_tok_s"] = sum(map(len, answers[schedule])) / seconds
            if hf_model is not None:
                seconds, theirs = time_hf_answers(hf_model, prompts, _NEW_TOKENS.value, batch,
                                                  model.config.pad_token_id or 0, eos)
                row.update(hf_answers_s=len(prompts) / seconds, hf_tok_s=sum(map(len, theirs)) / seconds)
                if answers:
                    row["same_answers_as_hf"] = sum(a == b for a, b in zip(answers["continuous"], theirs))
                    row["ratio_continuous"] = row["corea_continuous_answers_s"] / row["hf_answers_s"]
                    row["ratio_static"] = row["corea_static_answers_s"] / row["hf_answers_s"]
            if answers:
                row["same_answers_static_continuous"] = sum(
                    a == b for a, b in zip(answers["continuous"], answers["static"]))
            rows.append(row)
            print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}),
                  flush=True)
        del model, hf_model
    return rows


def main_grpo() -> list[dict]:
    """A GRPO rollout: questions x n samples at temperature 1, rows ending at EOS at their own
    lengths. The samples differ between the two libraries (their random streams differ), so
    this compares generated tokens/s and completions/s, not tokens."""
    from corea_jax.generation import eos_token_ids

    rows, n = [], _GROUP.value
    questions = _QUESTIONS.value if _QUESTIONS.present else 8
    for dtype in _DTYPES.value:
        model, hf_model = load_models(dtype)
        prompts = gsm8k_prompts(model.tokenizer, questions, split="train")
        eos = eos_token_ids(model)
        for batch in map(int, _BATCHES.value):
            row = dict(workload="grpo", dtype=dtype, batch=batch, questions=len(prompts), group=n,
                       max_new_tokens=_NEW_TOKENS.value, feature_major=model.config.feature_major)
            for schedule in ("continuous", "static"):
                seconds, ours = time_corea_answers(model, prompts, _NEW_TOKENS.value, batch, schedule, n=n,
                                                   temperature=1.0)
                row[f"corea_{schedule}_completions_s"] = len(ours) / seconds
                row[f"corea_{schedule}_tok_s"] = sum(map(len, ours)) / seconds
                row[f"corea_{schedule}_mean_tokens"] = sum(map(len, ours)) / len(ours)
            if hf_model is not None:
                seconds, theirs = time_hf_answers(hf_model, prompts, _NEW_TOKENS.value, batch,
                                                  model.config.pad_token_id or 0, eos, n=n, temperature=1.0)
                row.update(hf_completions_s=len(theirs) / seconds, hf_tok_s=sum(map(len, theirs)) / seconds,
                           hf_mean_tokens=sum(map(len, theirs)) / len(theirs))
                for schedule in ("continuous", "static"):
                    row[f"ratio_{schedule}_tok_s"] = row[f"corea_{schedule}_tok_s"] / row["hf_tok_s"]
            rows.append(row)
            print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}),
                  flush=True)
        del model, hf_model
    return rows


def main(argv):
    del argv
    import jax

    from benchmarks import peaks as peaks_lib

    header = peaks_lib.machine_header() if jax.devices()[0].platform == "cpu" else None
    if header:
        print(peaks_lib.format_header(header), flush=True)
    if _WORKLOAD.value in ("gsm8k", "grpo"):
        print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
              f"jax {jax.__version__} on {jax.devices()[0].platform}, model {_MODEL.value}")
        rows = main_gsm8k() if _WORKLOAD.value == "gsm8k" else main_grpo()
        if _OUT.value:
            Path(_OUT.value).parent.mkdir(parents=True, exist_ok=True)
            Path(_OUT.value).write_text(json.dumps(
                {"device": str(jax.devices()[0].device_kind), "jax": jax.__version__, "machine": header,
                 "model": _MODEL.value, "rows": rows}, indent=2))
        return

    peaks = machine_peaks(header)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"jax {jax.__version__} on {jax.devices()[0].platform}")
    print(f"peaks: jnp.dot fp32 {peaks['dot_gflops_float32']:.0f} GFLOP/s, bf16 "
          f"{peaks['dot_gflops_bfloat16']:.0f} GFLOP/s, memory {peaks['mem_gbps']:.1f} GB/s")
    print(f"model: {_ARCHITECTURE.value + ' (random weights)' if _ARCHITECTURE.value else _MODEL.value}")
    rows = []
    new = _NEW_TOKENS.value
    for dtype in _DTYPES.value:
        model, hf_model = load_models(dtype)
        cfg = model.config
        for batch in map(int, _BATCHES.value):
            if model.tokenizer is None:
                prompts = random_prompts(cfg.vocab_size, batch, _PROMPT_TOKENS.value)
            else:
                prompts = make_prompts(model.tokenizer, batch, _PROMPT_TOKENS.value)
            ours = time_corea(model, prompts, new)
            prefill = time_corea(model, prompts, 1)
            step = (ours - prefill) / (new - 1)
            bytes_per = 2 if dtype == "bfloat16" else 4
            cache_bytes = (2 * cfg.num_layers * batch * (_PROMPT_TOKENS.value + new)
                           * cfg.num_kv_heads * cfg.head_dim * bytes_per)
            roof_flops = 2 * cfg.num_params * batch / (peaks[f"dot_gflops_{dtype}"] * 1e9)
            roof_bytes = (cfg.num_params * bytes_per + cache_bytes) / (peaks["mem_gbps"] * 1e9)
            roofline = max(roof_flops, roof_bytes)
            row = dict(dtype=dtype, batch=batch, corea_tok_s=batch * new / ours,
                       corea_decode_tok_s=batch / step, step_ms=step * 1e3,
                       roofline_step_ms=roofline * 1e3, roofline_frac=roofline / step)
            if hf_model is not None:
                theirs = time_hf(hf_model, prompts, new, cfg.pad_token_id or 0)
                row.update(hf_tok_s=batch * new / theirs, ratio=theirs / ours)
            rows.append(row)
            print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}),
                  flush=True)
        del model, hf_model

    print(f"\n{'dtype':9} {'batch':>5} {'corea tok/s':>12} {'decode tok/s':>13} {'HF tok/s':>9} "
          f"{'ratio':>6} {'step ms':>8} {'roofline ms':>12} {'% roofline':>10}")
    for r in rows:
        print(f"{r['dtype']:9} {r['batch']:5d} {r['corea_tok_s']:12.1f} {r['corea_decode_tok_s']:13.1f} "
              f"{r.get('hf_tok_s', float('nan')):9.1f} {r.get('ratio', float('nan')):6.2f} "
              f"{r['step_ms']:8.1f} {r['roofline_step_ms']:12.1f} {100 * r['roofline_frac']:9.0f}%")
    if _OUT.value:
        Path(_OUT.value).parent.mkdir(parents=True, exist_ok=True)
        Path(_OUT.value).write_text(json.dumps(
            {"device": str(jax.devices()[0].device_kind), "jax": jax.__version__,
             "scan_layers": _SCAN_LAYERS.value,
             "model": _ARCHITECTURE.value or _MODEL.value, "peaks": peaks, "machine": header, "rows": rows}, indent=2))


if __name__ == "__main__":
    app.run(main)
