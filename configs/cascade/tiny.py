"""A seconds-long cascade on tiny random chat models (tests: resume after SIGKILL, the pipeline).

  python -m launch.cascade --config=configs/cascade/tiny.py --workdir=DIR \
      --config.slm.name=SLM_DIR --config.llm.name=LLM_DIR

SLM_DIR / LLM_DIR: HF directories with a tokenizer and a chat template (the tests write random
ones with `tests.cascade_helpers.save_tiny_chat_model`). 4 GSM8K test and 2 train problems,
4 new tokens, batches of 2: the records grow a pair of lines at a time.
"""

from corea_jax.cascade import config as cascade_config


def get_config():
    config = cascade_config.defaults()
    for role in ("slm", "llm"):
        config[role].name = f"tiny-{role}-dir"  # set on the command line
        config[role].lm_head_params = 0  # not the Qwen head: unknown for a tiny model
        config[role].max_new_tokens = 4
        config[role].batch_size = 2
        config[role].probe_window = 0
        config[role].system_prompt = ""
    config.data.test.limit = 4
    config.data.calibration.limit = 2
    config.chunk_size = 2
    config.one_model_at_a_time = False  # tiny models: keep both, no reloads
    config.bootstrap = 50
    return config
