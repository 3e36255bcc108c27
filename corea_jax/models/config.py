"""Decoder configuration: the one description of a Qwen2 / Llama model that every module reads.

`ModelConfig` is a frozen, hashable dataclass, so it can be a static argument of `jax.jit`.
It is built from (and written back to) a Hugging Face `config.json` dictionary.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax.numpy as jnp

# model_type -> the HF architecture class name written to config.json on export.
SUPPORTED_MODEL_TYPES = {"qwen2": "Qwen2ForCausalLM", "llama": "LlamaForCausalLM"}
SUPPORTED_ROPE_TYPES = ("default", "llama3")
SUPPORTED_DTYPES = ("float32", "bfloat16", "float16")


class ConfigError(ValueError):
    """A config field holds a value this implementation does not support."""


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """RoPE frequency settings (HF `rope_parameters`)."""

    theta: float = 10000.0
    rope_type: str = "default"
    # llama3 scaling only:
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture and numerics of a decoder-only LM.

    Attributes:
      model_type: "qwen2" or "llama".
      vocab_size, hidden_size, intermediate_size, num_layers: the usual sizes.
      num_heads, num_kv_heads, head_dim: attention shape (GQA when num_kv_heads < num_heads).
      qkv_bias / o_bias: bias on the q/k/v and output projections (Qwen2: True / False).
      tie_word_embeddings: the LM head reuses the input embedding matrix.
      param_dtype: storage dtype of parameters; dtype: compute dtype of matmuls.
        Norm statistics, softmax and the logits are always float32.
    """

    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    max_position_embeddings: int
    rms_norm_eps: float = 1e-6
    rope: RopeScaling = RopeScaling()
    qkv_bias: bool = False
    o_bias: bool = False
    tie_word_embeddings: bool = False
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    pad_token_id: int | None = None
    param_dtype: str = "float32"
    dtype: str = "float32"
    # Use jax.checkpoint (rematerialisation) around each layer in training.
    remat: bool = False
    # Parameter layout of the layers. True: stacked on a leading "layers" axis and run by one
    # `nn.scan` (one compiled layer: fast compiles; the training layout). False: one parameter
    # set per layer (`layers_0`, `layers_1`, ...) run by an unrolled loop, so each matmul reads
    # its weights in place; a scan slices (copies) every layer's weights out of the stack at
    # every step, which cost a third of a CPU decode step (`relayout` converts).
    scan_layers: bool = True
    # Orientation of the MLP and untied LM-head kernels. False: [in, out] (`x @ W`, the
    # training layout). True: [out, in] as HF stores them, applied as `W @ x^T` with the rows
    # minor: XLA's CPU matmul runs that form 1.3-1.6x faster at the 16-64 rows of a decode step
    # (BENCHMARKS.md, "Feature-major decoding"); a decoding layout (`decoding_feature_major`).
    feature_major: bool = False

    def __post_init__(self):
        if self.model_type not in SUPPORTED_MODEL_TYPES:
            raise ConfigError(
                f"model_type: expected one of {sorted(SUPPORTED_MODEL_TYPES)}, found {self.model_type!r}"
            )
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(
                f"num_attention_heads ({self.num_heads}) must be a multiple of "
                f"num_key_value_heads ({self.num_kv_heads})"
            )
        if self.head_dim % 2:
            raise ConfigError(f"head_dim: expected an even number for RoPE, found {self.head_dim}")
        if self.rope.rope_type not in SUPPORTED_ROPE_TYPES:
            raise ConfigError(
                f"rope_parameters.rope_type: expected one of {SUPPORTED_ROPE_TYPES}, "
                f"found {self.rope.rope_type!r}"
            )
        for field in ("scan_layers", "feature_major"):
            if not isinstance(getattr(self, field), bool):
                raise ConfigError(f"{field}: expected True or False, found {getattr(self, field)!r}")
        for field in ("param_dtype", "dtype"):
            if getattr(self, field) not in SUPPORTED_DTYPES:
                raise ConfigError(
                    f"{field}: expected one of {SUPPORTED_DTYPES}, found {getattr(self, field)!r}"
                )

    @property
    def jnp_dtype(self):
        return jnp.dtype(self.dtype)

    @property
    def jnp_param_dtype(self):
        return jnp.dtype(self.param_dtype)

    @property
    def num_params(self) -> int:
        """Number of parameters (embedding and LM head counted once each if untied)."""
        d, f, h, kv, hd = (self.hidden_size, self.intermediate_size, self.num_heads,
                           self.num_kv_heads, self.head_dim)
        attn = d * hd * (h + 2 * kv) + h * hd * d
        if self.qkv_bias:
            attn += hd * (h + 2 * kv)
        if self.o_bias:
            attn += d
        layer = attn + 3 * d * f + 2 * d
        head = 0 if self.tie_word_embeddings else self.vocab_size * d
        return self.vocab_size * d + self.num_layers * layer + d + head

    def replace(self, **changes) -> "ModelConfig":
        return dataclasses.replace(self, **changes)

    # ----------------------------------------------------------------- HF conversion

    @classmethod
    def from_hf(cls, hf: dict[str, Any], *, dtype: str = "float32") -> "ModelConfig":
        """Builds a config from an HF `config.json` dictionary; unsupported settings raise ConfigError."""
        model_type = hf.get("model_type")
        if model_type not in SUPPORTED_MODEL_TYPES:
            archs = hf.get("architectures")
            raise ConfigError(
                f"model_type: expected one of {sorted(SUPPORTED_MODEL_TYPES)}, found {model_type!r}"
                + (f" (architectures {archs})" if archs else "")
            )
        for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                    "num_attention_heads"):
            if key not in hf:
                raise ConfigError(f"config.json: missing required field {key!r}")
        if hf.get("hidden_act", "silu") != "silu":
            raise ConfigError(f"hidden_act: expected 'silu', found {hf['hidden_act']!r}")
        if hf.get("mlp_bias", False):
            raise ConfigError("mlp_bias: expected false, found true (not supported)")
        if hf.get("use_sliding_window", False):
            raise ConfigError("use_sliding_window: expected false, found true (not supported)")
        num_heads = int(hf["num_attention_heads"])
        head_dim = hf.get("head_dim") or hf["hidden_size"] // num_heads
        eos = hf.get("eos_token_id")
        eos_ids = tuple(eos) if isinstance(eos, (list, tuple)) else (() if eos is None else (eos,))
        if model_type == "qwen2":
            qkv_bias, o_bias = True, False
        else:
            qkv_bias = o_bias = bool(hf.get("attention_bias", False))
        return cls(
            model_type=model_type,
            vocab_size=int(hf["vocab_size"]),
            hidden_size=int(hf["hidden_size"]),
            intermediate_size=int(hf["intermediate_size"]),
            num_layers=int(hf["num_hidden_layers"]),
            num_heads=num_heads,
            num_kv_heads=int(hf.get("num_key_value_heads") or num_heads),
            head_dim=int(head_dim),
            max_position_embeddings=int(hf.get("max_position_embeddings", 2048)),
            rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
            rope=_rope_from_hf(hf),
            qkv_bias=qkv_bias,
            o_bias=o_bias,
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
            bos_token_id=hf.get("bos_token_id"),
            eos_token_ids=tuple(int(e) for e in eos_ids),
            pad_token_id=hf.get("pad_token_id"),
            param_dtype=dtype,
            dtype=dtype,
        )

    def to_hf(self) -> dict[str, Any]:
        """The HF `config.json` dictionary of this model (transformers and vLLM read it)."""
        rope: dict[str, Any] = {"rope_type": self.rope.rope_type, "rope_theta": self.rope.theta}
        if self.rope.rope_type == "llama3":
            rope.update(
                factor=self.rope.factor,
                low_freq_factor=self.rope.low_freq_factor,
                high_freq_factor=self.rope.high_freq_factor,
                original_max_position_embeddings=self.rope.original_max_position_embeddings,
            )
        eos: Any = list(self.eos_token_ids)
        if len(eos) == 1:
            eos = eos[0]
        hf = {
            "architectures": [SUPPORTED_MODEL_TYPES[self.model_type]],
            "model_type": self.model_type,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "max_position_embeddings": self.max_position_embeddings,
            "rms_norm_eps": self.rms_norm_eps,
            "hidden_act": "silu",
            "rope_parameters": rope,
            # transformers 4.x and vLLM read these two older keys.
            "rope_theta": self.rope.theta,
            "rope_scaling": None if self.rope.rope_type == "default" else dict(rope),
            "tie_word_embeddings": self.tie_word_embeddings,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": eos if eos != [] else None,
            "pad_token_id": self.pad_token_id,
            "torch_dtype": self.param_dtype,
            "dtype": self.param_dtype,
            "use_cache": True,
        }
        if self.model_type == "llama":
            hf.update(attention_bias=self.qkv_bias, mlp_bias=False)
        else:
            hf.update(use_sliding_window=False, sliding_window=None)
        return hf


