"""The reproduction's shipped base models: their recipe is the default config's, their files
match the manifest, a changed recipe is refused with the field named, and they answer the
test split as the manifest says."""

import importlib.util
import json
import os
import shutil
import subprocess
import sys

import pytest

from corea_jax.reproduction import base_models, cascade_stages, pipeline
from tests.helpers import REPO

pytestmark = pytest.mark.slow  # servers, subprocesses, notebooks, training runs: `pytest -m slow`


def _config(variant=""):
    spec = importlib.util.spec_from_file_location("reproduce_config", REPO / "configs" / "reproduce.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(variant)


def test_the_shipped_models_are_the_default_configs_and_intact():
    config = _config()
    assert not config.from_scratch
    manifest = base_models.load_manifest()
    base_models.check_recipe(config, manifest)
    for role in base_models.ROLES:
        assert (base_models.SHIPPED / role / "model.safetensors").exists()
        assert manifest["test_accuracy"][role]["all"] == manifest["test_correct"][role].count("1") / 500


def test_a_changed_recipe_is_refused_naming_the_field():
    config = _config()
    manifest = base_models.load_manifest()
    with config.unlocked():
        config.llm_sft_steps = 10
    with pytest.raises(ValueError, match=r"config\.llm_sft_steps: the shipped base models were built with \d+, "
                                         r"found 10; set --config.from_scratch=True"):
        base_models.check_recipe(config, manifest)
    config = _config()
    config.task.digit_shares = (0.5, 0.5)
    with pytest.raises(ValueError, match=r"config\.task\.digit_shares: .* found \[0\.5, 0\.5\]"):
        base_models.check_recipe(config, manifest)


def test_a_tampered_file_is_refused(tmp_path):
    copy = tmp_path / "base_models"
    shutil.copytree(base_models.SHIPPED, copy)
    (copy / "slm" / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="files differ from manifest.json"):
        base_models.load_manifest(copy)


def test_launch_reproduce_refuses_a_changed_recipe_without_a_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "launch.reproduce", f"--workdir={tmp_path}", "--config.rl.total_steps=3",
         "--config.slm_sft_steps=7"],
        cwd=REPO, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "config.slm_sft_steps: the shipped base models were built with" in proc.stderr


@pytest.mark.parametrize("role", base_models.ROLES)
def test_the_shipped_models_answer_as_the_manifest_says(role, tmp_path):
    """Greedy answers to the first 100 test questions: per item, the correctness the manifest
    recorded (a few may flip where float rounding differs between CPUs)."""
    from corea_jax.cascade import evaluate, loading, records

    config = _config()
    manifest = base_models.load_manifest()
    pipeline.build_task(config, tmp_path)
    cfg = cascade_stages.cascade_config(config, task_dir=tmp_path, slm_dir=base_models.SHIPPED / "slm",
                                        llm_dir=base_models.SHIPPED / "llm")
    cfg.data.test.limit = 100
    _, test = evaluate.load_splits(cfg)
    backend = loading.make_backend(cfg[role], role, progress=False)
    store = records.RecordStore(tmp_path / "records.jsonl")
    records.collect(backend, test, store, model=role, split="test", cost_fn=lambda r: 1.0, cost_model="tokens")
    got = {r["id"]: r["correct"] for r in store.records(model=role, split="test")}
    expected = manifest["test_correct"][role]
    agree = sum(got[f"test/{i}"] == (expected[i] == "1") for i in range(100))
    assert agree >= 97, (role, agree)
    accuracy = sum(got.values()) / 100
    print(json.dumps({role: accuracy}))
