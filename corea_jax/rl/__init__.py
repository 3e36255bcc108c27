"""RL training (GRPO + the RLCC calibration reward) and SFT, as functions over a small train state.

  config.py         every config field, and `validate` (run before any compile)
  rollout.py        G completions per prompt from the generation engine, padded
  scoring.py        texts -> rewards -> metrics
  grpo.py           advantages, aggregation weights, the clipped surrogate (+ k3 KL), SFT loss
  logprobs.py       completion log-probs with one prompt forward per group
  batching.py       groups -> optimizer batches of micro-batches
  update.py         one jitted AdamW step with gradient accumulation
  train_state.py    TrainState, the optimizer and its schedule
  checkpointing.py  orbax checkpoints;  metrics_writer.py  JSONL + TensorBoard
  trainer.py        the rollout -> score -> update loop: `train(config, workdir)`
"""

from corea_jax.rl.config import defaults, validate
from corea_jax.rl.grpo import (LossConfig, aggregation_weights, group_advantages, grpo_loss,
                               policy_objective, sft_loss, tied_groups)
from corea_jax.rl.logprobs import completion_logprobs
from corea_jax.rl.train_state import TrainState, init_train_state, make_optimizer
from corea_jax.rl.trainer import train
from corea_jax.rl.update import update_step
from corea_jax.rl.config import loss_config, total_updates
from corea_jax.rl.policy import sft_target_text
from corea_jax.rl.train_state import train_state_shardings
from corea_jax.rl.update import micro_batch_shardings, sharded_update_step
from corea_jax.rl import batching, config, flops, trainer  # modules other packages use

__all__ = [
    "LossConfig",
    "TrainState",
    "aggregation_weights",
    "batching",
    "completion_logprobs",
    "config",
    "defaults",
    "flops",
    "group_advantages",
    "grpo_loss",
    "init_train_state",
    "loss_config",
    "make_optimizer",
    "micro_batch_shardings",
    "policy_objective",
    "sft_loss",
    "sft_target_text",
    "sharded_update_step",
    "tied_groups",
    "total_updates",
    "train",
    "train_state_shardings",
    "trainer",
    "update_step",
    "validate",
]
