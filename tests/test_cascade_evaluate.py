"""The whole cascade job on tiny random chat models: records, resume after SIGKILL, rescoring."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from configs.cascade import tiny
from corea_jax import generation
from corea_jax.cascade import config as cascade_config, evaluate
from tests.cascade_helpers import SHARED_DATA, save_tiny_chat_model
from tests.helpers import REPO

N_ITEMS = 6  # 4 test + 2 calibration, each answered by both models


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_cascade")
    return (str(save_tiny_chat_model(root / "slm", seed=0)),
            str(save_tiny_chat_model(root / "llm", seed=1, intermediate_size=96)))


@pytest.fixture(autouse=True)
def _shared_data(monkeypatch):
    monkeypatch.setenv("COREA_SHARED_DATA", str(SHARED_DATA))


def _config(models, **overrides):
    config = tiny.get_config()
    config.slm.name, config.llm.name = models
    config.slm.probe_hidden = True
    for key, value in overrides.items():
        config[key] = value
    return config


@pytest.fixture
def count_generate(monkeypatch):
    """Counts the prompts handed to the engine's `generate`."""
    calls = []
    original = generation.generate

    def counting(model, prompts, *args, **kwargs):
        calls.append(len(prompts))
        return original(model, prompts, *args, **kwargs)

    monkeypatch.setattr(generation, "generate", counting)
    return calls


def _comparable(report):
    return {k: v for k, v in report.items()
            if k not in ("runtime_s", "recorded_model_seconds", "slm", "llm")}


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.mark.slow
def test_sigkill_midway_then_restart_gives_the_same_report_without_regenerating(
        models, tmp_path, count_generate):
    clean = evaluate.run(_config(models), tmp_path / "clean", progress=False)
    assert sum(count_generate) == 2 * N_ITEMS

    workdir = tmp_path / "killed"
    records = workdir / "records.jsonl"
    command = [sys.executable, "-m", "launch.cascade", "--config=configs/cascade/tiny.py",
               f"--workdir={workdir}", f"--config.slm.name={models[0]}", f"--config.llm.name={models[1]}",
               "--config.slm.probe_hidden=True"]
    proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        # Kill as soon as the first batch is on disk: the LLM's load and compile still lie ahead.
        while len(_lines(records)) < 2 and proc.poll() is None:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    before = _lines(records)
    assert 2 <= len(before) < 2 * N_ITEMS
    with open(records, "a") as f:  # a write cut short by the kill
        f.write('{"id": "gsm8k/test/0", "model": "sl')

    count_generate.clear()
    resumed = evaluate.run(_config(models), workdir, progress=False)
    assert sum(count_generate) == 2 * N_ITEMS - len(before)
    keys = [(r["id"], r["model"]) for r in _lines(records)]
    assert len(keys) == len(set(keys)) == 2 * N_ITEMS
    assert json.dumps(_comparable(resumed), sort_keys=True) == json.dumps(_comparable(clean), sort_keys=True)

    count_generate.clear()  # a finished run regenerates nothing
    evaluate.run(_config(models), workdir, progress=False)
    assert count_generate == []


@pytest.mark.slow
def test_rescore_only_needs_no_model_and_changes_only_what_it_should(models, tmp_path):
    workdir = tmp_path / "run"
    first = evaluate.run(_config(models, one_model_at_a_time=True), workdir, progress=False)
    missing = ("/nonexistent/slm", "/nonexistent/llm")  # loading either would fail
    again = evaluate.run(_config(missing, rescore_only=True), workdir, progress=False)
    assert _comparable(again) == _comparable(first)
    by_time = evaluate.run(_config(missing, rescore_only=True, cost_model="time"), workdir, progress=False)
    assert by_time["cost_model"] == "time"
    for name, m in first["systems"].items():
        if m is not None:
            assert by_time["systems"][name]["pass_at_1"] == m["pass_at_1"]
    for name in ("report.json", "report.md", "frontier.png"):
        assert (workdir / name).exists()
    record = _lines(workdir / "records.jsonl")[0]
    for field in ("id", "model", "split", "response", "answer", "correct", "confidence", "prompt_tokens",
                  "generated_tokens", "cost", "seconds"):
        assert field in record
    assert set(record["confidence"]) >= {"verbal", "answer_mean_prob", "answer_min_prob"}


