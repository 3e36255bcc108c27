"""Optimizer batches from kept groups: an optimizer step without a kept group is not made."""

from __future__ import annotations

import numpy as np
import pytest

from corea_jax.rl import batching, trainer
from corea_jax.rl.train_state import optimizer_updates
from tests.test_rl_trainer import tiny_config


def _groups(num_groups=4, group=2, length=3):
    rng = np.random.default_rng(0)
    prompt_tokens = rng.integers(3, 50, size=(num_groups, 5)).astype(np.int32)
    rows = {"completion_tokens": rng.integers(3, 50, size=(num_groups, group, length)).astype(np.int32),
            "completion_mask": np.ones((num_groups, group, length), bool),
            "advantages": rng.normal(size=(num_groups, group)).astype(np.float32)}
    return prompt_tokens, np.ones_like(prompt_tokens, bool), rows


def test_fewer_kept_groups_than_minibatches_make_only_non_empty_batches():
    prompt_tokens, prompt_mask, rows = _groups()
    keep = np.array([False, True, False, True])
    out = batching.micro_batches(prompt_tokens, prompt_mask, rows, keep, num_minibatches=4,
                                 micro_batch_size=2, aggregation="token_mean", max_length=3)
    assert len(out) == 2 and all(mb["completion_mask"].any() for mb in out)
    assert [mb["completion_tokens"][0].tolist() for mb in out] == [rows["completion_tokens"][1].tolist(),
                                                                  rows["completion_tokens"][3].tolist()]
    none = batching.micro_batches(prompt_tokens, prompt_mask, rows, np.zeros(4, bool), num_minibatches=2,
                                  micro_batch_size=2, aggregation="token_mean", max_length=3)
    assert none == []


@pytest.mark.slow
def test_a_step_with_one_kept_group_makes_one_adamw_update_per_epoch(tmp_path, monkeypatch):
    """Empty optimizer batches would still call AdamW (momentum replays, weight decay applies,
    the schedule's count advances); only the batch holding the kept group may update."""
    from corea_jax.rl import scoring

    score_texts = scoring.score_texts

    def one_group_untied(*args, **kwargs):
        scores = score_texts(*args, **kwargs)
        total = np.zeros_like(scores["total"])
        total[0] = np.arange(total.shape[1])  # group 0's rewards differ, every other group ties
        return dict(scores, total=total)

    monkeypatch.setattr(scoring, "score_texts", one_group_untied)
    config = tiny_config()
    config.total_steps = 1
    config.grpo.num_minibatches, config.grpo.num_epochs, config.grpo.micro_batch_size = 4, 2, 8
    state = trainer.train(config, tmp_path, log=lambda _: None)
    assert optimizer_updates(state) == 2
