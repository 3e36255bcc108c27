"""From B groups of G rows to the [M, ...] micro-batch arrays of each optimizer step.

A micro-batch holds `micro_batch_size` completion rows. When it is a multiple of G it
holds whole groups (one prompt forward per group); when it divides G, a group is split
over G / micro_batch_size micro-batches, each with its own copy of the prompt.

Kept groups (e.g. those whose rewards do not all tie) are packed first; the rest of each
optimizer batch is empty micro-batches, which the update skips. The shapes therefore do
not depend on how many groups were kept: one compiled update serves every step. An
optimizer batch without any kept group is not made at all: AdamW on zero gradients would
still move the params (momentum, weight decay) and advance the schedule.
"""

from __future__ import annotations

import numpy as np

from corea_jax.rl import grpo


def check_micro_batch_size(micro_batch_size: int, group_size: int, rows_per_update: int) -> None:
    """ValueError naming config.grpo.micro_batch_size when it cannot tile the batch."""
    if micro_batch_size < 1 or (micro_batch_size % group_size and group_size % micro_batch_size):
        raise ValueError(f"config.grpo.micro_batch_size: expected a multiple or a divisor of the group "
                         f"size {group_size}, found {micro_batch_size}")
    if rows_per_update % micro_batch_size:
        raise ValueError(f"config.grpo.micro_batch_size: expected a divisor of the {rows_per_update} "
                         f"completions of one optimizer step, found {micro_batch_size}")


def micro_batches(prompt_tokens: np.ndarray, prompt_mask: np.ndarray, rows: dict[str, np.ndarray],
                  keep: np.ndarray, *, num_minibatches: int, micro_batch_size: int,
                  aggregation: str, max_length: int) -> list[dict[str, np.ndarray]]:
    """Splits B groups into `num_minibatches` optimizer batches of micro-batches.

    Args:
      prompt_tokens, prompt_mask: [B, P].
      rows: per-row fields [B, G, ...]; must include completion_tokens / completion_mask
        [B, G, C]. Other fields (advantages [B, G], sampler_logprobs [B, G, C], ...) follow.
      keep: bool [B], the groups to train on.
    Returns:
      One dict per optimizer step that holds a kept group (fewer than `num_minibatches`
      when fewer groups are kept, none when none is): prompt_tokens / prompt_mask
      [M, k, P], every row field [M, n, ...] (n = micro_batch_size) and `weights`
      [M, n, C] from `aggregation_weights` over that optimizer batch.
    """
    num_groups, group = rows["completion_mask"].shape[:2]
    if num_groups % num_minibatches:
        raise ValueError(f"config.grpo.num_minibatches: expected a divisor of the {num_groups} "
                         f"prompts per step, found {num_minibatches}")
    groups_per_update = num_groups // num_minibatches
    check_micro_batch_size(micro_batch_size, group, groups_per_update * group)
    chunk = min(group, micro_batch_size)  # rows of one group that share a prompt forward
    chunks_per_group = group // chunk
    prompts_per_micro = micro_batch_size // chunk

    kept = np.flatnonzero(keep)
    # Kept groups spread over the optimizer steps as evenly as possible.
    splits = [groups for groups in np.array_split(kept, num_minibatches) if len(groups)]
    out = []
    for groups in splits:
        order = np.concatenate([groups, np.full(groups_per_update - len(groups), -1)]).astype(np.int64)
        valid = order >= 0
        index = np.where(valid, order, 0)

        def take(array, index=index, valid=valid):
            taken = array[index].copy()
            taken[~valid] = 0
            return taken

        mb_rows = {name: take(value) for name, value in rows.items()}
        mb_rows["completion_mask"] = mb_rows["completion_mask"].astype(bool)
        mb_rows["weights"] = grpo.aggregation_weights(
            mb_rows["completion_mask"].reshape(-1, mb_rows["completion_mask"].shape[-1]),
            aggregation, max_length).reshape(mb_rows["completion_mask"].shape)
        # [groups, G, ...] -> [groups * chunks, chunk, ...] -> [M, n, ...]
        micro = {}
        for name, value in mb_rows.items():
            value = value.reshape(groups_per_update * chunks_per_group, chunk, *value.shape[2:])
            micro[name] = value.reshape(-1, micro_batch_size, *value.shape[2:])
        for name, value in (("prompt_tokens", take(prompt_tokens)), ("prompt_mask", take(prompt_mask))):
            value = np.repeat(value, chunks_per_group, axis=0)
            micro[name] = value.reshape(-1, prompts_per_micro, value.shape[-1])
        out.append(micro)
    return out
