"""The server's settings: every field with its default (`defaults()`), and `validate(config)`,
run by `create_app` before any model loads, which refuses an unknown field or a bad value naming
it. Experiment files under configs/serve/ start from `defaults()` and change only what they are
about. Model entries are the cascade's (`cascade.config.model_spec`) plus the engine's limits.
"""

from __future__ import annotations

import ml_collections

from corea_jax.cascade import config as cascade_config
from corea_jax.settings import check_choice, check_fields, check_int, expect, is_number

ON_LLM_FAILURE = ("degraded", "error")
REFIT_RULES = ("risk", "usage")
DRIFT_POLICIES = ("keep", "defer", "refit")
CONVERSATION = ("pass", "refuse")


def model_spec(name: str, *, slots: int, max_new_tokens: int, max_prompt_tokens: int) -> ml_collections.ConfigDict:
    """A served model (config.slm / config.llm): the cascade's model entry plus the engine's limits."""
    spec = cascade_config.model_spec(name, "corea")
    spec.slots = slots  # requests decoded together (continuous batching)
    spec.max_new_tokens = max_new_tokens  # the largest max_tokens a request may ask of this model
    spec.max_prompt_tokens = max_prompt_tokens  # COREA's prompt around the question, in tokens
    spec.arch = ml_collections.ConfigDict()  # only for name = "random" (configs/serve/tiny.py)
    return spec


def defaults() -> ml_collections.ConfigDict:
    """The server's every field, at the values of the CPU server (configs/serve/qwen_coder_cpu.py:
    Qwen2.5-Coder 0.5B -> 1.5B in the local engine)."""
    config = ml_collections.ConfigDict()
    config.slm = model_spec("qwen2.5-coder-0.5b-instruct", slots=16, max_new_tokens=256, max_prompt_tokens=512)
    config.llm = model_spec("qwen2.5-coder-1.5b-instruct", slots=16, max_new_tokens=256, max_prompt_tokens=512)
    config.task = "gsm8k"  # how answers are extracted and compared ("gsm8k", "math", "choice")
    config.confidence_source = "verbal"  # corea_jax.confidence.SOURCES
    config.threshold = ml_collections.ConfigDict()
    config.threshold.tau = 0.7  # until DIR/threshold.json (launch.refit) replaces it
    config.cost_model = "flops"  # "flops", "price" (set <role>.price_per_million) or "time"
    config.on_llm_failure = "degraded"  # LLM down: the SLM's answer flagged degraded, or "error" (503)
    config.shadow_rate = 0.1  # corea requests audited: kept ones also go to the LLM, agreement logged
    config.log_questions = True  # False: records.jsonl keeps no question text
    # System messages and earlier turns: "pass" (through the chat template, before COREA's
    # instruction; the SLM's confidence was calibrated on single questions) or "refuse" (400).
    config.conversation = "pass"
    config.seed = 0
    config.drain_timeout_s = 120  # SIGTERM: how long in-flight requests may take to finish
    config.limits = ml_collections.ConfigDict()
    config.limits.default_max_tokens = 256  # a request without max_tokens
    config.limits.max_question_chars = 8000
    config.limits.requests_per_minute = 600.0  # per API key; 0 turns the limit off
    config.limits.burst = 64
    config.limits.max_body_bytes = 1_000_000  # a larger request body: 413
    config.limits.body_timeout_s = 30.0  # a body still arriving after this: 408
    config.limits.max_messages = 64  # messages in one request (each is templated and tokenized)
    config.limits.max_connections = 512  # open connections and requests at once (uvicorn: then 503)
    config.limits.max_queued = 64  # per model, beyond its slots (HTTP: max_concurrency); then refused
    config.limits.queue_full_status = 503  # 503 or 429, with Retry-After
    config.limits.max_tokens_policy = "refuse"  # max_tokens above a model's limit: "refuse" (400) or "clamp"
    # The live view of the server's own decisions (serving.live, /metrics, the dashboard): labels
    # from POST /v1/corea/feedback where present, SLM-LLM agreement on audited requests otherwise.
    config.monitor = ml_collections.ConfigDict()
    config.monitor.window = 500  # the latest labelled decisions behind ECE, AUROC and the risk
    config.monitor.epsilon = 0.05  # the risk a tau promises when its fit states none (e.g. config)
    config.monitor.level = 0.95  # of every interval shown
    config.monitor.bins = 10  # of the reliability diagram
    config.monitor.keep = 20000  # log lines (and response ids accepting feedback) held in memory
    # Automatic re-fit of tau from the live labels (off at 0): every `every_labels` new labels,
    # the risk rule on the latest `monitor.window` labelled decisions; each fit is versioned in
    # DIR/threshold_history.jsonl and written to DIR/threshold.json.
    config.refit = ml_collections.ConfigDict()
    config.refit.every_labels = 0
    config.refit.rule = "risk"  # "risk" (a guarantee) or "usage"
    config.refit.epsilon = 0.05  # risk: at most this share of requests kept with a wrong SLM answer ...
    config.refit.delta = 0.1  # ... with probability >= 1 - delta
    config.refit.target_usage = 0.3  # usage: the LLM's share
    config.refit.min_items = 100  # labelled decisions a fit needs
    # Drift: conformal test martingales on the SLM's confidences and on the labelled calibration
    # loss, against the decisions tau was fitted on (alarm at 1 / (alpha / 2) each: a false alarm
    # with probability <= alpha over the whole stream). On an alarm: "keep" (say so), "defer"
    # (defer everything until a new tau is loaded) or "refit" (re-fit on post-alarm labels only).
    config.drift = ml_collections.ConfigDict()
    config.drift.alpha = 0.01
    config.drift.reference = 200  # decisions a test starts from when no fit gave it a reference
    config.drift.policy = "keep"
    return config


