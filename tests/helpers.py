"""Shared test fixtures: tiny random HF reference models and real fetched models."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
# GSM8K / MATH500: ../shared/data beside the checkout, or $COREA_SHARED_DATA (.ci/run sets it
# for a clone elsewhere); the same directory the library's dataset names resolve in.
SHARED_DATA = Path(os.environ.get("COREA_SHARED_DATA", REPO.parent / "shared" / "data"))


def tiny_hf_config(kind: str, **overrides):
    """A small transformers config: 'qwen2', 'qwen2_untied' or 'llama3'."""
    from transformers import LlamaConfig, Qwen2Config

    common = dict(vocab_size=211, hidden_size=64, intermediate_size=112, num_hidden_layers=3,
                  num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-6,
                  max_position_embeddings=512, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    if kind.startswith("qwen2"):
        cfg = Qwen2Config(**common, tie_word_embeddings=(kind == "qwen2"),
                          rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    elif kind == "llama3":
        common.update(max_position_embeddings=256)
        cfg = LlamaConfig(**common, tie_word_embeddings=False, rope_parameters={
            "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
            "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 32})
    else:
        raise ValueError(kind)
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return cfg


def save_random_hf_model(kind: str, out: Path, seed: int = 0, **overrides):
    """Saves a random-weight transformers model (safetensors) and returns it (eval mode, fp32)."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_hf_config(kind, **overrides), dtype=torch.float32)
    # Non-trivial norms and biases so a transposed or skipped tensor shows up in the logits.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.copy_(1 + 0.1 * torch.randn_like(param))
            elif name.endswith(".bias"):
                param.copy_(0.1 * torch.randn_like(param))
    model.eval()
    model.save_pretrained(out, safe_serialization=True)
    return model


def torch_logits(model, ids: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Reference logits; positions count real tokens (as corea_jax.logits does)."""
    import torch

    ids_t = torch.as_tensor(np.asarray(ids), dtype=torch.long)
    mask_t = torch.ones_like(ids_t) if mask is None else torch.as_tensor(np.asarray(mask), dtype=torch.long)
    positions = (mask_t.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        out = model(input_ids=ids_t, attention_mask=mask_t, position_ids=positions)
    return out.logits.float().numpy()
