"""A short real-model cascade for a CPU: SmolLM2-135M-Instruct (SLM) -> Qwen2.5-Coder-0.5B-Instruct (LLM).

  python -m launch.cascade --config=configs/cascade/small_cpu.py --workdir=DIR

The first 40 GSM8K test problems, 40 GSM8K training problems for calibration, both models
greedy under the COREA prompt (reasoning, boxed answer, `Confidence:` line), fp32, both fetched
by `launch.fetch_model` on first use. 6.4 minutes (383 s) on an idle 2-core CPU, measured
2026-12-02 from a fresh clone with both models fetched: the report's format on real models, not
a result (40 items give wide intervals; the models are untrained for calibration, and the 0.5B
LLM gets 2 of the 40 test problems right). `configs/cascade/qwen_coder_gsm8k_cpu.py` is the larger run (hours).
"""

from corea_jax.cascade import config as cascade_config


def get_config():
    config = cascade_config.defaults()
    config.slm = cascade_config.model_spec("smollm2-135m-instruct", "corea", probe_hidden=True)
    config.llm = cascade_config.model_spec("qwen2.5-coder-0.5b-instruct", "corea")
    config.llm.system_prompt = ("You are a helpful assistant. Solve math problems in words and "
                                "arithmetic, without writing code.")
    for spec in (config.slm, config.llm):
        spec.max_new_tokens = 192
        spec.batch_size = 20
    config.data.test.limit = 40
    config.data.calibration.limit = 40
    config.chunk_size = 40
    config.bootstrap = 500
    return config
