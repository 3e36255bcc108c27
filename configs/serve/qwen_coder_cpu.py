"""COREA served on CPU: Qwen2.5-Coder-0.5B-Instruct (SLM) -> Qwen2.5-Coder-1.5B-Instruct (LLM).

  COREA_API_KEYS=... python -m launch.serve --config=configs/serve/qwen_coder_cpu.py --workdir=DIR

Both models run in the local JAX engine (fetched on first use, as `launch.fetch_model` does), each
behind its own continuous-batching scheduler. The model specs are the cascade's
(`configs/cascade/qwen_coder_gsm8k_cpu.model_config`), so `--config.llm.backend=http` with
`--config.llm.http.base_url=...` puts the LLM behind any OpenAI-compatible server instead.
tau 0.7 until `launch.refit` fits one from the live log.
"""

import ml_collections

from configs.cascade import qwen_coder_gsm8k_cpu as cascade


def model_spec(name: str, *, slots: int, max_new_tokens: int, max_prompt_tokens: int) -> ml_collections.ConfigDict:
    spec = cascade.model_config(name, "corea")
    spec.slots = slots  # requests decoded together (continuous batching)
    spec.max_new_tokens = max_new_tokens  # the largest max_tokens a request may ask of this model
    spec.max_prompt_tokens = max_prompt_tokens  # COREA's prompt around the question, in tokens
    spec.arch = ml_collections.ConfigDict()  # only for name = "random" (configs/serve/tiny.py)
    return spec


def get_config() -> ml_collections.ConfigDict:
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
    return config