def small_decoder(arch, *, vocab_size: int, eos_token_ids, pad_token_id: int, **fields) -> ModelConfig:
    """A small Qwen2- or Llama-family decoder from `arch` (model_type, hidden_size,
    intermediate_size, num_layers, num_heads, num_kv_heads, max_position_embeddings: a dict or
    ConfigDict; model_type defaults to "qwen2"): head_dim = hidden_size / num_heads, q/k/v biases
    as the family has them, embeddings tied unless `fields` say otherwise. The one builder behind
    the toy policy, the reproduction's decoders and the server's random test models."""
    get = (lambda k, d=None: arch[k] if k in arch else d)
    model_type = get("model_type", "qwen2")
    fields.setdefault("tie_word_embeddings", True)
    return ModelConfig(
        model_type=model_type, vocab_size=int(vocab_size), hidden_size=get("hidden_size"),
        intermediate_size=get("intermediate_size"), num_layers=get("num_layers"), num_heads=get("num_heads"),
        num_kv_heads=get("num_kv_heads"), head_dim=get("hidden_size") // get("num_heads"),
        max_position_embeddings=get("max_position_embeddings"), qkv_bias=model_type == "qwen2",
        eos_token_ids=tuple(int(e) for e in eos_token_ids), pad_token_id=int(pad_token_id), **fields)


