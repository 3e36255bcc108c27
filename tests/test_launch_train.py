"""launch.train end to end: run files, and a run killed with SIGKILL that resumes exactly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from corea_jax.rl import trainer
from corea_jax.rl.checkpointing import Checkpointer
from corea_jax.rl.metrics_writer import read_metrics
from corea_jax.rl.train_state import init_train_state, make_optimizer
from tests.helpers import REPO
from tests.test_rl_trainer import tiny_config

pytestmark = pytest.mark.slow  # servers, subprocesses, notebooks, training runs: `pytest -m slow`

TIMING = ("time_", "tokens_per_s", "generation_tokens_per_s", "mfu")
STEPS, EVERY = 30, 10


def _launch(workdir, *flags, cache_dir=None):
    env = os.environ.copy()
    if cache_dir is not None:  # the resumed run reuses the killed run's compiled programs
        env.update(JAX_COMPILATION_CACHE_DIR=str(cache_dir), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                   JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    return subprocess.Popen(
        [sys.executable, "-m", "launch.train", "--config=configs/tiny.py", f"--workdir={workdir}",
         f"--config.total_steps={STEPS}", f"--config.checkpoint.every_steps={EVERY}", *flags],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _without_timing(rows):
    return [{k: v for k, v in row.items() if not k.startswith(TIMING)} for row in rows]


def test_killed_run_resumes_to_the_uninterrupted_result(tmp_path):
    reference_dir, run_dir = tmp_path / "reference", tmp_path / "run"
    config = tiny_config()
    config.total_steps, config.checkpoint.every_steps = STEPS, EVERY
    reference = trainer.train(config, reference_dir, log=lambda _: None)

    process = _launch(run_dir, cache_dir=tmp_path / "jax_cache")
    first = run_dir / "checkpoints" / str(EVERY)
    deadline = time.monotonic() + 300
    while not first.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    output, _ = process.communicate()
    assert process.returncode == -signal.SIGKILL, \
        f"the run ended before it could be killed:\n{output[-3000:]}"
    killed_rows = read_metrics(run_dir)
    assert EVERY <= len(killed_rows) < STEPS

    resumed = _launch(run_dir, cache_dir=tmp_path / "jax_cache")
    output, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, output[-3000:]
    assert "resumed from step" in output

    rows = read_metrics(run_dir)
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    for row in rows:
        assert {"step", "loss", "reward_mean", "accuracy", "ece"} <= set(row)
    assert _without_timing(rows) == _without_timing(read_metrics(reference_dir))

    state = init_train_state(jax.tree.map(np.zeros_like, reference.params),
                             make_optimizer(config.optim, STEPS))
    checkpointer = Checkpointer(run_dir)
    restored, meta = checkpointer.restore(state)
    checkpointer.close()
    assert int(restored.step) == STEPS and meta["seed"] == config.seed
    for a, b in zip(jax.tree.leaves(restored.params), jax.tree.leaves(reference.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    for a, b in zip(jax.tree.leaves(restored.opt_state), jax.tree.leaves(reference.opt_state)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

    saved = json.loads((run_dir / "config.json").read_text())
    assert saved["total_steps"] == STEPS and saved["model"]["name"] == "toy"
    versions = json.loads((run_dir / "versions.json").read_text())
    assert {"jax", "flax", "optax", "orbax-checkpoint", "python"} <= set(versions)
    assert any((run_dir / "tensorboard").iterdir())


def test_launch_names_a_bad_flag_value(tmp_path):
    process = _launch(tmp_path, "--config.rollout.group_size=1")
    output, _ = process.communicate(timeout=120)
    assert process.returncode != 0
    assert "config.rollout.group_size: expected an integer >= 2" in output
    assert "Traceback" not in output
