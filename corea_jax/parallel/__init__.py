"""Parallelism: the device mesh and the logical-axis sharding rules."""
from corea_jax.parallel.machine import cpu_model, one_cpu
from corea_jax.parallel.multihost import global_array, place_tree
from corea_jax.parallel.sharding import (MESH_AXES, batch_sharding, check_divisible, fitted_shardings,
                                         logical_to_sharding, make_mesh, mesh_context, parse_mesh,
                                         replicated)
from corea_jax.parallel import machine, multihost, sharding  # modules other packages use

__all__ = [
    "MESH_AXES",
    "batch_sharding",
    "check_divisible",
    "cpu_model",
    "fitted_shardings",
    "global_array",
    "logical_to_sharding",
    "machine",
    "make_mesh",
    "mesh_context",
    "multihost",
    "one_cpu",
    "parse_mesh",
    "place_tree",
    "replicated",
    "sharding",
]