def test_the_continuous_schedule_gives_the_same_records_and_report(models, tmp_path):
    static = evaluate.run(_config(models), tmp_path / "static", progress=False)
    config = _config(models)
    config.slm.schedule = config.llm.schedule = "continuous"
    continuous = evaluate.run(config, tmp_path / "continuous", progress=False)
    assert _comparable(continuous) == _comparable(static)
    # Records: the same tokens, answers and verdicts; log-prob-based scores and hidden states
    # agree to float precision (the two schedules batch the rows differently).
    key = lambda r: (r["id"], r["model"])  # noqa: E731
    pairs = zip(sorted(_lines(tmp_path / "static/records.jsonl"), key=key),
                sorted(_lines(tmp_path / "continuous/records.jsonl"), key=key))
    for a, b in pairs:
        for field in ("id", "model", "response", "answer", "correct", "generated_tokens", "prompt_tokens"):
            assert a[field] == b[field], field
        assert a["confidence"].keys() == b["confidence"].keys()
        for source, value in a["confidence"].items():
            assert (value is None) == (b["confidence"][source] is None), source
            if value is not None:
                assert b["confidence"][source] == pytest.approx(value, rel=1e-4, abs=1e-6), source
        assert (a.get("hidden") is None) == (b.get("hidden") is None)
        if a.get("hidden") is not None:  # the SLM's, for the probe
            assert b["hidden"] == pytest.approx(a["hidden"], rel=1e-4, abs=1e-5)


def test_bad_schedule_is_refused_before_any_model_loads(models, tmp_path):
    config = _config(("/nonexistent/slm", "/nonexistent/llm"))
    config.llm.schedule = "dynamic"
    with pytest.raises(ValueError, match=r"llm.schedule: expected one of \('continuous', 'static'\)"):
        evaluate.run(config, tmp_path, progress=False)


@pytest.mark.parametrize("field, value, match", [
    ("llm_on", "some", "llm_on"), ("cost_model", "joules", "cost_model")])
def test_bad_config_names_the_field(models, tmp_path, field, value, match):
    with pytest.raises(ValueError, match=match):
        evaluate.run(_config(models, **{field: value}), tmp_path, progress=False)


@pytest.mark.real_model
@pytest.mark.slow
def test_local_backend_on_a_fetched_model_answers_gsm8k():
    import corea_jax
    from corea_jax.cascade import backends, datasets
    from corea_jax.models import fetch

    name = "smollm2-135m-instruct"
    model = corea_jax.load_model(fetch.fetch_model(name, fetch.default_model_dir(name)))
    items = datasets.load_items("gsm8k", split="test", limit=2)
    answers = backends.LocalBackend(model, max_new_tokens=48, batch_size=2, probe_hidden=True).answer(items)
    for answer in answers:
        assert answer.response and answer.generated_tokens <= 48 and answer.prompt_tokens > 50
        assert len(answer.hidden) == model.config.hidden_size
        assert answer.confidence["sequence_mean_prob"] is not None


@pytest.mark.parametrize("name", ["qwen_coder_gsm8k_cpu", "small_cpu", "tiny"])
def test_shipped_cpu_configs_validate_and_load_their_splits(name, monkeypatch):
    import importlib

    monkeypatch.setenv("COREA_SHARED_DATA", str(SHARED_DATA))
    config = importlib.import_module(f"configs.cascade.{name}").get_config()
    cascade_config.validate(config)
    calibration, test = evaluate.load_splits(config)
    assert len(test) == config.data.test.limit and len(calibration) == config.data.calibration.limit
    assert {item.task for item in test + calibration} == {"gsm8k"}


def test_launch_cascade_reports_a_bad_config_field_without_a_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "launch.cascade", "--config=configs/cascade/tiny.py", f"--workdir={tmp_path}",
         "--config.threshold.rule=target_usage"],
        cwd=REPO, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode != 0
    assert "threshold.rule: expected one of ('fixed', 'paper', 'usage', 'risk'), found 'target_usage'" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "records.jsonl").exists()


def _by_key(path, model):
    return {r["id"]: r for r in _lines(path) if r["model"] == model}


