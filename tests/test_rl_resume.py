"""Resuming a finished run: it says so (and where its model is), and never trains backwards."""

from __future__ import annotations

import shutil

import pytest

from corea_jax.rl import trainer
from corea_jax.rl.metrics_writer import read_metrics
from tests.test_rl_trainer import _short_config as _config


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished 3-step run with checkpoints at steps 2 and 3 (max_to_keep = 2)."""
    workdir = tmp_path_factory.mktemp("finished")
    trainer.train(_config(3), workdir, log=lambda _: None)
    return workdir


@pytest.mark.slow
def test_a_resume_of_a_complete_run_says_it_is_complete_and_where_its_model_is(finished_run, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(finished_run, workdir)
    rows = read_metrics(workdir)
    messages = []
    trainer.train(_config(3), workdir, log=messages.append)
    complete = [m for m in messages if "already complete" in m]
    assert len(complete) == 1 and "3 of 3 steps" in complete[0], messages
    assert str((workdir / "checkpoints" / "3").resolve()) in complete[0]
    assert read_metrics(workdir) == rows
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["2", "3"]


def test_total_steps_below_the_checkpoint_is_refused_naming_the_field(finished_run, tmp_path, monkeypatch):
    from corea_jax.rl import policy

    workdir = tmp_path / "run"
    shutil.copytree(finished_run, workdir)

    def fail(*args, **kwargs):
        raise AssertionError("the trainer built a model before refusing total_steps")

    monkeypatch.setattr(policy, "build_model", fail)
    with pytest.raises(ValueError, match=r"^config\.total_steps: expected at least 3, .* found 2$"):
        trainer.train(_config(2), workdir, log=lambda _: None)
