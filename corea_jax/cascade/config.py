"""The cascade job's settings: every field with its default (`defaults()`), and the model, endpoint
and data entries experiment files build from (`model_spec`, `http_defaults`, `data_spec`).
Experiment files under configs/cascade/ (and the server's, configs/serve/) start from these and
change only what they are about. `resolve(config)` completes a config with the defaults (a
model entry's from its name) and `validate(config)` refuses an unknown field or a bad value
naming it, before any model runs; every consumer then reads fields directly.
"""

from __future__ import annotations

import ml_collections

from corea_jax.cascade.costs import COST_MODELS, lm_head_params
from corea_jax.settings import check_choice, check_fields, check_int

LLM_ON = ("all", "deferred")
BACKENDS = ("local", "http")

# hidden_size x vocab_size (from each model's config.json) of the models the cascade configs
# name, for the flops cost's LM head: the records hold each model's non-embedding count only.
LM_HEAD_PARAMS = {"qwen2.5-coder-0.5b-instruct": 896 * 151_936,
                  "qwen2.5-coder-1.5b-instruct": 1536 * 151_936,
                  "smollm2-135m-instruct": 576 * 49_152,
                  "Qwen/Qwen2.5-7B-Instruct": 3584 * 152_064,
                  "Qwen/Qwen2.5-32B-Instruct": 5120 * 152_064}


def head_params_from_dir(model_dir) -> int:
    """hidden_size x vocab_size from an HF directory's config.json (0 when it has none): the LM
    head the flops cost counts for a local model."""
    import json
    import types
    from pathlib import Path

    path = Path(model_dir) / "config.json"
    hf = json.loads(path.read_text()) if path.is_file() else {}
    return lm_head_params(types.SimpleNamespace(**hf)) if "hidden_size" in hf and "vocab_size" in hf else 0


def model_spec(name: str, prompt: str = "corea", probe_hidden: bool = False) -> ml_collections.ConfigDict:
    """A cascade model (config.slm / config.llm): every field with its default."""
    spec = ml_collections.ConfigDict()
    spec.name = name  # a corea_jax.models.fetch registry name, an HF directory or a .gguf file
    spec.backend = "local"  # "local" (JAX engine) or "http" (OpenAI-compatible server)
    spec.dtype = "float32"  # XLA on CPU is faster in fp32
    spec.mesh = ""  # e.g. "tensor:8"; empty: one device
    spec.mode = "one_turn"  # or "two_turn" (answer, then a confidence-only follow-up)
    spec.prompt = prompt  # corea_jax.prompts.PROMPTS preset
    spec.system_prompt = ""  # "" keeps the chat template's default system message
    spec.worked_example = ml_collections.FieldReference(None, field_type=bool)  # None: the preset's
    spec.max_new_tokens = 192
    spec.followup_tokens = 24
    spec.batch_size = 32
    spec.schedule = "continuous"  # local backend: "continuous" or "static" (BENCHMARKS.md, GSM8K)
    spec.temperature = 0.0
    spec.probe_hidden = probe_hidden  # keep the last hidden state (Cascade-Probe)
    spec.probe_window = 128  # the probe's forward pass reads the last 128 tokens (0: all; CPU time)
    spec.non_embedding_params = 0  # 0: counted from the loaded model (set it for an HTTP model)
    # hidden_size x vocab_size (flops cost); 0: unknown, the head is then not counted (the report
    # says so). Set it when config.<role>.name changes to a model of another size.
    spec.lm_head_params = LM_HEAD_PARAMS.get(name, 0)
    spec.price_per_million = ()  # (USD per 1M input, per 1M output) for cost_model = "price"
    spec.http = http_defaults()
    return spec


def http_defaults() -> ml_collections.ConfigDict:
    """An OpenAI-compatible endpoint's settings (<role>.http, used with backend = "http")."""
    http = ml_collections.ConfigDict()
    http.base_url = ""  # e.g. http://127.0.0.1:8000/v1
    http.model = ""  # the served model's name
    http.api_key_env = ""  # name of the environment variable holding the key ("" = no key)
    http.max_concurrency = 8
    http.requests_per_second = 0.0  # 0: no rate limit
    http.timeout_s = 120.0
    http.max_retries = 4
    http.backoff_s = 1.0
    http.logprobs = True  # ask for token log-probs (AvgProb) when the server offers them
    return http


def data_spec(source: str, split: str, limit: int) -> ml_collections.ConfigDict:
    """One split of the cascade's data (config.data.test / config.data.calibration)."""
    spec = ml_collections.ConfigDict()
    spec.source = source  # a corea_jax.cascade.datasets.SOURCES name or a local file
    spec.split = split
    spec.limit = limit
    spec.offset = 0
    spec.seed = 0
    spec.data_file = ml_collections.FieldReference(None, field_type=str)
    spec.question_field = ml_collections.FieldReference(None, field_type=str)
    spec.answer_field = ml_collections.FieldReference(None, field_type=str)
    spec.choices_field = ml_collections.FieldReference(None, field_type=str)
    spec.task = ml_collections.FieldReference(None, field_type=str)
    spec.name = ml_collections.FieldReference(None, field_type=str)  # the data set's name in the report
    return spec