def test_a_rerun_with_another_slm_is_refused_and_overwrite_regenerates_only_its_records(
        models, tmp_path, count_generate):
    workdir = tmp_path / "run"
    evaluate.run(_config(models), workdir, progress=False)
    records = workdir / "records.jsonl"
    before = records.read_text()
    other = str(save_tiny_chat_model(tmp_path / "other_slm", seed=2))

    with pytest.raises(ValueError, match=r"(?s)its slm records were made with another setup.*"
                       r"slm\.name: .* in the workdir, .* now.*slm\.weights: 'sha256:.*--config\.overwrite=slm"):
        evaluate.run(_config((other, models[1])), workdir, progress=False)
    changed = _config(models)
    changed.llm.max_new_tokens = 5
    with pytest.raises(ValueError, match=r"llm\.max_new_tokens: 4 in the workdir, 5 now"):
        evaluate.run(changed, workdir, progress=False)
    assert records.read_text() == before

    count_generate.clear()
    evaluate.run(_config((other, models[1]), overwrite="slm"), workdir, progress=False)
    assert sum(count_generate) == N_ITEMS  # the SLM's items only
    assert _by_key(records, "llm") == {r["id"]: r for r in map(json.loads, before.splitlines())
                                       if r["model"] == "llm"}
    assert len(_lines(records)) == 2 * N_ITEMS
    count_generate.clear()  # the new fingerprint is the workdir's now: a rerun resumes
    evaluate.run(_config((other, models[1]), overwrite="slm"), workdir, progress=False)
    assert count_generate == []


def test_retrained_weights_under_the_same_path_are_refused(models, tmp_path):
    slm = tmp_path / "slm"
    save_tiny_chat_model(slm, seed=0)
    workdir = tmp_path / "run"
    evaluate.run(_config((str(slm), models[1])), workdir, progress=False)
    save_tiny_chat_model(slm, seed=3)  # e.g. an RLCC-trained SLM exported over the old one
    with pytest.raises(ValueError, match=r"slm\.weights: 'sha256:\w+' in the workdir, 'sha256:\w+' now"):
        evaluate.run(_config((str(slm), models[1])), workdir, progress=False)


def _record(item_id, model, split, correct, verbal=None, **extra):
    return {**dict(id=item_id, model=model, split=split, task="gsm8k", gold="1", response="", answer=None,
                   correct=correct, format_ok=True, confidence={"verbal": verbal}, confidence_text=None,
                   prompt_tokens=10, generated_tokens=5, seconds=0.1, cost=None, cost_model="time",
                   failed=False, error=None), **extra}


@pytest.mark.parametrize("how", ["failed", "absent"])
def test_deferred_mode_reports_a_deferred_item_without_an_llm_answer_as_missing(
        models, tmp_path, count_generate, how):
    # Calibration: the SLM is right when confident. Test: COREA (tau 0.5) defers items 1 and 3,
    # COREA-risk (2 calibration items certify nothing) every item; the LLM answered items 0-2
    # but not 3 (its call failed for good, or it was never asked: a rescore with a threshold
    # that defers more than the run that made the records).
    records = [_record("gsm8k/train/0", "slm", "calibration", True, 0.9),
               _record("gsm8k/train/1", "slm", "calibration", False, 0.1),
               _record("gsm8k/train/0", "llm", "calibration", True),
               _record("gsm8k/train/1", "llm", "calibration", True)]
    records += [_record(f"gsm8k/test/{k}", "slm", "test", k % 2 == 0, 0.9 if k % 2 == 0 else 0.1)
                for k in range(4)]
    records += [_record(f"gsm8k/test/{k}", "llm", "test", True) for k in range(3)]
    if how == "failed":
        records.append(_record("gsm8k/test/3", "llm", "test", False, failed=True,
                               error="APIConnectionError: Connection error."))
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    config = _config(("/nonexistent/slm", "/nonexistent/llm"), llm_on="deferred", rescore_only=True,
                     cost_model="time")
    config.threshold.rule, config.threshold.fixed_tau = "fixed", 0.5

    report = evaluate.run(config, workdir, progress=False)
    assert report["n_test"] == 3
    excluded = report["excluded_items"]
    assert [(e["id"], e["split"]) for e in excluded] == [("gsm8k/test/3", "test")]
    reason = excluded[0]["reason"]
    assert reason.startswith("llm: the call failed (APIConnectionError" if how == "failed" else "llm: no record")
    assert "COREA" in reason and "without rescore_only" in reason
    assert report["systems"]["COREA"]["pass_at_1"] == 1.0  # items 0, 1, 2: all right
    assert "gsm8k/test/3" in (workdir / "report.md").read_text()
    assert json.loads((workdir / "report.json").read_text())["excluded_items"] == excluded

    # The next run that may generate asks the LLM for the missing item, and only for it.
    config.slm.name, config.llm.name = models
    config.rescore_only = False
    count_generate.clear()
    report = evaluate.run(config, workdir, progress=False)
    assert count_generate == [1] and report["excluded_items"] == [] and report["n_test"] == 4
