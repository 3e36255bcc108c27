"""Cached stages: skipped with the same inputs, rebuilt when they change, never half-written."""

import json

import pytest

from corea_jax.reproduction.stages import fingerprint, run_stage


def _writer(calls, text):
    def build(out):
        calls.append(text)
        (out / "out.txt").write_text(text)
    return build


def test_same_inputs_skip_changed_inputs_rebuild(tmp_path):
    calls = []
    first = run_stage(tmp_path, "a", {"x": 1}, _writer(calls, "one"), log=lambda _: None)
    again = run_stage(tmp_path, "a", {"x": 1}, _writer(calls, "two"), log=lambda _: None)
    assert calls == ["one"] and first.built and not again.built and again.key == first.key
    assert (tmp_path / "a" / "out.txt").read_text() == "one"
    changed = run_stage(tmp_path, "a", {"x": 2}, _writer(calls, "three"), log=lambda _: None)
    assert changed.built and changed.key != first.key and calls == ["one", "three"]
    assert (tmp_path / "a" / "out.txt").read_text() == "three"
    marker = json.loads((tmp_path / "a" / "stage.json").read_text())
    assert marker["finished"] and marker["inputs"] == {"x": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]


def test_a_failed_build_leaves_no_finished_stage_and_resumes_in_place(tmp_path):
    def crash(out):
        (out / "progress.txt").write_text("half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        run_stage(tmp_path, "b", {"x": 1}, crash, log=lambda _: None)
    assert not (tmp_path / "b").exists()

    def resume(out):
        assert (out / "progress.txt").read_text() == "half"  # same inputs: the partial is kept
        (out / "out.txt").write_text("done")

    run_stage(tmp_path, "b", {"x": 1}, resume, log=lambda _: None)
    assert (tmp_path / "b" / "out.txt").read_text() == "done"

    with pytest.raises(RuntimeError):
        run_stage(tmp_path, "c", {"x": 1}, crash, log=lambda _: None)

    def fresh(out):
        assert not (out / "progress.txt").exists()  # other inputs: the partial is discarded
    run_stage(tmp_path, "c", {"x": 2}, fresh, log=lambda _: None)


def test_fingerprint_ignores_key_order():
    assert fingerprint({"a": 1, "b": [1, 2]}) == fingerprint({"b": [1, 2], "a": 1})
    assert fingerprint({"a": 1}) != fingerprint({"a": 2})


def test_an_rl_runs_reward_weight_left_unset_keeps_the_stage_inputs():
    """rl_runs takes a preset's name or {preset, calibration_weight}; a weight left None stays out
    of the RL stage's inputs (workdirs made before the weights existed stay valid), a set one
    goes in."""
    import ml_collections

    from configs import reproduce
    from corea_jax.reproduction.pipeline import rl_overrides

    config = reproduce.get_config()
    assert rl_overrides(config, "rlcc")["reward"] == {"preset": "rlcc_l1"}
    config.rl_runs.rlcc.calibration_weight = 0.5
    assert rl_overrides(config, "rlcc")["reward"] == {"preset": "rlcc_l1", "calibration_weight": 0.5}
    assert rl_overrides(config, "rlvr")["reward"] == {"preset": "rlvr"}
    config = ml_collections.ConfigDict(dict(rl=config.rl, rl_runs=dict(
        rlvr="rlvr",  # the old form: a preset's name
        rlcc=dict(preset="rlcc_l1", calibration_weight=ml_collections.config_dict.placeholder(float)))))
    assert rl_overrides(config, "rlvr")["reward"] == {"preset": "rlvr"}
    assert rl_overrides(config, "rlcc")["reward"] == {"preset": "rlcc_l1"}
    assert fingerprint(rl_overrides(config, "rlcc")) == fingerprint(dict(config.rl.to_dict(), reward={"preset": "rlcc_l1"}))
