"""COREA's SLM training at paper scale: Qwen2.5-7B-Instruct, GRPO + RLCC on DeepMath16K.

  python -m launch.train --config=configs/paper/qwen25_7b_rlcc.py --workdir=DIR

DeepMath16K: the first 16K problems of DeepMath-103K (question / final_answer), graded
with math-verify. Settings follow common RL-for-reasoning practice (DAPO / Dr. GRPO /
RLCR): G = 8, temperature 1, clip-higher 0.2 / 0.28, no KL, token-mean loss,
learning rate 1e-6 with a short warmup, 128 prompts per step in 4 optimizer steps.
Mesh: one node of 8 GPUs, parameters and batch fully sharded (FSDP).
"""

from corea_jax.rl.config import defaults


def get_config():
    config = defaults()
    config.seed = 0
    config.total_steps = 250  # 2 epochs of 16K problems at 128 per step
    config.model.name = "Qwen/Qwen2.5-7B-Instruct"
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
    # Rows per generation batch: the prefill's attention scores grow with it; launch.plan puts
    # 128 rows at 40.8 GiB per device on this mesh, 256 at 80.6 GiB (README "Scaling").
    config.rollout.batch_size = 128

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
    config.grpo.micro_batch_size = 8  # one group per micro-batch

    config.optim.learning_rate = 1e-6
    config.optim.warmup_steps = 10
    config.optim.schedule = "constant"
    config.optim.weight_decay = 0.01
    config.optim.grad_clip = 1.0

    config.checkpoint.every_steps = 10
    config.checkpoint.max_to_keep = 3
    config.checkpoint.async_save = True

    config.log.peak_flops = 8 * 989e12  # 8 x H100 SXM, dense bf16
    config.mesh.data = 1
    config.mesh.fsdp = 8
    config.mesh.tensor = 1
    return config
