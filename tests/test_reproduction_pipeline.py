"""The main job end to end on its quick config: every stage, the report's structure, RLCC
lowering the SFT model's ECE, and a rerun that rebuilds nothing."""

import importlib.util
import json
import os
import subprocess
import sys
import urllib.request

import pytest

from corea_jax.reproduction import pipeline
from corea_jax.reproduction.tables import SYSTEMS
from tests.helpers import REPO

pytestmark = pytest.mark.slow  # servers, subprocesses, notebooks, training runs: `pytest -m slow`

FIELDS = ("pass_at_1", "avg_cost", "llm_usage", "ece", "auroc", "brier", "tau")
RUNS = ("sft", "rlvr", "rlcc", "brier")  # the SLM runs: SFT and the three RL runs


def _quick_config():
    spec = importlib.util.spec_from_file_location("reproduce_config", REPO / "configs" / "reproduce.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config("quick")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("reproduce")
    messages = []
    report = pipeline.run(_quick_config(), workdir, log=messages.append)
    return workdir, report, messages


def test_report_has_every_system_and_file(quick_run):
    workdir, report, _ = quick_run
    on_disk = json.loads((workdir / "report.json").read_text())
    assert on_disk["systems"] == report["systems"]
    assert list(on_disk["systems"]) == list(SYSTEMS)
    for name, entry in on_disk["systems"].items():
        assert set(FIELDS) <= set(entry), name
        for key in ("pass_at_1", "llm_usage"):
            assert 0 <= entry[key] <= 1, (name, key)
        assert entry["avg_cost"] > 0
    s = on_disk["systems"]
    assert s["LLM"]["llm_usage"] == 1 and s["SFT-SLM"]["llm_usage"] == 0
    assert s["SFT-SLM"]["avg_cost"] < s["LLM"]["avg_cost"]
    assert s["COREA"]["tau"] is not None and s["LLM"]["ece"] is None
    assert on_disk["n_test"] == 96 and on_disk["n_calibration"] == 64 and on_disk["cost_model"] == "flops"
    assert on_disk["runtime_s"] > 0
    for name in ("report.md", "table.png", "reliability.png", "learning_curves.png", "frontier.png"):
        assert (workdir / name).stat().st_size > 1000, name
    assert "| COREA |" in (workdir / "report.md").read_text()
    for run in RUNS:
        assert (workdir / f"cascade_{run}" / "report.json").exists()
        assert (workdir / f"slm_{run}" / "hf" / "config.json").exists() or run == "sft"
    assert (workdir / "slm_sft" / "hf" / "model.safetensors").exists()
    # by operand length (the quick task is one-digit only): every SLM run and the LLM
    table = on_disk["by_difficulty"]
    assert list(table) == ["SFT-SLM", "RLVR-SLM", "Brier-SLM", "RLCC-SLM", "LLM"]
    # n counts the samples scored (the LLM's greedy answer stands for each of a question's samples)
    assert table["LLM"]["1-digit"]["n"] == on_disk["n_test_items"]
    assert table["LLM"]["1-digit"]["confidence_mean"] is None
    assert abs(table["RLCC-SLM"]["1-digit"]["pass_at_1"] - s["RLCC-SLM"]["pass_at_1"]) < 1e-9
    assert "base models trained here" in on_disk["provenance"] and "CPU: " in on_disk["provenance"]
    assert "## By difficulty" in (workdir / "report.md").read_text()
    assert (workdir / "llm_sft" / "hf" / "tokenizer.json").exists()


def test_the_sampled_protocol_scores_every_sample_and_keeps_greedy_alongside(quick_run):
    workdir, report, _ = quick_run
    samples = _quick_config().cascade.samples
    assert report["protocol"].startswith(f"sampled: each SLM answers every question {samples} times")
    assert report["n_test_items"] == samples * report["n_test"]
    for run in RUNS:
        cascade = json.loads((workdir / f"sampled_{run}" / "report.json").read_text())
        assert cascade["n_test"] == samples * 96 and cascade["n_calibration"] == samples * 64
    # the LLM's greedy answer stands for each sample: its pass@1 is the greedy one
    greedy = report["greedy"]
    assert greedy["systems"]["LLM"]["pass_at_1"] == report["systems"]["LLM"]["pass_at_1"]
    assert [row["claim"] for row in greedy["claims"]] == [row["claim"] for row in report["claims"]]
    assert list(greedy["systems"]) == list(SYSTEMS)
    text = (workdir / "report.md").read_text()
    assert "## Greedy decoding, alongside" in text and "Protocol of every number below" in text
    for row in report["claims"]:  # a claim holds where its margin clears its bound
        assert row["margin"] is None or abs(row["margin"]) < 1e-12 or (row["margin"] > 0) == row["holds"], row


def test_rlcc_lowers_the_overconfident_sft_models_ece(quick_run):
    s = quick_run[1]["systems"]
    assert s["SFT-SLM"]["ece"] > 0.15
    assert s["RLCC-SLM"]["ece"] < s["SFT-SLM"]["ece"]


def test_rerun_rebuilds_nothing_and_gives_the_same_report(quick_run):
    workdir, report, _ = quick_run
    messages = []
    again = pipeline.run(_quick_config(), workdir, log=messages.append)
    assert again["systems"] == report["systems"]
    assert not any("building" in m for m in messages), messages
    assert sum("cached" in m for m in messages) >= 14


@pytest.mark.parametrize("flag, message", [
    ("--config.task.max_ops=0", "task.max_ops: expected 1 <= max_ops < 26, found 0"),
    ("--config.cascade.samples=-1", "cascade.samples: expected an integer >= 0 (0: greedy only), found -1"),
], ids=["bad_task_field", "negative_samples"])
def test_launch_reproduce_refuses_a_bad_field_without_a_traceback(tmp_path, flag, message):
    proc = subprocess.run(
        [sys.executable, "-m", "launch.reproduce", f"--workdir={tmp_path}", flag],
        cwd=REPO, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode != 0
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "task").exists()  # refused before any stage runs


def test_summary_over_runs_names_the_cpu_and_every_claim(quick_run):
    from corea_jax.parallel.machine import cpu_model
    from corea_jax.reproduction.report import claims
    from corea_jax.reproduction.summary import summarize_seeds

    _, report, _ = quick_run
    text = summarize_seeds({"seed0": report, "seed1": report})
    assert text.startswith(f"Mean [min, max] over 2 runs (seed0, seed1). CPU: {cpu_model()}.")
    for row in claims(report["systems"]):
        assert f"| {row['claim']} |" in text
    assert "| claim | min margin | run | holds in |" in text
    assert f"Protocol: {report['protocol']}." in text
    gain = 100 * (report["systems"]["RLCC-SLM"]["pass_at_1"] - report["systems"]["SFT-SLM"]["pass_at_1"])
    assert f"| RLCC-SLM | {gain:+.2f} | [{gain:+.2f}, {gain:+.2f}] | {gain:+.2f} |" in text  # two equal runs


def test_claim_margins_figure(quick_run, tmp_path):
    from corea_jax.reproduction.summary import plot_claim_margins

    _, report, _ = quick_run
    path = plot_claim_margins({"seed0": report, "seed1": report}, tmp_path / "margins.png")
    assert path.stat().st_size > 1000


def test_serving_what_the_quick_run_trained_with_replayed_feedback_and_a_refit(quick_run, tmp_path):
    """launch.reproduce, then the server on its workdir (configs/serve/reproduction.py), then the
    replayer with feedback: every answer labelled, live gauges fed, an automatic re-fit versioned."""
    from configs.serve import reproduction
    from corea_jax.serving import create_app, replay, traffic
    from tests.serving_helpers import InProcessServer, metric

    workdir, report, _ = quick_run
    config = reproduction.get_config(str(workdir))
    assert config.threshold.tau == report["systems"]["COREA"]["tau"]  # the paper's rule, as the report fitted it
    config.refit.every_labels, config.refit.min_items = 10, 10
    config.drift.reference = 10
    server = InProcessServer(create_app(config, tmp_path / "serve"))
    try:
        settings = replay.Settings(base_url=f"{server.url}/v1", rate=0.0, concurrency=4, scrape_every=10)
        summary = replay.replay(settings, traffic.plan(str(workdir / "task" / "test.jsonl"), 24, seed=0),
                                tmp_path / "replay")
        assert summary["ok"] == 24 and summary["feedback"] == {"200:recorded": 24}
        service = server.service
        assert service.threshold_info["version"] >= 2  # fits at 10 and 20 labels
        history = (tmp_path / "serve" / "threshold_history.jsonl").read_text().splitlines()
        assert [json.loads(line)["version"] for line in history] == list(range(1, len(history) + 1))
        text = urllib.request.urlopen(f"{server.url}/metrics", timeout=60).read().decode()
        assert metric(text, "corea_live_labels", source="feedback") + metric(text, "corea_live_labels",
                                                                            source="agreement") >= 20
        assert metric(text, "corea_threshold_version") == service.threshold_info["version"]
    finally:
        server.stop()