def defaults() -> ml_collections.ConfigDict:
    """The cascade job's every field, at the values of the CPU run on real models
    (configs/cascade/qwen_coder_gsm8k_cpu.py: Qwen2.5-Coder 0.5B -> 1.5B on 200 GSM8K problems)."""
    config = ml_collections.ConfigDict()
    config.slm = model_spec("qwen2.5-coder-0.5b-instruct", "corea", probe_hidden=True)
    # The LLM gets the same COREA prompt: with the plain boxed-answer prompt ("rlvr") and 160
    # tokens, the 1.5B Coder model answered 11 of 32 calibration problems with a Python program
    # and ran out of tokens on 30 (pass@1 0.09, below the SLM); with this prompt and 256 tokens
    # it reached 0.32 on the first 60 test problems (README, "Measuring how an SLM states ...").
    config.llm = model_spec("qwen2.5-coder-1.5b-instruct", "corea")
    config.llm.max_new_tokens = 256
    config.data = ml_collections.ConfigDict()
    config.data.test = data_spec("gsm8k", "test", 200)
    config.data.calibration = data_spec("gsm8k", "train", 32)
    config.llm_on = "all"  # or "deferred": the LLM answers only deferred test items
    config.chunk_size = 32  # test items per SLM/LLM alternation
    # Hold one model at a time: with both loaded (12.5 GB) the run was the OOM killer's first
    # pick on the shared 24 GB box; reloading per chunk costs a load (~1 min), no recompilation.
    config.one_model_at_a_time = True
    config.cost_model = "flops"  # "flops", "price" or "time"
    config.threshold = ml_collections.ConfigDict()
    config.threshold.rule = "paper"  # COREA's tau: "paper", "fixed", "usage" or "risk"
    config.threshold.tau = 0.5  # the "fixed" rule's tau (the server's threshold.tau, same meaning)
    config.threshold.fixed_tau = config.threshold.get_ref("tau")  # its earlier name, kept working
    config.threshold.target_usage = 0.3  # "usage": the LLM answers this fraction of calibration items
    # COREA-risk: allowed pass@1 drop below the LLM. With 32 calibration items and delta = 0.1,
    # even no kept disagreement bounds the drop only by 1 - (delta / 2)^(1/32) = 0.089: epsilon
    # = 0.05 cannot be certified, 0.1 can.
    config.threshold.epsilon = 0.1
    config.threshold.delta = 0.1  # ... with probability >= 1 - delta
    config.probe_l2 = 1.0  # ridge penalty of the linear probe (standardized features)
    config.bootstrap = 1000  # paired bootstrap resamples for the 95% intervals
    config.seed = 0
    config.rescore_only = False  # True: no model; the report from records.jsonl alone
    # "slm", "llm" or "slm,llm": regenerate that role's records when its model or settings
    # changed (fingerprint.json); without it such a rerun is refused, naming the fields.
    config.overwrite = ""
    config.report = True  # False: generate records only
    return config


def _overlay(base: ml_collections.ConfigDict, config) -> None:
    """Writes `config`'s fields over `base`, groups field by field."""
    for key in config.keys():
        value = config[key]
        if isinstance(value, ml_collections.ConfigDict) and isinstance(base.get(key), ml_collections.ConfigDict):
            _overlay(base[key], value)
        else:
            base[key] = value


def resolve(config) -> ml_collections.ConfigDict:
    """The cascade config `config` describes with every field present: unknown fields refused
    (naming the closest known one), missing ones taken from `defaults()` (a model's LM head
    from its name); `threshold.fixed_tau`, the earlier name, sets `threshold.tau`."""
    out = defaults()
    check_fields(config, out, "config")
    for role in ("slm", "llm"):
        if role in config and "name" in config[role]:
            out[role].lm_head_params = LM_HEAD_PARAMS.get(config[role].name, 0)
    _overlay(out, config)
    return out


def validate(config) -> None:
    """Raises ValueError naming the first field the cascade job cannot run with (no model loads)."""
    from corea_jax import prompts
    from corea_jax.cascade import backends, http, records, thresholds
    from corea_jax.generation import SCHEDULES

    check_fields(config, defaults(), "config")
    check_choice(config.llm_on, "llm_on", LLM_ON)
    check_int(config.chunk_size, "chunk_size", 1)
    check_choice(config.cost_model, "cost_model", COST_MODELS)
    for role in records.MODELS:  # everything a backend checks, before any model runs
        spec = config[role]
        for key, allowed in (("backend", BACKENDS), ("mode", backends.MODES), ("schedule", SCHEDULES),
                             ("prompt", tuple(prompts.PROMPTS))):
            check_choice(spec[key], f"{role}.{key}", allowed)
        for key, low in (("max_new_tokens", 1), ("followup_tokens", 1), ("batch_size", 1), ("probe_window", 0)):
            check_int(spec[key], f"{role}.{key}", low)
        if spec.backend == "http":
            http.check_settings(f"{role}.http", **http.settings_from_config(spec.http))
    thresholds.validate(config.threshold)
    overwrite_roles(config)


def overwrite_roles(config) -> tuple[str, ...]:
    """The roles config.overwrite names ("" none, "slm", "llm", "slm,llm")."""
    from corea_jax.cascade import records

    value = config.overwrite or ""
    roles = tuple(r.strip() for r in str(value).split(",") if r.strip())
    if any(r not in records.MODELS for r in roles):
        raise ValueError(f"overwrite: expected '', 'slm', 'llm' or 'slm,llm', found {value!r}")
    return roles
