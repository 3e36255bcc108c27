"""From-scratch decoders for the reproduction: a real family's config at toy sizes, and the
trainer configs that train them (SFT, then GRPO with each reward preset)."""

from __future__ import annotations

from pathlib import Path

import jax
import ml_collections

from corea_jax.models import Model, ModelConfig, for_tokenizer, init_params, save_hf
from corea_jax.rl import config as rl_config


def model_config(arch, tokenizer) -> ModelConfig:
    """A decoder of family `arch.model_type` ("qwen2" or "llama") with `arch`'s sizes and the
    tokenizer's vocabulary and special tokens (eos ends an assistant turn)."""
    return for_tokenizer(arch, tokenizer)


def init_model_dir(arch, tokenizer_dir: Path, out_dir: Path, seed: int) -> ModelConfig:
    """Saves a randomly initialized decoder (normal(0.02) weights) with the tokenizer as an HF
    directory; the trainer starts SFT from it like from any other HF model."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    config = model_config(arch, tokenizer)
    save_hf(Model(config, init_params(config, jax.random.key(seed)), tokenizer), out_dir)
    return config


def non_embedding_params(config: ModelConfig) -> int:
    """Parameters outside the embedding and LM head (the FLOPs cost model counts these)."""
    head = 0 if config.tie_word_embeddings else config.vocab_size * config.hidden_size
    return config.num_params - config.vocab_size * config.hidden_size - head


def _update(target: ml_collections.ConfigDict, overrides, path: str = "config") -> None:
    for key, value in overrides.items():
        if key not in target:
            raise ValueError(f"{path}.{key}: not a trainer config field (known: {sorted(target.keys())})")
        if isinstance(target[key], ml_collections.ConfigDict):
            _update(target[key], value, f"{path}.{key}")
        else:
            target[key] = value


def trainer_config(config, overrides, *, model_dir: Path, train_file: Path, seed: int | None = None
                   ) -> ml_collections.ConfigDict:
    """`corea_jax.rl.config.defaults()` for one training run of the reproduction: the task's
    file, prompt and lengths from `config.task`, then `overrides` (a nested dict of trainer
    fields: mode, total_steps, optim, rollout, reward, ...); `seed` defaults to config.seed."""
    c = rl_config.defaults()
    c.seed = config.seed if seed is None else seed
    c.model.name = str(model_dir)
    c.data.source = str(train_file)
    c.data.task = "gsm8k"
    c.data.prompt = config.task.prompt
    c.rollout.max_prompt_length = config.task.max_prompt_tokens
    c.rollout.max_new_tokens = config.task.max_new_tokens
    c.log.tensorboard = False
    c.checkpoint.every_steps = 50
    c.checkpoint.max_to_keep = 1
    _update(c, overrides)
    rl_config.validate(c)
    return c
