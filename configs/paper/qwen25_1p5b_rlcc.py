"""COREA's SLM training at paper scale: Qwen2.5-1.5B-Instruct, GRPO + RLCC on DeepMath16K.

  python -m launch.train --config=configs/paper/qwen25_1p5b_rlcc.py --workdir=DIR

Same recipe as qwen25_7b_rlcc.py (see there) with a larger learning rate for the smaller
model. Mesh: 8 GPUs as 2 data-parallel replicas of 4-way FSDP.
"""

from corea_jax.rl.config import defaults


def get_config():
    config = defaults()
    config.seed = 0
    config.total_steps = 250
    config.model.name = "Qwen/Qwen2.5-1.5B-Instruct"
    config.model.dtype = "bfloat16"
    config.model.remat = True

    config.data.source = "zwhe99/DeepMath-103K"
    config.data.split = "train"
    config.data.question_field = "question"
    config.data.answer_field = "final_answer"
    config.data.limit = 16_000
    config.data.task = "math"
    config.data.prompt = "corea"

    config.rollout.prompts_per_step = 128
    config.rollout.group_size = 8
    config.rollout.max_prompt_length = 1024
    config.rollout.max_new_tokens = 4096
    config.rollout.temperature = 1.0
    config.rollout.batch_size = 512

    config.reward.preset = "rlcc_l1"

    config.grpo.advantage = "std"
    config.grpo.eps_low = 0.2
    config.grpo.eps_high = 0.28
    config.grpo.kl_beta = 0.0
    config.grpo.aggregation = "token_mean"
    config.grpo.filter_tied_groups = True
    config.grpo.behaviour_logprobs = "trainer"
    config.grpo.num_minibatches = 4
    config.grpo.num_epochs = 1
    config.grpo.micro_batch_size = 16

    config.optim.learning_rate = 2e-6
    config.optim.warmup_steps = 10
    config.optim.schedule = "constant"
    config.optim.weight_decay = 0.01
    config.optim.grad_clip = 1.0

    config.checkpoint.every_steps = 10
    config.checkpoint.max_to_keep = 3
    config.checkpoint.async_save = True

    config.log.peak_flops = 8 * 989e12  # 8 x H100 SXM, dense bf16
    config.mesh.data = 2
    config.mesh.fsdp = 4
    config.mesh.tensor = 1
    return config
