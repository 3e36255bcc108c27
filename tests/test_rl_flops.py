"""The model FLOPs behind MFU: what the engine and the update really compute, counted once."""

from __future__ import annotations

import types

import jax.numpy as jnp
import numpy as np
import pytest

from corea_jax.models.architectures import architecture
from corea_jax.rl import flops, rollout, trainer
from corea_jax.rl.config import loss_config
from tests.test_rl_trainer import tiny_config

_TIMES = (0.0, 1.0, 1.5, 3.0)


def _rollout(num_prompts=4, group=8, prompt_length=16, completion_length=6):
    prompt_mask = np.zeros((num_prompts, prompt_length), bool)
    for i in range(num_prompts):
        prompt_mask[i, prompt_length - 5 - 2 * i:] = True  # 5, 7, 9, 11 tokens
    completion_mask = np.zeros((num_prompts, group, completion_length), bool)
    completion_mask[..., :4] = True
    return rollout.Rollout(np.zeros(prompt_mask.shape, np.int32), prompt_mask,
                           np.zeros(completion_mask.shape, np.int32), completion_mask,
                           np.zeros(completion_mask.shape, np.float32), np.ones((num_prompts, group), bool))


def test_rollout_prefills_each_prompt_once():
    """The engine prefills a prompt once for all G of its samples, so sampling's model FLOPs
    are one prefill per prompt plus a forward per generated token, not G prefills."""
    config = tiny_config()
    model_config = architecture("smollm2-135m-instruct")
    roll = _rollout(group=config.rollout.group_size)
    metrics = trainer._cost_metrics(model_config, config, roll, np.zeros(4, bool), 0, did_update=False,
                                    times=_TIMES)
    prompt_tokens, generated = 5 + 7 + 9 + 11, 4 * 8 * 4
    want = (flops.forward_flops(model_config, prompt_tokens, 0, 8 / 2)
            + flops.forward_flops(model_config, generated, generated, 8 + 4 / 2))
    assert metrics["model_tflops"] == pytest.approx(want / 1e12, rel=1e-9)
    assert metrics["mfu"] == pytest.approx(want / 3.0 / config.log.peak_flops, rel=1e-9)


@pytest.mark.parametrize("num_minibatches", [1, 2, 4])
def test_forward_only_passes_count_each_kind_once_whatever_the_minibatching(monkeypatch, num_minibatches):
    """The recomputed old log-probs and the reference log-probs each cover every kept group
    once, however many optimizer batches hold them: two passes, not two per minibatch."""
    monkeypatch.setattr(trainer, "score_logprobs", lambda params, mb, **_: jnp.zeros_like(mb["sampler_logprobs"]))
    config = tiny_config()
    config.grpo.num_minibatches, config.grpo.num_epochs, config.grpo.kl_beta = num_minibatches, 2, 0.05
    sums = dict(loss=0.0, grad_norm=0.0, tokens=12.0, clipped=0.0, ratio=12.0, kl=0.0, entropy=0.0,
                logprob=0.0, sampler_gap=0.0)
    ctx = trainer.StepContext(base_key=None, reward_config=None, loss_config=loss_config(config),
                              update=lambda state, mb, objective: (state, sums), ref_params={})
    batch = {"completion_mask": jnp.ones((1, 4, 3), bool), "sampler_logprobs": jnp.zeros((1, 4, 3))}
    state = types.SimpleNamespace(params=jnp.zeros(2))
    model = types.SimpleNamespace(mesh=None, config=None)
    _, _, passes = trainer._grpo_updates(state, [dict(batch) for _ in range(num_minibatches)], model,
                                         config, ctx)
    assert passes == 2
