"""Logical axis names -> mesh axes: every partitioning decision of corea_jax in one table.

Parameters, activations and the KV cache carry logical names (see `models.decoder`);
`LOGICAL_RULES` maps each to a mesh axis (or None: replicated). Mesh axes: `data` (batch),
`fsdp` (parameters and batch), `tensor` (heads / MLP width / vocab).
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
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
    total = 1
    for s in sizes:
        total *= s
    if total != len(devices):
        raise ValueError(f"mesh: axis sizes {dict(zip(MESH_AXES, sizes))} multiply to {total}, "
                         f"but there are {len(devices)} devices")
    import numpy as np

    return Mesh(np.asarray(devices).reshape(sizes), MESH_AXES)


def logical_to_sharding(axes_tree: Any, mesh: Mesh, rules=LOGICAL_RULES) -> Any:
    """Maps a pytree of logical axis-name tuples to NamedShardings on `mesh`."""
    def one(axes):
        spec = nn.logical_to_mesh_axes(axes, rules)
        return NamedSharding(mesh, spec if spec is not None else PartitionSpec())

    return jax.tree.map(one, axes_tree, is_leaf=lambda x: isinstance(x, tuple))


def check_divisible(axes_tree: Any, shapes_tree: Any, mesh: Mesh, rules=LOGICAL_RULES) -> None:
    """Raises ValueError naming the array, its dimension and the mesh axis that does not divide it.

    axes_tree: logical axis-name tuples; shapes_tree: the same structure with shapes (tuples of
    ints, or anything with a `.shape`).
    """
    flat_axes = jax.tree_util.tree_flatten_with_path(axes_tree, is_leaf=lambda x: isinstance(x, tuple))[0]
    flat_shapes = jax.tree.leaves(shapes_tree, is_leaf=lambda x: isinstance(x, tuple) or hasattr(x, "shape"))
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
