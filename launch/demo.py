"""Demo: fetch a real small instruct model, ask it a GSM8K question in the COREA format, grade it.

  python -m launch.demo [--config=configs/demo.py] [--config.model=qwen2.5-coder-1.5b-instruct]

Until the CPU reproduction of the paper lands, this is the README's main job. It shows the
pipeline (weights -> JAX model -> generation -> grading and stated confidence), not accuracy:
an untrained 135M model is often wrong, which is exactly what COREA's deferral is for.
"""

import time

from absl import app
from ml_collections import config_flags

import corea_jax
from corea_jax import grading, prompts
from corea_jax.models import fetch
from launch import quiet_logs

_CONFIG = config_flags.DEFINE_config_file("config", "configs/demo.py", "Demo config file.")


def main(argv):
    del argv
    quiet_logs()
    config = _CONFIG.value
    model_dir = fetch.fetch_model(config.model, fetch.default_model_dir(config.model))
    model = corea_jax.load_model(model_dir, dtype=config.dtype)
    messages = prompts.build_messages(config.question, prompts.get_prompt_config(config.prompt))
    sampling = corea_jax.SamplingParams(max_new_tokens=config.max_new_tokens,
                                        temperature=config.temperature)
    start = time.perf_counter()
    [[answer]] = corea_jax.generate(model, [messages], sampling, progress=False)
    seconds = time.perf_counter() - start
    correct = grading.grade(answer.text, config.gold, "gsm8k")
    print(f"\nQ: {config.question}\n\nA ({config.model}):\n{answer.text}\n")
    print(f"extracted answer: {grading.extract_answer(answer.text, 'gsm8k')!r} (gold {config.gold}) "
          f"-> {'correct' if correct else 'wrong'}")
    print(f"stated confidence: {grading.parse_confidence(answer.text)}")
    print(f"[{answer.num_generated_tokens} tokens in {seconds:.1f} s including compilation; "
          f"finish_reason={answer.finish_reason}]")


if __name__ == "__main__":
    app.run(main)
