"""Several hosts, one program: JAX's distributed runtime and per-host loading of global arrays.

Every process runs the same code on the same global mesh (`jax.devices()` lists every
host's devices); a global array is assembled from the blocks each process puts on its own
devices, so no host loads or transfers the whole batch. Process 0 alone writes logs,
metrics and reports (`is_primary`).
"""

from __future__ import annotations

import dataclasses
import os

import jax
import numpy as np


@dataclasses.dataclass(frozen=True)
class Cluster:
    """Where this process sits: coordinator "host:port", process count and this process's index."""

    coordinator_address: str | None = None
    num_processes: int = 1
    process_id: int = 0

    @property
    def distributed(self) -> bool:
        return self.num_processes > 1


def cluster_from(coordinator_address: str | None = None, num_processes: int | None = None,
                 process_id: int | None = None, environ=os.environ) -> Cluster:
    """Flags first, then COREA_COORDINATOR_ADDRESS / COREA_NUM_PROCESSES / COREA_PROCESS_ID.

    Left unset everywhere: one process. Raises ValueError naming the setting that is missing
    or out of range.
    """
    address = coordinator_address or environ.get("COREA_COORDINATOR_ADDRESS") or None
    count = num_processes if num_processes is not None else int(environ.get("COREA_NUM_PROCESSES", 1))
    index = process_id if process_id is not None else int(environ.get("COREA_PROCESS_ID", 0))
    if count < 1:
        raise ValueError(f"num_processes: expected an integer >= 1, found {count}")
    if not 0 <= index < count:
        raise ValueError(f"process_id: expected an integer in [0, {count}) (num_processes = {count}), "
                         f"found {index}")
    if count > 1 and not address:
        raise ValueError("coordinator_address: expected 'host:port' of process 0 when num_processes = "
                         f"{count} > 1, found none (flag --coordinator_address or COREA_COORDINATOR_ADDRESS)")
    return Cluster(address, count, index)


def initialize(cluster: Cluster) -> None:
    """`jax.distributed.initialize` for a multi-process cluster (CPU collectives: gloo); a
    one-process cluster needs nothing. Call before any other jax work."""
    if not cluster.distributed:
        return
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=cluster.coordinator_address,
                               num_processes=cluster.num_processes, process_id=cluster.process_id)


def is_primary() -> bool:
    """True in the process that writes logs, metrics and reports (process 0)."""
    return jax.process_index() == 0


def global_array(host_value: np.ndarray, sharding: jax.sharding.Sharding) -> jax.Array:
    """A global array with `sharding` from a host array of the GLOBAL shape that every process
    can index; each process reads and transfers only the blocks of its own devices."""
    return jax.make_array_from_callback(host_value.shape, sharding, lambda index: host_value[index])


def place_tree(tree, shardings):
    """Puts every array of `tree` on its sharding (a matching pytree). One process: device_put.
    Several: arrays not yet so sharded are rebuilt from their host values (identical on every
    process, e.g. an initialisation from the same seed), each process placing its own blocks."""
    if jax.process_count() == 1:
        return jax.device_put(tree, shardings)

    def one(x, sharding):
        if isinstance(x, jax.Array) and x.sharding == sharding:
            return x
        return global_array(np.asarray(x), sharding)

    return jax.tree.map(one, tree, shardings)


def process_rows(num_rows: int, sharding: jax.sharding.Sharding, batch_dim: int = 0) -> slice:
    """The rows (of `num_rows` along `batch_dim`) whose data this process's devices hold: the
    part of the global batch this host must load."""
    shape = [1] * (batch_dim + 1)
    shape[batch_dim] = num_rows
    spans = [index[batch_dim].indices(num_rows)[:2]
             for index in sharding.addressable_devices_indices_map(tuple(shape)).values()]
    return slice(min(s for s, _ in spans), max(e for _, e in spans))


def host_local_batch(local_rows: np.ndarray, sharding: jax.sharding.Sharding,
                     global_rows: int, batch_dim: int = 0) -> jax.Array:
    """A global array from the rows this process loaded (`process_rows`), the other processes
    supplying theirs."""
    global_shape = list(local_rows.shape)
    global_shape[batch_dim] = global_rows
    return jax.make_array_from_process_local_data(sharding, local_rows, tuple(global_shape))
