"""A seconds-per-step CPU run: GRPO + RLCC on the toy "a+b" task with a tiny random-init model.

  python -m launch.train --config=configs/tiny.py --workdir=/tmp/tiny --config.total_steps=3

The model answers with three tokens, a boxed sum, a confidence bucket and EOS
(corea_jax.data.toy); the ordinary grader and RLCC reward score them; nothing is downloaded.
Steps take about 25 ms after a ~10 s compile. Over the 300 steps (seeds 0-5) the format is
learned, the reward rises from about -0.75 to 1.1-1.5 (of 1.5), accuracy from 0.08 to
0.75-1 and the rollouts' ECE falls from about 0.43 to 0.00-0.2.
"""

from corea_jax.rl.config import defaults


def get_config():
    config = defaults()
    config.total_steps = 300
    config.model.name = "toy"
    config.model.toy.hidden_size = 64
    config.model.toy.num_heads = 4
    config.data.source = "arithmetic"
    config.data.arithmetic.max_operand = 3  # questions 1+0 .. 1+3: every answer equally frequent
    config.data.arithmetic.addend = 1
    config.rollout.prompts_per_step = 8
    config.rollout.group_size = 8
    config.rollout.max_prompt_length = 16
    config.rollout.max_new_tokens = 3
    config.reward.preset = "rlcc_l1"
    config.grpo.micro_batch_size = 32
    config.optim.learning_rate = 1e-3
    config.checkpoint.every_steps = 10
    return config
