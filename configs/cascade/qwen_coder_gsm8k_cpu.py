"""The CPU cascade: Qwen2.5-Coder-0.5B-Instruct (SLM) and -1.5B-Instruct (LLM) on GSM8K.

  python -m launch.cascade --config=configs/cascade/qwen_coder_gsm8k_cpu.py --workdir=DIR

Test: the first 200 GSM8K test problems; calibration (thresholds, the probe): the first 32
GSM8K training problems. Greedy, the one-turn COREA prompt (reasoning, boxed answer,
`Confidence:` line) for both models; 192 / 256 new tokens (SLM / LLM: the 1.5B model writes
longer solutions), batches of 32 (the engine's fastest CPU batch), the continuous schedule.
records.jsonl makes the run resumable, and its committed records
(benchmarks/results/cascade_qwen_coder_gsm8k/) re-score in seconds. Both models come from
`launch.fetch_model`. These are the library's defaults (`corea_jax.cascade.config.defaults`).
"""

from corea_jax.cascade.config import LM_HEAD_PARAMS, data_spec, defaults, http_defaults, model_spec

# The names other config files used before the defaults moved into the library.
model_config, http_config, data_config = model_spec, http_defaults, data_spec
__all__ = ["LM_HEAD_PARAMS", "get_config", "model_config", "http_config", "data_config"]


def get_config():
    return defaults()
