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
