"""A seconds-per-step CPU run: GRPO + RLCC on the toy "a+b" task with a tiny random-init model.

  python -m launch.train --config=configs/tiny.py --workdir=/tmp/tiny --config.total_steps=3

The model answers with three tokens, a boxed sum, a confidence bucket and EOS
(corea_jax.data.toy); the ordinary grader and RLCC reward score them; nothing is downloaded.
In about 100 steps (a few seconds after compiling) the format is learned, the reward rises
from about -0.65 to 0.5 and the rollouts' ECE falls from about 0.43 to 0.25.
"""

from corea_jax.rl.config import defaults


def get_config():
    config = defaults()
    config.total_steps = 300
    config.model.name = "toy"
    config.model.toy.hidden_size = 64
    config.model.toy.num_heads = 4
    config.data.source = "arithmetic"
    config.data.arithmetic.max_operand = 3  # questions 0+1 .. 3+1: every answer equally frequent
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
