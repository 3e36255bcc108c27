"""HF checkpoint import/export: safetensors directories <-> corea_jax parameter pytrees.

One table (`_PARAM_TABLE`) says where every HF tensor lives in our tree and how its layout
differs; loading (from safetensors or, through `gguf_file.GGUFSource`, from a GGUF file)
and export both read it. Loads are all-or-nothing: a missing, unexpected or mis-shaped
tensor raises `CheckpointError` naming the tensor, the expected and the found value.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterator, Protocol

import numpy as np

from corea_jax.models.config import ModelConfig

# Tensors some HF checkpoints carry that hold nothing we need.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)
MAX_SHARD_BYTES = 5 * 1024**3


class CheckpointError(ValueError):
    """A checkpoint does not match the model its config describes."""


class TensorSource(Protocol):
    """Read access to HF-named tensors (numpy, HF layout) of one checkpoint."""

    def keys(self) -> list[str]: ...

    def shape(self, name: str) -> tuple[int, ...]: ...

    def get(self, name: str) -> np.ndarray: ...


# ---------------------------------------------------------------------- layout table
# (HF name, with {i} for the layer when layers are stacked (scan_layers), our path, our shape,
# layout): layout None = same array, 0 = HF stores it flattened, n > 0 = HF stores the
# transpose of our array with its first n axes (the matmul inputs) flattened into HF's last axis.


def _param_table(config: ModelConfig) -> list[tuple[str, tuple[str, ...], tuple[int, ...], int | None]]:
    d, f, h, k, hd, v = (config.hidden_size, config.intermediate_size, config.num_heads,
                         config.num_kv_heads, config.head_dim, config.vocab_size)
    rows = [("model.embed_tokens.weight", ("embed_tokens", "embedding"), (v, d), None)]
    layer = [
        ("input_layernorm.weight", ("input_layernorm", "scale"), (d,), None),
        ("post_attention_layernorm.weight", ("post_attention_layernorm", "scale"), (d,), None),
        ("self_attn.q_proj.weight", ("self_attn", "q_proj", "kernel"), (d, h, hd), 1),
        ("self_attn.k_proj.weight", ("self_attn", "k_proj", "kernel"), (d, k, hd), 1),
        ("self_attn.v_proj.weight", ("self_attn", "v_proj", "kernel"), (d, k, hd), 1),
        ("self_attn.o_proj.weight", ("self_attn", "o_proj", "kernel"), (h, hd, d), 2),
        ("mlp.gate_proj.weight", ("mlp", "gate_proj", "kernel"), (d, f), 1),
        ("mlp.up_proj.weight", ("mlp", "up_proj", "kernel"), (d, f), 1),
        ("mlp.down_proj.weight", ("mlp", "down_proj", "kernel"), (f, d), 1),
    ]
    if config.feature_major:  # [out, in] kernels: HF's own arrays
        layer[-3:] = [("mlp.gate_proj.weight", ("mlp", "gate_proj", "kernel"), (f, d), None),
                      ("mlp.up_proj.weight", ("mlp", "up_proj", "kernel"), (f, d), None),
                      ("mlp.down_proj.weight", ("mlp", "down_proj", "kernel"), (d, f), None)]
    if config.qkv_bias:
        layer += [
            ("self_attn.q_proj.bias", ("self_attn", "q_proj", "bias"), (h, hd), 0),
            ("self_attn.k_proj.bias", ("self_attn", "k_proj", "bias"), (k, hd), 0),
            ("self_attn.v_proj.bias", ("self_attn", "v_proj", "bias"), (k, hd), 0),
        ]
    if config.o_bias:
        layer.append(("self_attn.o_proj.bias", ("self_attn", "o_proj", "bias"), (d,), None))
    if config.scan_layers:  # one stacked array per name, read layer by layer
        rows += [(f"model.layers.{{i}}.{name}", ("layers",) + path, shape, n_in)
                 for name, path, shape, n_in in layer]
    else:
        rows += [(f"model.layers.{i}.{name}", (f"layers_{i}",) + path, shape, n_in)
                 for i in range(config.num_layers) for name, path, shape, n_in in layer]
    rows.append(("model.norm.weight", ("norm", "scale"), (d,), None))
    if not config.tie_word_embeddings:
        rows.append(("lm_head.weight", ("lm_head",), (v, d), None) if config.feature_major
                    else ("lm_head.weight", ("lm_head",), (d, v), 1))
    return rows


def _hf_shape(shape: tuple[int, ...], n_in: int | None) -> tuple[int, ...]:
    if n_in is None:
        return shape
    if n_in == 0:
        return (math.prod(shape),)
    return (math.prod(shape[n_in:]), math.prod(shape[:n_in]))


def _to_ours(hf: np.ndarray, shape: tuple[int, ...], n_in: int | None) -> np.ndarray:
    if n_in is None:
        return hf
    return (hf if n_in == 0 else hf.T).reshape(shape)


def _to_hf(ours: np.ndarray, n_in: int | None) -> np.ndarray:
    if n_in is None:
        return ours
    if n_in == 0:
        return ours.reshape(-1)
    rows = math.prod(ours.shape[:n_in])
    return np.ascontiguousarray(ours.reshape(rows, -1).T)


def expected_hf_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every HF tensor name the config implies, with its HF shape."""
    out = {}
    for name, _, shape, n_in in _param_table(config):
        names = [name.format(i=i) for i in range(config.num_layers)] if "{i}" in name else [name]
        for n in names:
            out[n] = _hf_shape(shape, n_in)
    return out


