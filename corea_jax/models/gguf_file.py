"""GGUF import: llama.cpp files read without torch, tensors dequantized to float32 by `gguf`.

`GGUFSource` parses the file's header (metadata and tensor table) once and presents the
tensors under their HF names and in HF layout, so the same `checkpoint.params_from_source`
loads both formats. The HF config and the tokenizer are built from that same metadata:
transformers' GGUF readers need torch and each re-read the whole file (seconds per read).
"""

from __future__ import annotations

import math
import mmap
import re
import struct
from pathlib import Path
from typing import Any

import numpy as np

from corea_jax.models.checkpoint import CheckpointError
from corea_jax.models.config import ConfigError, ModelConfig, clean_float

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
_ARCH_CLASSES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}
# The tokenizer class AutoTokenizer picks per model type (transformers 5: none registered for
# llama, so TokenizersBackend). Named here because transformers' auto module imports torch.
TOKENIZER_CLASSES = {"llama": "TokenizersBackend", "qwen2": "Qwen2Tokenizer"}

# GGUF metadata value types: fixed-size scalars (struct format), string (8), array (9).
_SCALAR_FORMATS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
                   10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
_GGUF_VERSIONS = (2, 3)


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


class _HeaderReader:
    """Sequential little-endian reads over the file's memory map (metadata and tensor table)."""

    def __init__(self, buf: mmap.mmap):
        self.buf = buf
        self.pos = 0

    def unpack(self, fmt: str) -> tuple:
        values = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += struct.calcsize(fmt)
        return values

    def string(self) -> str:
        (length,) = self.unpack("<Q")
        start, self.pos = self.pos, self.pos + length
        if self.pos > len(self.buf):
            raise struct.error("string runs past the end of the file")
        return self.buf[start:self.pos].decode("utf-8")

    def value(self, value_type: int) -> Any:
        if value_type in _SCALAR_FORMATS:
            return self.unpack(_SCALAR_FORMATS[value_type])[0]
        if value_type == _STRING:
            return self.string()
        if value_type == _ARRAY:
            element_type, count = self.unpack("<IQ")
            if element_type in _SCALAR_FORMATS:  # e.g. token types: one numpy read, not count unpacks
                dtype = np.dtype(_SCALAR_FORMATS[element_type])
                values = np.frombuffer(self.buf, dtype, count, self.pos).tolist()
                self.pos += count * dtype.itemsize
                return values
            return [self.value(element_type) for _ in range(count)]
        raise ValueError(f"unknown GGUF metadata value type {value_type}")


