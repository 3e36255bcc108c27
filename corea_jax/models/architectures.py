"""The paper's model shapes, without their weights: for memory plans and speed benchmarks.

Each entry is the architecture part of the model's Hugging Face `config.json` (values as
published on the hub). `architecture(name, dtype)` gives the ModelConfig, so
`param_shapes(architecture(...))` describes a 32B model in a few kilobytes, and
`init_params` gives random weights of the real shapes for throughput measurements
(throughput does not depend on the weights' values when EOS is ignored).
"""

from __future__ import annotations

import difflib

from corea_jax.models.config import ModelConfig

_QWEN25 = dict(model_type="qwen2", hidden_act="silu", max_position_embeddings=32768,
               rope_theta=1_000_000.0, bos_token_id=151643, eos_token_id=151645, use_sliding_window=False)

ARCHITECTURES: dict[str, dict] = {
    "smollm2-135m-instruct": dict(
        model_type="llama", hidden_act="silu", vocab_size=49152, hidden_size=576, intermediate_size=1536,
        num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
        rms_norm_eps=1e-5, rope_theta=100_000.0, bos_token_id=1, eos_token_id=2, pad_token_id=2,
        tie_word_embeddings=True),
    "qwen2.5-0.5b-instruct": dict(_QWEN25, vocab_size=151936, hidden_size=896, intermediate_size=4864,
                                  num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                                  rms_norm_eps=1e-6, tie_word_embeddings=True),
    "qwen2.5-1.5b-instruct": dict(_QWEN25, vocab_size=151936, hidden_size=1536, intermediate_size=8960,
                                  num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
                                  rms_norm_eps=1e-6, tie_word_embeddings=True),
    "qwen2.5-7b-instruct": dict(_QWEN25, vocab_size=152064, hidden_size=3584, intermediate_size=18944,
                                num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
                                rms_norm_eps=1e-6, tie_word_embeddings=False),
    "qwen2.5-32b-instruct": dict(_QWEN25, vocab_size=152064, hidden_size=5120, intermediate_size=27648,
                                 num_hidden_layers=64, num_attention_heads=40, num_key_value_heads=8,
                                 rms_norm_eps=1e-6, tie_word_embeddings=False),
    "llama-3.1-8b-instruct": dict(
        model_type="llama", hidden_act="silu", vocab_size=128256, hidden_size=4096,
        intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
        max_position_embeddings=131072, rms_norm_eps=1e-5, rope_theta=500_000.0,
        rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                          original_max_position_embeddings=8192),
        bos_token_id=128000, eos_token_id=[128001, 128008, 128009], tie_word_embeddings=False),
}


def architecture(name: str, dtype: str = "bfloat16") -> ModelConfig:
    """The ModelConfig of a known model (see ARCHITECTURES), computing in `dtype`."""
    if name not in ARCHITECTURES:
        close = difflib.get_close_matches(name, ARCHITECTURES, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"architecture: expected one of {sorted(ARCHITECTURES)}, found {name!r}{hint}")
    return ModelConfig.from_hf(ARCHITECTURES[name], dtype=dtype)
