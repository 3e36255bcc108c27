"""The public model API: `load_model`, `logits`, `save_hf`, and the jitted forward pass.

A `Model` is plain data: its static config, a parameter pytree and a transformers
tokenizer. Every computation is a pure function of (config, params, batch).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from corea_jax.models import checkpoint
from corea_jax.models.config import ModelConfig, SUPPORTED_DTYPES
from corea_jax.models.decoder import Decoder, KVCache, cache_logical_axes, init_cache, positions_from_mask
from corea_jax.parallel import machine

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_HUB_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"]


@dataclasses.dataclass
class Model:
    """A loaded decoder LM.

    Attributes:
      config: static architecture and dtypes (hashable; a jit static argument).
      params: parameter pytree (see `param_logical_axes` for its axis names).
      tokenizer: a transformers tokenizer with the model's chat template.
      mesh: the device mesh the params are sharded over, or None (one device).
    """

    config: ModelConfig
    params: Any
    tokenizer: Any = None
    mesh: Any = None


# ------------------------------------------------------------------------ forward


@functools.partial(jax.jit, static_argnames=("config", "return_hidden"))
def forward(config: ModelConfig, params, tokens, positions, token_mask, cache: KVCache | None = None,
            return_hidden: bool = False):
    """Jitted `Decoder.apply`: (logits [B, T, V] f32, new cache or None[, hidden])."""
    return Decoder(config).apply({"params": params}, tokens, positions, token_mask, cache,
                                 return_hidden=return_hidden)


def init_params(config: ModelConfig, rng: jax.Array) -> dict:
    """Random parameters (normal(0.02) weights, unit norms) for tests and from-scratch runs."""
    tokens = jnp.zeros((1, 1), jnp.int32)
    variables = jax.jit(Decoder(config).init)(rng, tokens, tokens, tokens.astype(bool))
    return nn.meta.unbox(variables["params"])


def param_logical_axes(config: ModelConfig) -> dict:
    """Pytree (same structure as params) of logical axis-name tuples, from the module itself."""
    tokens = jnp.zeros((1, 1), jnp.int32)
    abstract = jax.eval_shape(Decoder(config).init, jax.random.key(0), tokens, tokens,
                              tokens.astype(bool))
    specs = nn.get_partition_spec(abstract)["params"]
    return jax.tree.map(tuple, specs, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))


def param_shapes(config: ModelConfig) -> dict:
    """Pytree of parameter ShapeDtypeStructs (no memory allocated)."""
    tokens = jnp.zeros((1, 1), jnp.int32)
    abstract = jax.eval_shape(Decoder(config).init, jax.random.key(0), tokens, tokens,
                              tokens.astype(bool))
    return nn.meta.unbox(abstract["params"])


def logits(model: Model, input_ids, attention_mask=None) -> jax.Array:
    """Next-token logits [B, T, V] (float32) for token ids [B, T].

    `attention_mask` [B, T] (1 = token, 0 = padding) defaults to all ones. RoPE positions
    count real tokens only, so a left-padded row gives the same logits as the unpadded one
    (pass `position_ids = mask.cumsum(-1) - 1` to transformers for the same convention).
    """
    ids = np.asarray(input_ids)
    if ids.ndim == 1:
        ids = ids[None]
    if ids.ndim != 2 or ids.shape[1] == 0:
        raise ValueError(f"input_ids: expected shape [batch, length] with length >= 1, found {ids.shape}")
    if not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"input_ids: expected integer token ids, found dtype {ids.dtype}")
    vocab = model.config.vocab_size
    if ids.size and (ids.min() < 0 or ids.max() >= vocab):
        raise ValueError(f"input_ids: expected ids in [0, {vocab}), found range [{ids.min()}, {ids.max()}]")
    mask = np.ones(ids.shape, bool) if attention_mask is None else np.asarray(attention_mask).astype(bool)
    if mask.ndim == 1:
        mask = mask[None]
    if mask.shape != ids.shape:
        raise ValueError(f"attention_mask: expected shape {ids.shape} (that of input_ids), found {mask.shape}")
    mask = jnp.asarray(mask)
    out, _ = forward(model.config, model.params, jnp.asarray(ids, jnp.int32),
                     positions_from_mask(mask), mask)
    return out


# ------------------------------------------------------------------------ loading


def _resolve(path: str | os.PathLike) -> Path:
    """A local path as is; a hub id such as `Qwen/Qwen2.5-7B-Instruct` downloaded where online."""
    local = Path(path).expanduser()
    if local.exists():
        return local
    text = str(path)
    if not _HUB_ID.match(text):
        raise FileNotFoundError(f"load_model: path {text!r} does not exist (expected an HF model "
                                "directory, a .gguf file, or a hub id like 'Qwen/Qwen2.5-7B-Instruct')")
    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
    hint = ("This machine is offline (HF_HUB_OFFLINE is set). Fetch the weights elsewhere or use "
            "`python -m launch.fetch_model` for the models it offers.")
    if offline:
        raise FileNotFoundError(f"load_model: {text!r} is not a local path and the model hub is "
                                f"unreachable. {hint}")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(text, allow_patterns=_HUB_PATTERNS))
    except Exception as err:  # noqa: BLE001 - the hub client raises many connection types
        raise FileNotFoundError(f"load_model: could not fetch {text!r} from the model hub "
                                f"({type(err).__name__}: {err}). {hint}") from err


def param_shardings(config: ModelConfig, mesh) -> dict:
    """NamedShardings of every parameter on `mesh` by the sharding rules; ValueError naming the
    parameter and the mesh axis when an axis does not divide a dimension."""
    from corea_jax.parallel import check_divisible, logical_to_sharding

    axes = param_logical_axes(config)
    check_divisible(axes, param_shapes(config), mesh)
    return logical_to_sharding(axes, mesh)


def cache_shardings(config: ModelConfig, batch: int, length: int, mesh):
    """NamedShardings of a `KVCache` ([L, batch, K, length, Dh] or one [batch, K, length, Dh]
    per layer) on `mesh` by the sharding rules; an axis a mesh axis does not divide (a batch of
    1 on a data:8 mesh) stays replicated."""
    from corea_jax.parallel import fitted_shardings

    return fitted_shardings(cache_logical_axes(config), jax.eval_shape(lambda: init_cache(config, batch, length)),
                            mesh)


def decoding_scan_layers(mesh) -> bool:
    """The parameter layout to generate with on `mesh`: one set per layer (False) unless the
    mesh shards parameters over `fsdp` (True). Each per-layer matmul then reads its weights in
    place, but with fsdp XLA hoists every layer's weight all-gather out of the decode loop, so
    all layers' gathered weights stay live at once (the 7B rollout on fsdp:8: 68 GiB of
    temporaries instead of 33); a scan gathers one layer at a time."""
    return mesh is not None and dict(mesh.shape).get("fsdp", 1) > 1


# Below this width the decoding layout keeps [in, out] kernels: feature-major was measured on
# real models' shapes (SmolLM2-135M and up); the toy reproduction's models (hidden 32-96) keep
# the layout, and so the float rounding, their shipped results were made with.
FEATURE_MAJOR_MIN_HIDDEN = 512


def decoding_feature_major(config: ModelConfig, mesh) -> bool:
    """The kernel orientation to generate with (`ModelConfig.feature_major`): [out, in] on a
    CPU without a mesh for models at least FEATURE_MAJOR_MIN_HIDDEN wide, where XLA's CPU
    matmul runs `W @ x^T` 1.3-1.6x faster at decode-sized row counts; else [in, out] (the
    accelerators' matmul units were measured in that form, and sharding rules expect it)."""
    return machine.one_cpu(mesh) and config.hidden_size >= FEATURE_MAJOR_MIN_HIDDEN


def training_layout(config: ModelConfig, mesh) -> tuple[bool, bool]:
    """(scan_layers, feature_major) to train in on `mesh`. On a CPU without a mesh: one
    parameter set per layer (the backward pass of a layer scan slices and re-stacks every
    weight and gradient) and `decoding_feature_major`'s kernel orientation (the GRPO update
    of SmolLM2-135M: 1.05x on an Intel Xeon; the layers unrolled alone 1.11x on an AMD EPYC;
    BENCHMARKS.md). Elsewhere stacked layers under one scan (one compiled layer: fast
    compiles of large models) and [in, out] kernels (the sharding rules' and the matmul
    units' form)."""
    return training_scan_layers(mesh), decoding_feature_major(config, mesh)


def training_scan_layers(mesh) -> bool:
    """`training_layout`'s scan_layers (it does not depend on the model)."""
    return not machine.one_cpu(mesh)


def load_model(path: str | os.PathLike, *, dtype: str = "float32", mesh=None,
               scan_layers: bool | None = None, feature_major: bool | None = None) -> Model:
    """Loads an HF directory (safetensors), a `.gguf` file, or a hub id.

    Args:
      path: directory with config.json + safetensors, a .gguf file, or a hub id.
      dtype: parameter and compute dtype, one of "float32", "bfloat16", "float16", or
        "auto": the fastest on this host (`parallel.machine.fastest_dtype`: bfloat16 on GPU
        and TPU; on CPU measured at the first call, float32 on the CPUs measured so far),
        logged. The default stays float32, the dtype of the parity tests and reproductions.
      mesh: optional `jax.sharding.Mesh` with axes (data, fsdp, tensor); params are placed
        with the sharding rules of `corea_jax.parallel.sharding`.
      scan_layers: the parameter layout (`ModelConfig.scan_layers`). False: one parameter
        set per layer, the faster layout for generation; True: stacked layers run by one scan,
        the training layout (fast compiles). None (default): `decoding_scan_layers(mesh)`,
        False unless the mesh shards parameters over fsdp. `decoder.relayout` converts.
      feature_major: the MLP and untied LM-head kernels as [out, in] (True) or [in, out];
        None (default): `decoding_feature_major(config, mesh)`. Same weights, same results
        up to float rounding; `decoder.relayout` converts.
    """
    if scan_layers is None:
        scan_layers = decoding_scan_layers(mesh)
    if dtype not in SUPPORTED_DTYPES + ("auto",):
        raise ValueError(f"dtype: expected one of {SUPPORTED_DTYPES + ('auto',)}, found {dtype!r}")
    dtype = machine.resolve_dtype(dtype)
    resolved = _resolve(path)
    if resolved.is_file():
        if resolved.suffix == ".gguf":
            from corea_jax.models.gguf_file import load_gguf

            config, source, tokenizer = load_gguf(resolved, dtype=dtype)
        elif resolved.suffix in (".bin", ".pt", ".pth", ".pkl"):
            raise checkpoint.CheckpointError(
                f"{resolved}: corea_jax refuses pickle checkpoints (loading them can run "
                "arbitrary code); convert to safetensors first")
        else:
            raise ValueError(f"load_model: {resolved} is a file but not a .gguf file; expected "
                             "an HF directory or a .gguf file")
    else:
        config_path = resolved / "config.json"
        if not config_path.exists():
            ggufs = sorted(resolved.glob("*.gguf"))
            if len(ggufs) == 1:
                return load_model(ggufs[0], dtype=dtype, mesh=mesh, scan_layers=scan_layers,
                                  feature_major=feature_major)
            raise FileNotFoundError(f"load_model: {resolved} has no config.json (expected an HF "
                                    "model directory)")
        config = ModelConfig.from_hf(json.loads(config_path.read_text()), dtype=dtype)
        source = checkpoint.SafetensorsSource(resolved)
        tokenizer = _load_tokenizer(resolved)
    if feature_major is None:
        feature_major = decoding_feature_major(config, mesh)
    config = config.replace(scan_layers=scan_layers, feature_major=feature_major)
    params = checkpoint.params_from_source(
        config, source, shardings=None if mesh is None else param_shardings(config, mesh))
    return Model(config=config, params=params, tokenizer=tokenizer, mesh=mesh)


def _load_tokenizer(directory: Path):
    """The directory's transformers tokenizer, or None when it ships none."""
    if not any((directory / f).exists() for f in ("tokenizer.json", "tokenizer_config.json",
                                                   "tokenizer.model")):
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(directory))


# ------------------------------------------------------------------------ export


def save_hf(model: Model, out_dir: str | os.PathLike, *,
            max_shard_bytes: int = checkpoint.MAX_SHARD_BYTES) -> Path:
    """Writes an HF directory (config.json, safetensors, tokenizer) that transformers and vLLM load.

    Weights past `max_shard_bytes` are split into shards with a `model.safetensors.index.json`.
    The write is atomic per file; a shard set from an older export is replaced, not mixed.
    """
    out_dir = Path(out_dir)
    config = model.config

    def write(staging: Path):
        hf = config.to_hf()
        (staging / "config.json").write_text(json.dumps(hf, indent=2) + "\n")
        gen = {k: hf[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if hf[k] is not None}
        (staging / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
        checkpoint.write_safetensors(config, model.params, staging, max_shard_bytes=max_shard_bytes)
        if model.tokenizer is not None:
            model.tokenizer.save_pretrained(str(staging))

    checkpoint.atomic_directory(out_dir, write, stale=("*.safetensors", "model.safetensors.index.json"))
    return out_dir
