"""The checkpoint's recorded parameter layout, and that of checkpoints written before it was."""

from __future__ import annotations

import jax
import pytest

from corea_jax.models.decoder import relayout
from corea_jax.rl import policy
from corea_jax.rl.checkpointing import Checkpointer, layout_meta
from corea_jax.rl.train_state import init_train_state, make_optimizer
from tests.test_rl_trainer import tiny_config


@pytest.mark.parametrize("scan_layers, feature_major", [(True, False), (False, False), (True, True)])
@pytest.mark.slow
def test_saved_layout_is_recorded_and_inferred_for_older_checkpoints(tmp_path, scan_layers, feature_major):
    config = tiny_config()
    model = policy.build_model(config)
    model_config, params = relayout(model.config, model.params, scan_layers, feature_major)
    state = init_train_state(params, make_optimizer(config.optim, 10))
    recorded, older = Checkpointer(tmp_path / "recorded"), Checkpointer(tmp_path / "older")
    recorded.save(state, {"step": 0, **layout_meta(model_config)})
    older.save(state, {"step": 0})  # written before the layout was recorded
    for checkpointer in (recorded, older):
        checkpointer.wait()
    assert recorded.saved_layout() == (scan_layers, feature_major)
    # Older checkpoints were all [in, out]; their stacking shows in the parameter tree.
    assert older.saved_layout() == (scan_layers, False)
    assert Checkpointer(tmp_path / "empty").saved_layout() is None