def for_tokenizer(arch, tokenizer, **fields) -> ModelConfig:
    """`small_decoder` over an HF tokenizer's vocabulary, its eos ending an assistant turn."""
    return small_decoder(arch, vocab_size=len(tokenizer), eos_token_ids=(tokenizer.eos_token_id,),
                         pad_token_id=tokenizer.pad_token_id, **fields)


def _rope_from_hf(hf: dict[str, Any]) -> RopeScaling:
    """RoPE settings from `rope_parameters` (transformers 5) or `rope_theta` + `rope_scaling` (4.x)."""
    params = dict(hf.get("rope_scaling") or {})
    params.update(hf.get("rope_parameters") or {})
    theta = params.get("rope_theta", hf.get("rope_theta", 10000.0))
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise ConfigError(
            f"rope_parameters.rope_type: expected one of {SUPPORTED_ROPE_TYPES}, found {rope_type!r}"
        )
    if rope_type == "default":
        return RopeScaling(theta=float(theta))
    return RopeScaling(
        theta=float(theta),
        rope_type=rope_type,
        factor=float(params["factor"]),
        low_freq_factor=float(params.get("low_freq_factor", 1.0)),
        high_freq_factor=float(params.get("high_freq_factor", 4.0)),
        original_max_position_embeddings=int(params.get("original_max_position_embeddings", 8192)),
    )


def clean_float(x: float) -> float:
    """The shortest decimal that a float32-stored value came from (GGUF stores 1e-5 as 9.99999974e-06)."""
    import numpy as np

    value = float(str(np.float32(x)))
    return value if math.isfinite(value) else float(x)
