"""orbax checkpoints of a training run: the train state plus a small JSON of run position.

Saved per step: params, optimizer state and step (one pytree), and JSON metadata with the
seed, the run's base PRNG key, which a resumed run samples with, and the parameter layout
(a run may resume in another layout: `train_state.relayout_state` converts). The step is the data
position (step s reads the records `data.records.step_indices` picks for s). orbax writes
each step to a temporary directory and renames it when complete, so a run killed mid-save
leaves the previous checkpoint as the latest one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from corea_jax.models import ModelConfig
from corea_jax.rl.train_state import TrainState


class Checkpointer:
    """CheckpointManager over `workdir/checkpoints`."""

    def __init__(self, workdir: str | Path, *, max_to_keep: int = 2, async_save: bool = False):
        self.directory = Path(workdir).resolve() / "checkpoints"
        # A save cut short by a kill leaves a temporary directory; drop it on the next start.
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                               cleanup_tmp_directories=True,
                                               enable_async_checkpointing=async_save)
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, state: TrainState, meta: dict[str, Any]) -> None:
        """Saves `state` under its step, with JSON `meta`."""
        step = int(jax.device_get(state.step))
        pytree = {"step": state.step, "params": state.params, "opt_state": state.opt_state}
        self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(pytree), meta=ocp.args.JsonSave(meta)))

    def saved_layout(self, step: int | None = None) -> tuple[bool, bool] | None:
        """(scan_layers, feature_major) the checkpoint at `step` (default: latest) stores its
        parameters in (`layout_meta`); None when there is no checkpoint. A checkpoint written
        before layouts were recorded holds [in, out] kernels, stacked when its parameters have
        one "layers" entry."""
        step = self.latest_step() if step is None else step
        if step is None:
            return None
        meta = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        if "layout" in meta:
            return bool(meta["layout"]["scan_layers"]), bool(meta["layout"]["feature_major"])
        params = self.manager.item_metadata(step)["state"]["params"]
        return "layers" in params, False

    def restore(self, state: TrainState, step: int | None = None) -> tuple[TrainState, dict] | None:
        """The checkpoint at `step` (default: latest) restored into `state`'s structure and
        shardings (its arrays, or ShapeDtypeStructs with shardings), with its metadata; None
        when there is none."""
        step = self.latest_step() if step is None else step
        if step is None:
            return None
        pytree = {"step": state.step, "params": state.params, "opt_state": state.opt_state}
        target = jax.tree.map(ocp.utils.to_shape_dtype_struct, pytree)
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()))
        tree = restored["state"]
        return state.replace(step=tree["step"], params=tree["params"], opt_state=tree["opt_state"]), \
            dict(restored["meta"])

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()


def layout_meta(config: ModelConfig) -> dict:
    """The checkpoint metadata entry naming the parameter layout of `config`."""
    return {"layout": {"scan_layers": config.scan_layers, "feature_major": config.feature_major}}


def key_data(key: jax.Array) -> list[int]:
    """A typed PRNG key as a JSON-able list of uint32."""
    return np.asarray(jax.random.key_data(key)).astype(np.uint32).ravel().tolist()


def key_from_data(data: list[int]) -> jax.Array:
    """The typed PRNG key `key_data` wrote."""
    return jax.random.wrap_key_data(np.asarray(data, np.uint32))