class GGUFSource:
    """HF-named, HF-layout float32 tensors of a GGUF file (dequantized on read).

    Attributes:
      path: the file.
      architecture: `general.architecture` ("llama" or "qwen2").
      fields: every metadata key -> value (arrays as lists).
    """

    def __init__(self, path: Path):
        import gguf

        self.path = Path(path)
        with open(self.path, "rb") as f:
            try:
                self._buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            except ValueError as err:  # an empty file cannot be mapped
                raise CheckpointError(f"{self.path}: not a GGUF file ({err})") from err
        magic = bytes(self._buf[:4])
        if magic != b"GGUF":
            raise CheckpointError(f"{self.path}: not a GGUF file (expected magic b'GGUF', "
                                  f"found {magic!r})")
        reader = _HeaderReader(self._buf)
        reader.pos = 4
        try:
            version, tensor_count, field_count = reader.unpack("<IQQ")
            if version not in _GGUF_VERSIONS:
                raise CheckpointError(f"{self.path}: GGUF version: expected one of {_GGUF_VERSIONS}, "
                                      f"found {version}")
            self.fields: dict[str, Any] = {}
            for _ in range(field_count):
                key = reader.string()
                (value_type,) = reader.unpack("<I")
                self.fields[key] = reader.value(value_type)
            table = []
            for _ in range(tensor_count):
                name = reader.string()
                (n_dims,) = reader.unpack("<I")
                dims = reader.unpack(f"<{n_dims}Q")
                ggml_type, offset = reader.unpack("<IQ")
                table.append((name, dims, ggml_type, offset))
        except CheckpointError:
            raise
        except (struct.error, ValueError, UnicodeDecodeError) as err:
            raise CheckpointError(f"{self.path}: corrupt or truncated GGUF header ({err})") from err

        self.architecture = self.fields.get("general.architecture")
        if self.architecture is None:
            raise CheckpointError(f"{self.path}: GGUF metadata has no general.architecture")
        if self.architecture not in _SUPPORTED_ARCHS:
            raise CheckpointError(f"{self.path}: general.architecture: expected one of "
                                  f"{_SUPPORTED_ARCHS}, found {self.architecture!r}")

        alignment = int(self.fields.get("general.alignment", 32))
        data_start = -(-reader.pos // alignment) * alignment
        self.gguf_names: list[str] = []
        # HF name -> (GGUF name, HF shape, quantization type, bytes in the file)
        self._tensors: dict[str, tuple[str, tuple[int, ...], Any, np.ndarray]] = {}
        for name, dims, ggml_type, offset in table:
            self.gguf_names.append(name)
            hf = _hf_name(name)
            if hf is None:
                hint = (" (llama3 RoPE scaling stored as a tensor is not supported)"
                        if name == "rope_freqs.weight" else "")
                raise CheckpointError(f"{self.path}: unexpected GGUF tensor {name!r}{hint}")
            try:
                qtype = gguf.GGMLQuantizationType(ggml_type)
                block, block_bytes = gguf.GGML_QUANT_SIZES[qtype]
            except (ValueError, KeyError) as err:
                raise CheckpointError(f"{self.path}: tensor {name}: unknown ggml type {ggml_type}") from err
            # GGUF lists dimensions innermost first; HF (row-major) the other way round.
            shape = tuple(int(d) for d in reversed(dims))
            if shape and shape[-1] % block:
                raise CheckpointError(f"{self.path}: tensor {name}: row length {shape[-1]} is not a "
                                      f"multiple of the {qtype.name} block size {block}")
            nbytes = math.prod(shape) // block * block_bytes
            start = data_start + offset
            if start + nbytes > len(self._buf):
                raise CheckpointError(f"{self.path}: tensor {name}: data runs past the end of the "
                                      f"file (truncated download?)")
            byte_shape = (*shape[:-1], shape[-1] // block * block_bytes) if shape else (nbytes,)
            raw = np.frombuffer(self._buf, np.uint8, nbytes, start).reshape(byte_shape)
            self._tensors[hf] = (name, shape, qtype, raw)

    def metadata(self, key: str, default: Any = None) -> Any:
        return self.fields.get(key, default)

    def arch_metadata(self, key: str, default: Any = None) -> Any:
        """`{architecture}.{key}`, e.g. arch_metadata("block_count")."""
        return self.fields.get(f"{self.architecture}.{key}", default)

    def keys(self) -> list[str]:
        return list(self._tensors)

    def shape(self, name: str) -> tuple[int, ...]:
        return self._tensors[name][1]

    def get(self, name: str) -> np.ndarray:
        import gguf

        gguf_name, shape, qtype, raw = self._tensors[name]
        try:
            array = gguf.quants.dequantize(raw, qtype)
        except NotImplementedError as err:
            raise CheckpointError(f"{self.path}: tensor {gguf_name}: cannot dequantize ggml type "
                                  f"{qtype.name}") from err
        array = array.astype(np.float32, copy=False).reshape(shape)
        if self.architecture == "llama":
            # llama.cpp's converter permutes llama q/k rows for its interleaved RoPE.
            heads = self.arch_metadata("attention.head_count")
            if name.endswith("q_proj.weight"):
                array = _unpermute_rope(array, heads)
            elif name.endswith("k_proj.weight"):
                array = _unpermute_rope(array, self.arch_metadata("attention.head_count_kv", heads))
        return array


def gguf_hf_config(source: GGUFSource) -> dict[str, Any]:
    """The HF config.json dictionary the file's metadata describes (as transformers reads it)."""
    arch = source.architecture

    def required(key: str) -> Any:
        value = source.arch_metadata(key)
        if value is None:
            raise ConfigError(f"{source.path}: GGUF metadata: missing required field {arch}.{key}")
        return value

    scaling = source.arch_metadata("rope.scaling.type", "none")
    if scaling != "none":
        raise ConfigError(f"{arch}.rope.scaling.type: expected 'none', found {scaling!r}")
    heads = int(required("attention.head_count"))
    hidden = int(required("embedding_length"))
    head_dim = int(source.arch_metadata("attention.key_length", hidden // heads))
    rope_dim = source.arch_metadata("rope.dimension_count", head_dim)
    if rope_dim != head_dim:
        raise ConfigError(f"{arch}.rope.dimension_count: expected {head_dim} (the head dim; partial "
                          f"RoPE is not supported), found {rope_dim}")
    tokens = source.metadata("tokenizer.ggml.tokens")
    vocab = source.arch_metadata("vocab_size") or (len(tokens) if tokens else None)
    if vocab is None and "model.embed_tokens.weight" in source.keys():
        vocab = source.shape("model.embed_tokens.weight")[0]
    if vocab is None:
        raise ConfigError(f"{source.path}: GGUF metadata: missing {arch}.vocab_size, "
                          "tokenizer.ggml.tokens and token_embd.weight (found none of them)")
    hf = {
        "architectures": [_ARCH_CLASSES[arch]],
        "model_type": arch,
        "vocab_size": int(vocab),
        "hidden_size": hidden,
        "intermediate_size": int(required("feed_forward_length")),
        "num_hidden_layers": int(required("block_count")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(source.arch_metadata("attention.head_count_kv", heads)),
        "head_dim": head_dim,
        "max_position_embeddings": int(required("context_length")),
        "rms_norm_eps": clean_float(required("attention.layer_norm_rms_epsilon")),
        "rope_theta": float(source.arch_metadata("rope.freq_base", 10000.0)),
        "hidden_act": "silu",
        "tie_word_embeddings": "output.weight" not in source.gguf_names,
    }
    for hf_key, key in (("bos_token_id", "bos_token_id"), ("eos_token_id", "eos_token_id"),
                        ("pad_token_id", "padding_token_id"), ("unk_token_id", "unknown_token_id")):
        value = source.metadata(f"tokenizer.ggml.{key}")
        if value is not None:
            hf[hf_key] = int(value)
    return hf


def gguf_tokenizer(source: GGUFSource, model_type: str):
    """The transformers tokenizer the file's metadata describes, or None when it has none.

    The same as `AutoTokenizer.from_pretrained(dir, gguf_file=name)`, built from the
    metadata already read (transformers' reader imports torch and re-reads the file).
    """
    tokens = source.metadata("tokenizer.ggml.tokens")
    if not tokens:
        return None
    import transformers
    from transformers.integrations.gguf import GGUF_TOKENIZER_MAPPING, convert_gguf_tokenizer

    # Mirrors transformers.integrations.gguf.get_gguf_tokenizer.
    grouped = {group: {name: source.fields[f"tokenizer.{key}"] for key, name in renames.items()
                       if f"tokenizer.{key}" in source.fields}
               for group, renames in GGUF_TOKENIZER_MAPPING.items()}
    tokenizer_dict, tokenizer_config = grouped["tokenizer"], grouped["tokenizer_config"]
    if tokenizer_dict.get("tokenizer_type") == "llama":
        tokenizer_config.setdefault("add_bos_token", True)
    for name, key in (("bos_token", "bos_token_id"), ("eos_token", "eos_token_id"),
                      ("unk_token", "unknown_token_id"), ("pad_token", "padding_token_id")):
        token_id = source.metadata(f"tokenizer.ggml.{key}")
        tokenizer_config[name] = tokens[token_id] if token_id is not None else None
    backend, extra = convert_gguf_tokenizer(source.architecture, tokenizer_dict)
    cls = getattr(transformers, TOKENIZER_CLASSES[model_type])
    return cls(tokenizer_object=backend, **tokenizer_config, **extra)


def load_gguf(path: Path, *, dtype: str = "float32"):
    """(ModelConfig, GGUFSource, tokenizer or None) of a GGUF file."""
    source = GGUFSource(Path(path))
    config = ModelConfig.from_hf(gguf_hf_config(source), dtype=dtype)
    return config, source, gguf_tokenizer(source, config.model_type)