# ---------------------------------------------------------------------------- import


def params_from_source(config: ModelConfig, source: TensorSource, shardings: dict | None = None) -> dict:
    """Builds the parameter pytree from HF-named tensors, checking names and shapes first.

    Without `shardings`: whole arrays in `config.param_dtype` on the default device. With
    `shardings` (a pytree of NamedShardings like the params'), every array is assembled from
    per-device blocks (`jax.make_array_from_callback`): a source with `get_slice`
    (safetensors) is read block by block, so no host ever holds a full copy of a sharded
    tensor and each host reads only the blocks of its own devices.
    """
    import jax
    import jax.numpy as jnp

    expected = expected_hf_shapes(config)
    found = set(source.keys())
    tied_head = "lm_head.weight" if config.tie_word_embeddings else None
    unexpected = sorted(n for n in found - set(expected)
                        if n != tied_head and not n.endswith(_IGNORED_SUFFIXES))
    missing = sorted(set(expected) - found)
    if missing:
        more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
        raise CheckpointError(f"checkpoint is missing tensor(s) {missing[:5]}{more} "
                              f"that a {config.model_type} config with {config.num_layers} layers expects")
    if unexpected:
        more = f" (and {len(unexpected) - 5} more)" if len(unexpected) > 5 else ""
        raise CheckpointError(f"checkpoint has unexpected tensor(s) {unexpected[:5]}{more} "
                              f"for a {config.model_type} model (qkv_bias={config.qkv_bias}, "
                              f"tie_word_embeddings={config.tie_word_embeddings})")
    for name, shape in expected.items():
        got = tuple(source.shape(name))
        if got != shape:
            raise CheckpointError(f"tensor {name}: expected shape {shape}, found {got}")

    dtype = config.jnp_param_dtype
    params: dict = {}
    for name, path, shape, n_in in _param_table(config):
        stacked = "{i}" in name
        full_shape = (config.num_layers, *shape) if stacked else shape
        if shardings is None:
            array = jnp.asarray(_read_block(source, name, shape, n_in, _full_index(full_shape), dtype))
        else:
            sharding = shardings
            for key in path:
                sharding = sharding[key]
            blocks: dict = {}  # devices that hold the same block (replicas) share one read

            def block(index, name=name, shape=shape, n_in=n_in, full_shape=full_shape, blocks=blocks):
                index = tuple(slice(*s.indices(n)[:2]) for s, n in zip(index, full_shape))
                key = tuple((s.start, s.stop) for s in index)
                if key not in blocks:
                    blocks[key] = _read_block(source, name, shape, n_in, index, dtype)
                return blocks[key]

            array = jax.make_array_from_callback(full_shape, sharding, block)
        node = params
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = array
    return params


def _full_index(shape: tuple[int, ...]) -> tuple[slice, ...]:
    return tuple(slice(0, n) for n in shape)


def _read_block(source: TensorSource, name: str, shape: tuple[int, ...], n_in: int | None,
                index: tuple[slice, ...], dtype) -> np.ndarray:
    """Block `index` (unit-step slices over our layout; a leading layer axis when `name` has
    {i}) of a parameter, in `dtype`, reading only the HF rows and columns it covers when the
    source can read slices."""
    if "{i}" in name:
        layers = range(index[0].start, index[0].stop)
        out = np.empty((len(layers), *(s.stop - s.start for s in index[1:])), dtype)
        for j, i in enumerate(layers):  # written in place: no stacked temporaries
            out[j] = _read_block(source, name.format(i=i), shape, n_in, index[1:], dtype)
        return out
    if not hasattr(source, "get_slice"):
        return _to_ours(source.get(name), shape, n_in)[index].astype(dtype, copy=False)
    if n_in is None:
        return np.asarray(source.get_slice(name, index)).astype(dtype, copy=False)
    # HF flattens groups of our axes into one: (all) for n_in == 0, else (outputs, inputs).
    groups = [tuple(range(len(shape)))] if n_in == 0 else [tuple(range(n_in, len(shape))),
                                                           tuple(range(n_in))]
    hf_index, block_shape = [], []
    for dims in groups:
        inner = math.prod(shape[d] for d in dims[1:])
        lead = index[dims[0]]
        hf_index.append(slice(lead.start * inner, lead.stop * inner))
        block_shape.append((lead.stop - lead.start, *(shape[d] for d in dims[1:])))
    block = np.asarray(source.get_slice(name, tuple(hf_index)))
    if n_in:
        block = block.T
        block_shape.reverse()
        groups.reverse()
    block = block.reshape([n for part in block_shape for n in part])
    rest = tuple(slice(None) if d == dims[0] else index[d] for dims in groups for d in dims)
    return block[rest].astype(dtype, copy=False)


