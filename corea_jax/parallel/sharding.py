"""Logical axis names -> mesh axes: every partitioning decision of corea_jax in one table.

Parameters, activations and the KV cache carry logical names (see `models.decoder`);
`LOGICAL_RULES` maps each to a mesh axis (or None: replicated). Mesh axes: `data` (batch),
`fsdp` (parameters and batch), `tensor` (heads / MLP width / vocab).
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

LOGICAL_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("cache_length", None),
    ("layers", None),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("mlp", "tensor"),
)


def make_mesh(shape: dict[str, int] | None = None, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A (data, fsdp, tensor) mesh; axes left out have size 1. Sizes must multiply to the device count."""
    devices = list(devices if devices is not None else jax.devices())
    shape = dict(shape or {"data": len(devices)})
    unknown = set(shape) - set(MESH_AXES)
    if unknown:
        raise ValueError(f"mesh: unknown axis {sorted(unknown)}; expected axes from {MESH_AXES}")
    sizes = [int(shape.get(axis, 1)) for axis in MESH_AXES]
    total = math.prod(sizes)
    if total != len(devices):
        raise ValueError(f"mesh: axis sizes {dict(zip(MESH_AXES, sizes))} multiply to {total}, "
                         f"but there are {len(devices)} devices")
    return Mesh(np.asarray(devices).reshape(sizes), MESH_AXES)


def parse_mesh(text: str) -> dict[str, int]:
    """'data:2,fsdp:4,tensor:1' -> {'data': 2, 'fsdp': 4, 'tensor': 1} (axes left out: 1)."""
    shape = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        axis, _, size = part.partition(":")
        if axis not in MESH_AXES or not size.isdigit() or int(size) < 1 or axis in shape:
            raise ValueError(f"mesh: expected comma-separated axis:size pairs with axes from "
                             f"{MESH_AXES} and sizes >= 1 (e.g. 'data:2,fsdp:4,tensor:1'), found {part!r}")
        shape[axis] = int(size)
    return {axis: shape.get(axis, 1) for axis in MESH_AXES}


def mesh_context(mesh: Mesh | None):
    """Inside: `mesh` is the global mesh and logical axis names map to it by LOGICAL_RULES
    (so the activation constraints of `models.decoder` apply); None: no-op."""
    if mesh is None:
        return contextlib.nullcontext()
    stack = contextlib.ExitStack()
    stack.enter_context(jax.set_mesh(mesh))
    stack.enter_context(nn.logical_axis_rules(LOGICAL_RULES))
    return stack


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(shape: Sequence[int], mesh: Mesh, batch_dim: int = 0) -> NamedSharding:
    """Dimension `batch_dim` over the "batch" mesh axes (data x fsdp) when they divide it; else replicated."""
    spec = nn.logical_to_mesh_axes(("batch",), LOGICAL_RULES)[0]
    ways = math.prod(mesh.shape[a] for a in ((spec,) if isinstance(spec, str) else spec))
    if shape[batch_dim] % ways:
        return replicated(mesh)
    return NamedSharding(mesh, PartitionSpec(*([None] * batch_dim), spec))


def is_axes(x) -> bool:
    """A leaf of a logical-axes pytree: a tuple of axis names (None: unnamed), () for a scalar."""
    return isinstance(x, tuple) and all(isinstance(n, str) or n is None for n in x)


def logical_to_sharding(axes_tree: Any, mesh: Mesh, rules=LOGICAL_RULES) -> Any:
    """Maps a pytree of logical axis-name tuples to NamedShardings on `mesh`."""
    def one(axes):
        spec = nn.logical_to_mesh_axes(axes, rules)
        return NamedSharding(mesh, spec if spec is not None else PartitionSpec())

    return jax.tree.map(one, axes_tree, is_leaf=is_axes)


def fitted_shardings(axes_tree: Any, shapes_tree: Any, mesh: Mesh, rules=LOGICAL_RULES) -> Any:
    """NamedShardings of a pytree of arrays (anything with `.shape`) by their logical axes, where
    a dimension that its mesh axes do not divide (a batch of 1 on a data:8 mesh) stays
    replicated instead of failing."""
    def fit(names, shape):
        kept = []
        for name, size in zip(names, shape.shape):
            mesh_axes = nn.logical_to_mesh_axes((name,), rules)[0]
            ways = math.prod(mesh.shape[a] for a in (mesh_axes if isinstance(mesh_axes, tuple)
                                                      else (mesh_axes,) if mesh_axes else ()))
            kept.append(name if size % ways == 0 else None)
        return tuple(kept)

    fitted = jax.tree.map(fit, axes_tree, shapes_tree, is_leaf=is_axes)
    return logical_to_sharding(fitted, mesh, rules)


def check_divisible(axes_tree: Any, shapes_tree: Any, mesh: Mesh, rules=LOGICAL_RULES) -> None:
    """Raises ValueError naming the array, its dimension and the mesh axis that does not divide it.

    axes_tree: logical axis-name tuples; shapes_tree: the same structure with shapes (tuples of
    ints, or anything with a `.shape`).
    """
    flat_axes = jax.tree_util.tree_flatten_with_path(axes_tree, is_leaf=is_axes)[0]
    flat_shapes = jax.tree.leaves(shapes_tree, is_leaf=lambda x: is_axes(x) or hasattr(x, "shape"))
    for (path, axes), shape in zip(flat_axes, flat_shapes):
        shape = tuple(getattr(shape, "shape", shape))
        spec = nn.logical_to_mesh_axes(axes, rules)
        for dim, (logical, mesh_axes) in enumerate(zip(axes, spec)):
            if mesh_axes is None:
                continue
            names = (mesh_axes,) if isinstance(mesh_axes, str) else tuple(mesh_axes)
            size = 1
            for name in names:
                size *= mesh.shape[name]
            if shape[dim] % size:
                where = "/".join(str(getattr(k, "key", k)) for k in path)
                raise ValueError(
                    f"{where}: dimension {dim} ({logical!r}, size {shape[dim]}) is not divisible by "
                    f"mesh axis {'x'.join(names)} of size {size}; pick a mesh whose "
                    f"{'x'.join(names)} size divides {shape[dim]}")
