"""One process of tests/test_parallel_multihost.py: a few sharded train steps on a 2-process mesh.

  COREA_COORDINATOR_ADDRESS=localhost:PORT COREA_NUM_PROCESSES=2 COREA_PROCESS_ID=i \
      python -m tests.multihost_worker OUT_DIR

Each process has 2 CPU devices; the global mesh is data 2 x fsdp 2 over both processes.
Step 1 places its batch from the full host batch (each process reads its rows); later
steps give each process only its own rows (per-host loading). Then both
processes sample a greedy rollout with the sharded params. Process 0 writes
OUT_DIR/result.npz: the losses, the rollout tokens and the gathered params.
"""

import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
os.environ["JAX_PLATFORMS"] = "cpu"

from corea_jax.parallel import multihost  # noqa: E402

multihost.initialize(multihost.cluster_from())

import jax  # noqa: E402
import numpy as np  # noqa: E402

import corea_jax  # noqa: E402
from jax.experimental import multihost_utils  # noqa: E402

from corea_jax.parallel.sharding import make_mesh  # noqa: E402
from corea_jax.rl.trainer import _place  # noqa: E402
from corea_jax.rl.update import micro_batch_shardings  # noqa: E402
from tests.test_parallel_train import CFG, run_steps  # noqa: E402


def per_host_place(micro, mesh):
    """Each process loads only the rows its devices hold, then the global batch is assembled."""
    if per_host_place.calls == 0:
        per_host_place.calls += 1
        return _place(micro, mesh)
    shardings = micro_batch_shardings(micro, mesh)
    out = {}
    for name, value in micro.items():
        rows = multihost.process_rows(value.shape[1], shardings[name], batch_dim=1)
        out[name] = multihost.host_local_batch(value[:, rows], shardings[name], value.shape[1], batch_dim=1)
        if name == "completion_tokens":
            per_host_place.rows = rows
    return out


per_host_place.calls = 0

PROMPTS = [[5, 6, 7], [8, 9, 10, 11], [12, 13], [14, 15, 16, 17, 18]]


def rollout(model) -> np.ndarray:
    """Greedy tokens [4, 6] of PROMPTS (EOS ignored)."""
    from corea_jax.generation import generate_tokens

    out = generate_tokens(model, PROMPTS, corea_jax.SamplingParams(max_new_tokens=6, ignore_eos=True),
                          batch_size=4, progress=False)
    return np.asarray([group[0][0] for group in out])


def main(out_dir):
    assert jax.process_count() == 2 and len(jax.devices()) == 4 and len(jax.local_devices()) == 2
    mesh = make_mesh({"data": 2, "fsdp": 2})
    losses, state = run_steps(mesh, steps=2, place=per_host_place)
    # A rollout with the trained, sharded params: the cache and the batch span both processes.
    tokens = rollout(corea_jax.Model(CFG, state.params, None, mesh))
    params = multihost_utils.process_allgather(state.params, tiled=True)
    if multihost.is_primary():
        leaves = {f"p{i}": np.asarray(x) for i, x in enumerate(jax.tree.leaves(params))}
        np.savez(os.path.join(out_dir, "result.npz"), losses=np.asarray(losses), tokens=tokens,
                 rows=np.asarray([per_host_place.rows.start, per_host_place.rows.stop]), **leaves)
    else:
        np.save(os.path.join(out_dir, "rows1.npy"),
                np.asarray([per_host_place.rows.start, per_host_place.rows.stop]))


if __name__ == "__main__":
    main(sys.argv[1])