def hf_tensors_from_params(config: ModelConfig, params: dict) -> Iterator[tuple[str, np.ndarray]]:
    """(HF name, numpy array in HF layout) for every parameter, in checkpoint order."""
    for name, path, _, n_in in _param_table(config):
        node = params
        for key in path:
            node = node[key]
        array = np.asarray(node)
        if "{i}" in name:
            for i in range(config.num_layers):
                yield name.format(i=i), _to_hf(array[i], n_in)
        else:
            yield name, _to_hf(array, n_in)


class SafetensorsSource:
    """HF-named tensors from a directory of one or more safetensors files."""

    def __init__(self, directory: Path):
        from safetensors import safe_open

        directory = Path(directory)
        index = directory / "model.safetensors.index.json"
        if index.exists():
            weight_map = json.loads(index.read_text())["weight_map"]
            files = sorted(set(weight_map.values()))
        else:
            files = sorted(p.name for p in directory.glob("*.safetensors"))
        if not files:
            pickles = sorted(p.name for p in directory.glob("*.bin")) + sorted(
                p.name for p in directory.glob("*.pt"))
            if pickles:
                raise CheckpointError(
                    f"{directory}: found only pickle weights {pickles[:3]}; corea_jax refuses pickle "
                    "checkpoints (loading them can run arbitrary code). Convert them to safetensors "
                    "first, e.g. transformers: AutoModelForCausalLM.from_pretrained(d)"
                    ".save_pretrained(out, safe_serialization=True)")
            raise CheckpointError(f"{directory}: no *.safetensors weights found")
        self._handles = {}
        self._where: dict[str, str] = {}
        for fname in files:
            path = directory / fname
            if not path.exists():
                raise CheckpointError(f"{directory}: shard {fname} named in the index is missing")
            handle = safe_open(str(path), framework="numpy")
            self._handles[fname] = handle
            for key in handle.keys():
                self._where[key] = fname

    def keys(self) -> list[str]:
        return list(self._where)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._handles[self._where[name]].get_slice(name).get_shape())

    def get(self, name: str) -> np.ndarray:
        return self._handles[self._where[name]].get_tensor(name)

    def get_slice(self, name: str, index: tuple[slice, ...]) -> np.ndarray:
        """The block `index` of a tensor; only its bytes are read from the file."""
        return self._handles[self._where[name]].get_slice(name)[index]


# ---------------------------------------------------------------------------- export


def write_safetensors(config: ModelConfig, params: dict, out_dir: Path,
                      max_shard_bytes: int = MAX_SHARD_BYTES) -> list[str]:
    """Writes params as HF safetensors (sharded with an index past `max_shard_bytes`)."""
    from safetensors.numpy import save_file

    shards: list[dict[str, np.ndarray]] = [{}]
    size = 0
    for name, array in hf_tensors_from_params(config, params):
        if size and size + array.nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = array
        size += array.nbytes
    if len(shards) == 1:
        names = ["model.safetensors"]
    else:
        names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    weight_map = {}
    for fname, shard in zip(names, shards):
        save_file(shard, str(out_dir / fname), metadata={"format": "pt"})
        weight_map.update({key: fname for key in shard})
    if len(shards) > 1:
        total = sum(a.nbytes for s in shards for a in s.values())
        (out_dir / "model.safetensors.index.json").write_text(json.dumps(
            {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    return names


def atomic_directory(out_dir: Path, write: Callable[[Path], None],
                     stale: tuple[str, ...] = ()) -> None:
    """Runs `write(staging_dir)` then moves every file it made into `out_dir`.

    A crash leaves either the old files or the new ones, never a half-written file: each
    file lands with os.replace, and a new `out_dir` appears with one rename. Files of
    `out_dir` matching a `stale` glob that the new write did not produce are removed
    (e.g. shards of an older export with a different shard count).
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    try:
        write(staging)
        _apply_umask(staging)
        if not out_dir.exists():
            os.replace(staging, out_dir)
            return
        new_names = {item.name for item in staging.iterdir()}
        for item in staging.iterdir():
            target = out_dir / item.name
            if target.is_dir() and not item.is_dir():
                shutil.rmtree(target)
            os.replace(item, target)
        for pattern in stale:
            for old in out_dir.glob(pattern):
                if old.name not in new_names:
                    old.unlink()
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def _apply_umask(directory: Path) -> None:
    """Gives a staged tree the permissions a plain mkdir/open would (mkdtemp makes 0700)."""
    umask = os.umask(0)
    os.umask(umask)
    directory.chmod(0o777 & ~umask)
    for item in directory.rglob("*"):
        item.chmod((0o777 if item.is_dir() else 0o666) & ~umask)
