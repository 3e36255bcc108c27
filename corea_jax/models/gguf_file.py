"""GGUF import: llama.cpp files read with the `gguf` package and dequantized to float32.

`GGUFSource` presents the file's tensors under their HF names and in HF layout, so the
same `checkpoint.params_from_source` loads both formats. Config and tokenizer come from
transformers' own GGUF readers (neither needs torch).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from corea_jax.models.checkpoint import CheckpointError
from corea_jax.models.config import ModelConfig, clean_float

# GGUF tensor name -> HF tensor name ({i}: layer).
_LAYER_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias",
    "attn_output.bias": "self_attn.o_proj.bias",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_LAYER_RE = re.compile(r"^blk\.(\d+)\.(.+)$")
_SUPPORTED_ARCHS = ("llama", "qwen2")


def _hf_name(gguf_name: str) -> str | None:
    if gguf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[gguf_name]
    match = _LAYER_RE.match(gguf_name)
    if match and match.group(2) in _LAYER_NAMES:
        return f"model.layers.{match.group(1)}.{_LAYER_NAMES[match.group(2)]}"
    return None


def _unpermute_rope(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undoes llama.cpp's q/k row permutation (interleaved RoPE pairs -> HF rotate_half)."""
    half = w.shape[0] // n_heads // 2
    return w.reshape(n_heads, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


class GGUFSource:
    """HF-named, HF-layout float32 tensors of a GGUF file (dequantized on read)."""

    def __init__(self, path: Path):
        import gguf

        self.path = Path(path)
        self._reader = gguf.GGUFReader(str(self.path))
        field = self._reader.fields.get("general.architecture")
        if field is None:
            raise CheckpointError(f"{self.path}: GGUF metadata has no general.architecture")
        self.architecture = field.contents()
        if self.architecture not in _SUPPORTED_ARCHS:
            raise CheckpointError(f"{self.path}: general.architecture: expected one of "
                                  f"{_SUPPORTED_ARCHS}, found {self.architecture!r}")
        self._tensors = {}
        for tensor in self._reader.tensors:
            name = _hf_name(tensor.name)
            if name is None:
                raise CheckpointError(f"{self.path}: unexpected GGUF tensor {tensor.name!r}")
            self._tensors[name] = tensor
        self._heads = self.metadata(f"{self.architecture}.attention.head_count")
        self._kv_heads = self.metadata(f"{self.architecture}.attention.head_count_kv", self._heads)

    def metadata(self, key: str, default: Any = None) -> Any:
        field = self._reader.fields.get(key)
        return default if field is None else field.contents()

    def keys(self) -> list[str]:
        return list(self._tensors)

    def shape(self, name: str) -> tuple[int, ...]:
        # GGUF lists dimensions innermost first; HF (row-major) the other way round.
        return tuple(int(d) for d in reversed(self._tensors[name].shape))

    def get(self, name: str) -> np.ndarray:
        import gguf

        tensor = self._tensors[name]
        array = gguf.quants.dequantize(tensor.data, tensor.tensor_type).astype(np.float32)
        array = array.reshape(self.shape(name))
        if self.architecture == "llama":
            # llama.cpp's converter permutes llama q/k rows for its interleaved RoPE.
            if name.endswith("q_proj.weight"):
                array = _unpermute_rope(array, self._heads)
            elif name.endswith("k_proj.weight"):
                array = _unpermute_rope(array, self._kv_heads)
        return array


def gguf_hf_config(path: Path) -> dict[str, Any]:
    """The HF config.json dictionary a GGUF file describes (no quantization_config)."""
    from transformers import AutoConfig

    path = Path(path)
    hf = AutoConfig.from_pretrained(str(path.parent), gguf_file=path.name).to_dict()
    hf.pop("quantization_config", None)
    for key in ("rms_norm_eps",):
        if key in hf:
            hf[key] = clean_float(hf[key])
    return hf


def load_gguf(path: Path, *, dtype: str = "float32"):
    """(ModelConfig, GGUFSource, tokenizer) of a GGUF file."""
    from transformers import AutoTokenizer

    path = Path(path)
    source = GGUFSource(path)
    hf = gguf_hf_config(path)
    config = ModelConfig.from_hf(hf, dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    return config, source, tokenizer
