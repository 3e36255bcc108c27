"""Rollouts: G sampled completions per prompt from the generation engine, as padded arrays."""

from __future__ import annotations

import dataclasses

import numpy as np

from corea_jax.generation import SamplingParams, generate_tokens


@dataclasses.dataclass
class Rollout:
    """B prompts with G completions each (numpy, host).

    prompt_tokens, prompt_mask:         [B, P] left-padded
    completion_tokens, completion_mask: [B, G, C] right-padded (an ending EOS included)
    sampler_logprobs:                   [B, G, C] float32 log-probs the engine reported, 0 on padding
    hit_eos:                            [B, G] the completion ended with EOS (else it hit C)
    """

    prompt_tokens: np.ndarray
    prompt_mask: np.ndarray
    completion_tokens: np.ndarray
    completion_mask: np.ndarray
    sampler_logprobs: np.ndarray
    hit_eos: np.ndarray

    @property
    def lengths(self) -> np.ndarray:
        """Completion lengths [B, G]."""
        return self.completion_mask.sum(axis=-1)


def pad_prompts(prompt_ids: list[list[int]], length: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Left-pads prompts to `length`: tokens [B, length] int32 and mask [B, length] bool."""
    tokens = np.full((len(prompt_ids), length), pad_id, np.int32)
    mask = np.zeros((len(prompt_ids), length), bool)
    for i, ids in enumerate(prompt_ids):
        if len(ids) > length:
            raise ValueError(f"prompt {i} has {len(ids)} tokens, more than "
                             f"config.rollout.max_prompt_length = {length}")
        tokens[i, length - len(ids):] = ids
        mask[i, length - len(ids):] = True
    return tokens, mask


def pad_completions(completions: list[list[list[int]]], length: int, pad_id: int,
                    logprobs: list[list[list[float]]] | None = None):
    """[B][G] token lists -> tokens [B, G, length] int32, mask [B, G, length], logprobs float32."""
    num_prompts, group = len(completions), len(completions[0])
    tokens = np.full((num_prompts, group, length), pad_id, np.int32)
    mask = np.zeros((num_prompts, group, length), bool)
    values = np.zeros((num_prompts, group, length), np.float32)
    for b in range(num_prompts):
        for g in range(group):
            ids = completions[b][g][:length]
            tokens[b, g, :len(ids)] = ids
            mask[b, g, :len(ids)] = True
            if logprobs is not None:
                values[b, g, :len(ids)] = logprobs[b][g][:len(ids)]
    return tokens, mask, values


def sample_groups(model, prompt_ids: list[list[int]], sampling: SamplingParams, *,
                  prompt_length: int, batch_size: int) -> Rollout:
    """Samples `sampling.n` completions for each prompt with the engine (same params and graph
    as the loss) and pads them to [B, P] / [B, G, max_new_tokens]."""
    pad_id = model.config.pad_token_id if model.config.pad_token_id is not None else 0
    prompt_tokens, prompt_mask = pad_prompts(prompt_ids, prompt_length, pad_id)
    # Static: a rollout's rows fit one batch (a tie on CPU), and its float rounding is the one
    # the shipped reproduction was trained with.
    results = generate_tokens(model, prompt_ids, sampling, batch_size=batch_size, progress=False,
                              schedule="static")
    tokens, mask, logprobs = pad_completions([[r[0] for r in group] for group in results],
                                             sampling.max_new_tokens, pad_id,
                                             [[r[1] for r in group] for group in results])
    hit_eos = np.array([[r[2] for r in group] for group in results], bool)
    return Rollout(prompt_tokens, prompt_mask, tokens, mask, logprobs, hit_eos)