def validate(config) -> None:
    """Raises ValueError naming the first field the server cannot run with (no model is loaded)."""
    from corea_jax import grading
    from corea_jax.cascade import check_tau
    from corea_jax.confidence import SOURCES

    check_fields(config, defaults(), "config", free=("arch",))
    check_choice(config.confidence_source, "confidence_source", SOURCES)
    check_choice(config.task, "task", grading.TASKS)
    check_tau(config.threshold.tau, "threshold.tau")
    check_choice(config.on_llm_failure, "on_llm_failure", ON_LLM_FAILURE)
    check_choice(config.conversation, "conversation", CONVERSATION)
    expect(is_number(config.shadow_rate) and 0 <= config.shadow_rate <= 1, "shadow_rate", "a number in [0, 1]",
           config.shadow_rate)
    for role in ("slm", "llm"):
        spec = config[role]
        if spec.backend == "local":
            for key in ("slots", "max_prompt_tokens", "max_new_tokens"):
                check_int(spec[key], f"{role}.{key}", 1)
        if config.cost_model == "price" and len(tuple(spec.price_per_million)) != 2:
            raise ValueError(f"{role}.price_per_million: the price cost model needs (USD per 1M input "
                             f"tokens, USD per 1M output tokens), found {tuple(spec.price_per_million)}")
    if config.slm.backend != "local":
        raise ValueError("slm.backend: expected 'local' (the SLM's confidence needs the local engine)")
    if config.llm.backend == "http" and config.cost_model == "flops" and not config.llm.non_embedding_params:
        raise ValueError("llm.non_embedding_params: an LLM behind HTTP needs its parameter count for the "
                         "flops cost model (or set cost_model='price' with llm.price_per_million)")
    limits = config.limits
    for key, low in (("max_body_bytes", 1024), ("max_queued", 0), ("max_messages", 1), ("max_connections", 1),
                     ("default_max_tokens", 1), ("max_question_chars", 1), ("burst", 1)):
        check_int(limits[key], f"limits.{key}", low)
    expect(is_number(limits.body_timeout_s) and limits.body_timeout_s > 0, "limits.body_timeout_s",
           "a number > 0 (seconds)", limits.body_timeout_s)
    expect(is_number(limits.requests_per_minute) and limits.requests_per_minute >= 0,
           "limits.requests_per_minute", "a number >= 0 (0: no limit)", limits.requests_per_minute)
    check_choice(limits.queue_full_status, "limits.queue_full_status", (429, 503))
    check_choice(limits.max_tokens_policy, "limits.max_tokens_policy", ("refuse", "clamp"))
    expect(is_number(config.drain_timeout_s) and config.drain_timeout_s >= 0, "drain_timeout_s",
           "a number >= 0 (seconds)", config.drain_timeout_s)
    for key, low in (("window", 1), ("bins", 1), ("keep", 1)):
        check_int(config.monitor[key], f"monitor.{key}", low)
    for field, value in (("monitor.epsilon", config.monitor.epsilon), ("monitor.level", config.monitor.level),
                         ("refit.epsilon", config.refit.epsilon), ("refit.delta", config.refit.delta),
                         ("drift.alpha", config.drift.alpha)):
        expect(is_number(value) and 0 < value < 1, field, "a number in (0, 1)", value)
    expect(is_number(config.refit.target_usage) and 0 <= config.refit.target_usage <= 1, "refit.target_usage",
           "a number in [0, 1]", config.refit.target_usage)
    check_int(config.refit.every_labels, "refit.every_labels", 0)
    check_int(config.refit.min_items, "refit.min_items", 1)
    check_choice(config.refit.rule, "refit.rule", REFIT_RULES)
    check_int(config.drift.reference, "drift.reference", 1)
    check_choice(config.drift.policy, "drift.policy", DRIFT_POLICIES)
