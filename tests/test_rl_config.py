"""Bad input is refused with an error naming the field, before anything is compiled."""

from __future__ import annotations

import importlib.util

import pytest

from corea_jax.generation import compile_count
from corea_jax.rl import config as rl_config
from corea_jax.rl import policy, trainer
from tests.helpers import REPO


def _load(path):
    spec = importlib.util.spec_from_file_location("cfg", REPO / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


@pytest.fixture
def no_model(monkeypatch):
    """Fails the test if the trainer gets as far as building (and compiling) a model."""
    def fail(*args, **kwargs):
        raise AssertionError("the trainer built a model before rejecting the config")

    monkeypatch.setattr(policy, "build_model", fail)
    return compile_count()


@pytest.mark.parametrize("path", ["configs/tiny.py", "configs/paper/qwen25_7b_rlcc.py",
                                  "configs/paper/qwen25_1p5b_rlcc.py"])
def test_shipped_configs_validate(path):
    config = _load(path)
    rl_config.validate(config)
    assert set(config.mesh.keys()) == {"data", "fsdp", "tensor"}


def test_paper_meshes_cover_eight_devices():
    for path in ("configs/paper/qwen25_7b_rlcc.py", "configs/paper/qwen25_1p5b_rlcc.py"):
        mesh = _load(path).mesh
        assert mesh.data * mesh.fsdp * mesh.tensor == 8


def _bad(tmp_path, no_model, match, edit, error=ValueError):
    config = _load("configs/tiny.py")
    edit(config)
    with pytest.raises(error, match=match):
        trainer.train(config, tmp_path / "run")
    assert compile_count() == no_model
    assert not (tmp_path / "run").exists()


def test_unknown_field(tmp_path, no_model):
    def edit(c):
        c.optim.learning_rat = 1e-3

    _bad(tmp_path, no_model, r"config.optim.learning_rat: unknown config field .* did you mean "
                             r"config.optim.learning_rate\?", edit)


def test_group_of_one(tmp_path, no_model):
    _bad(tmp_path, no_model, r"config.rollout.group_size: expected an integer >= 2",
         lambda c: setattr(c.rollout, "group_size", 1))


def test_unknown_reward_preset(tmp_path, no_model):
    _bad(tmp_path, no_model, r"config.reward.preset: expected one of \['rlcc_brier', 'rlcc_l1', 'rlcr', "
                             r"'rlvr'\], found 'rlcc_l3'",
         lambda c: setattr(c.reward, "preset", "rlcc_l3"))


def test_reward_weights(tmp_path, no_model):
    _bad(tmp_path, no_model, r"config.reward.calibration_weight: expected None \(the preset's\) or a finite "
                             r"number >= 0, found -0.5", lambda c: setattr(c.reward, "calibration_weight", -0.5))

    def rlvr_with_calibration(c):
        c.reward.preset = "rlvr"
        c.reward.calibration_weight = 0.5

    _bad(tmp_path, no_model, r"config.reward.calibration_weight: expected None or 0 with preset 'rlvr'",
         rlvr_with_calibration)


def test_dataset_without_the_answer_column(tmp_path, no_model):
    path = tmp_path / "data.jsonl"
    path.write_text('{"question": "1+1", "solution": "2"}\n')

    def edit(c):
        c.model.name = "smollm2-135m-instruct"
        c.data.source = str(path)

    _bad(tmp_path, no_model, r"config.data.answer_field: column 'answer' is not in .*"
                             r"\['question', 'solution'\]", edit)


@pytest.mark.parametrize("field, value, match", [
    ("grpo.aggregation", "sum", r"config.grpo.aggregation: expected one of"),
    ("grpo.micro_batch_size", 3, r"config.grpo.micro_batch_size: expected a multiple or a divisor"),
    ("grpo.num_minibatches", 3, r"config.grpo.num_minibatches: expected a divisor"),
    ("optim.schedule", "step", r"config.optim.schedule: expected one of"),
    ("mode", "dpo", r"config.mode: expected one of"),
    ("data.source", "gsm8k.jsonl", r"config.data.source"),
    # GRPO's log-probs are under softmax(logits / T): a filtered rollout is another distribution.
    ("rollout.top_p", 0.95, r"config.rollout.top_p: expected 1.0 in a GRPO config .*, found 0.95"),
    ("rollout.top_k", 50, r"config.rollout.top_k: expected 0 in a GRPO config .*, found 50"),
])
def test_other_bad_values(tmp_path, no_model, field, value, match):
    def edit(c):
        group, key = field.rsplit(".", 1) if "." in field else (None, field)
        setattr(c[group] if group else c, key, value)

    _bad(tmp_path, no_model, match, edit, error=(ValueError, FileNotFoundError))



def test_the_parameter_layout_may_change_on_resume():
    """A run written in one layout (or before feature_major existed) resumes in another: the
    checkpoint is converted (tests/test_rl_trainer.py), so the layout is not a result-changing
    field. Other model fields still are."""
    import json

    config = _load("configs/tiny.py")
    assert config.model.scan_layers is None and config.model.feature_major is None  # the platform's fastest
    saved = json.loads(config.to_json_best_effort())
    saved["model"]["scan_layers"] = True
    del saved["model"]["feature_major"]
    assert rl_config.resume_differences(saved, config) == []
    del saved["reward"]["calibration_weight"]  # a run saved before the reward weights existed
    assert rl_config.resume_differences(saved, config) == []
    saved["reward"]["correctness_weight"] = 2.0
    assert rl_config.resume_differences(saved, config) == [
        "config.reward.correctness_weight: 2.0 in the workdir, None now"]
    del saved["reward"]["correctness_weight"]
    saved["model"]["dtype"] = "bfloat16"
    assert rl_config.resume_differences(saved, config) == [
        "config.model.dtype: 'bfloat16' in the workdir, 'float32' now"]
