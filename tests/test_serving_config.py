"""The server's settings: every shipped serve config validates, and a bad or unknown field is
refused before any model loads, naming the field and what it expects."""

from __future__ import annotations

import importlib

import pytest

from corea_jax.serving import config as serving_config


@pytest.mark.parametrize("name", ["configs.serve.tiny", "configs.serve.qwen_coder_cpu",
                                  "configs.paper.serve_qwen25_7b_32b"])
def test_every_serve_config_is_valid(name):
    serving_config.validate(importlib.import_module(name).get_config())


@pytest.mark.parametrize("field, value, message", [
    ("threshold.tau", float("nan"), "threshold.tau: expected a number in [0, 1]"),
    ("threshold.tau", 1.5, "threshold.tau: expected a number in [0, 1]"),
    ("on_llm_failure", "retry", "on_llm_failure: expected one of ('degraded', 'error')"),
    ("conversation", "keep", "conversation: expected one of ('pass', 'refuse')"),
    ("shadow_rate", 2.0, "shadow_rate: expected a number in [0, 1]"),
    ("slm.slots", 0, "slm.slots: expected an integer >= 1"),
    ("limits.max_queued", -1, "limits.max_queued: expected an integer >= 0"),
    ("limits.body_timeout_s", 0.0, "limits.body_timeout_s: expected a number > 0"),
    ("limits.queue_full_status", 500, "limits.queue_full_status: expected one of (429, 503)"),
    ("limits.max_tokens_policy", "truncate", "limits.max_tokens_policy: expected one of ('refuse', 'clamp')"),
    ("confidence_source", "vibes", "confidence_source: expected one of"),
])
def test_a_bad_value_is_refused_naming_the_field(field, value, message):
    config = serving_config.defaults()
    *path, last = field.split(".")
    target = config
    for part in path:
        target = target[part]
    with target.ignore_type():
        target[last] = value
    with pytest.raises(ValueError) as err:
        serving_config.validate(config)
    assert str(err.value).startswith(message), str(err.value)


def test_an_unknown_field_is_refused_with_the_closest_known_one():
    config = serving_config.defaults()
    config.limits.max_queue = 4  # a typo of max_queued
    with pytest.raises(ValueError, match=r"config.limits.max_queue: unknown config field .*did you mean "
                                         r"config.limits.max_queued\?"):
        serving_config.validate(config)


def test_the_reproduction_config_serves_a_reproduce_workdir(tmp_path):
    import json

    from configs.serve import reproduction
    from corea_jax.serving import config as serving_config

    config = reproduction.get_config(str(tmp_path))
    serving_config.validate(config)
    assert config.slm.name == str(tmp_path / "slm_rlcc" / "hf") and config.llm.name == str(tmp_path / "llm_sft" / "hf")
    assert (config.slm.prompt, config.confidence_source, config.task) == ("question", "verbal", "gsm8k")
    assert config.threshold.tau == reproduction.PAPER_TAU  # no report yet
    (tmp_path / "report.json").write_text(json.dumps({"systems": {"COREA": {"tau": 0.9}}}))
    assert reproduction.get_config(str(tmp_path)).threshold.tau == 0.9
    assert reproduction.get_config().slm.name == "runs/corea/slm_rlcc/hf"
