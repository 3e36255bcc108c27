"""Demo: fetch a real small instruct model and answer a question with it.

  python -m launch.demo [--config=configs/demo.py] [--config.question="..."]

Until the CPU reproduction of the paper lands, this is the README's main job.
"""

import time

from absl import app
from ml_collections import config_flags

import corea_jax
from corea_jax.models import fetch
from launch import quiet_logs

_CONFIG = config_flags.DEFINE_config_file("config", "configs/demo.py", "Demo config file.")


def main(argv):
    del argv
    quiet_logs()
    config = _CONFIG.value
    model_dir = fetch.fetch_model(config.model, fetch.default_model_dir(config.model))
    model = corea_jax.load_model(model_dir, dtype=config.dtype)
    sampling = corea_jax.SamplingParams(max_new_tokens=config.max_new_tokens,
                                        temperature=config.temperature)
    start = time.perf_counter()
    [[answer]] = corea_jax.generate(model, [config.question], sampling, progress=False)
    seconds = time.perf_counter() - start
    print(f"\nQ: {config.question}\nA ({config.model}): {answer.text}\n")
    print(f"[{answer.num_generated_tokens} tokens in {seconds:.1f} s including compilation; "
          f"finish_reason={answer.finish_reason}]")


if __name__ == "__main__":
    app.run(main)
