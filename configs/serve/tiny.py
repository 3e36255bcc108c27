"""COREA served on test-size random models that need no download (tests, the README's first try).

  python -m launch.serve --config=configs/serve/tiny.py --workdir=DIR

Both models are random-weight Qwen2-family decoders (`serving.answerers.random_model`: SLM 64
wide x 2 layers, LLM 96 x 4) with a byte-level BPE tokenizer trained on COREA's prompts at
start-up; their replies are noise. A random model states no verbal confidence, so the SLM's
confidence is its reply's mean token probability (`sequence_mean_prob`), which varies by
question (about 0.15-0.3 on GSM8K questions); at tau 0.5 every corea request goes to the LLM (the
cascade's dearest case; BENCHMARKS.md measures it), `--config.threshold.tau=0.2` splits them.
"""

from configs.serve import qwen_coder_cpu


def _random(spec, hidden: int, layers: int, seed_scale: float) -> None:
    spec.name = "random"
    spec.lm_head_params = 0  # not the default model's: counted from the random model as loaded
    spec.arch.hidden_size = hidden
    spec.arch.intermediate_size = 2 * hidden
    spec.arch.num_layers = layers
    spec.arch.num_heads = 4
    spec.arch.num_kv_heads = 2
    spec.arch.max_position_embeddings = 2048
    spec.arch.vocab_size = 512
    spec.arch.init_scale = seed_scale  # std of the random weights: peakier replies than 0.02


def get_config():
    config = qwen_coder_cpu.get_config()
    for spec in (config.slm, config.llm):
        spec.slots = 32
        spec.max_new_tokens = 64
        spec.max_prompt_tokens = 1024  # the toy tokenizer spells a long GSM8K question in ~600 tokens
    _random(config.slm, 64, 2, 0.3)
    _random(config.llm, 96, 4, 0.3)
    config.confidence_source = "sequence_mean_prob"
    config.threshold.tau = 0.5
    config.shadow_rate = 0.0
    config.limits.default_max_tokens = 32
    config.limits.requests_per_minute = 0.0
    config.drain_timeout_s = 60
    return config
