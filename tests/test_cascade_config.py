"""The cascade job's settings: defaults, resolve (missing fields from the defaults) and validate."""

import re

import ml_collections
import pytest

from corea_jax.cascade import config as cascade_config


def test_the_shipped_configs_are_the_defaults_with_their_changes_and_validate():
    import importlib

    for name in ("configs.cascade.qwen_coder_gsm8k_cpu", "configs.cascade.small_cpu", "configs.cascade.tiny",
                 "configs.paper.cascade_qwen25_7b_32b"):
        config = importlib.import_module(name).get_config()
        resolved = cascade_config.resolve(config)
        assert resolved.to_dict() == config.to_dict(), name  # complete already: resolve adds nothing
        cascade_config.validate(resolved)


def test_resolve_completes_a_partial_config_from_the_defaults():
    partial = ml_collections.ConfigDict(dict(slm=dict(name="smollm2-135m-instruct"),
                                             data=dict(test=dict(source="math500", limit=5)),
                                             threshold=dict(rule="fixed", fixed_tau=0.25)))
    config = cascade_config.resolve(partial)
    defaults = cascade_config.defaults()
    assert config.slm.name == "smollm2-135m-instruct"
    assert config.slm.lm_head_params == cascade_config.LM_HEAD_PARAMS["smollm2-135m-instruct"]  # from its name
    assert config.slm.max_new_tokens == defaults.slm.max_new_tokens
    assert config.llm.to_dict() == defaults.llm.to_dict()
    assert (config.data.test.source, config.data.test.limit, config.data.test.split) == ("math500", 5, "test")
    # the earlier name of the fixed rule's tau sets the one name
    assert config.threshold.tau == 0.25 and config.threshold.fixed_tau == 0.25
    cascade_config.validate(config)


def test_fixed_tau_and_tau_are_one_setting():
    config = cascade_config.defaults()
    config.threshold.fixed_tau = 0.4
    assert config.threshold.tau == 0.4
    config.threshold.tau = 0.6
    assert config.threshold.fixed_tau == 0.6


def test_an_unknown_field_is_refused_with_the_closest_known_one():
    partial = ml_collections.ConfigDict(dict(slm=dict(max_new_token=10)))
    with pytest.raises(ValueError, match=r"config.slm.max_new_token: unknown config field.*config.slm.max_new_tokens"):
        cascade_config.resolve(partial)


@pytest.mark.parametrize("field, value, message", [
    ("llm_on", "some", "llm_on: expected one of ('all', 'deferred')"),
    ("chunk_size", 0, "chunk_size: expected an integer >= 1"),
    ("cost_model", "tokens", "cost_model: expected one of ('flops', 'price', 'time')"),
    ("slm.schedule", "eager", "slm.schedule: expected one of"),
    ("llm.backend", "grpc", "llm.backend: expected one of ('local', 'http')"),
    ("llm.max_new_tokens", 0, "llm.max_new_tokens: expected an integer >= 1"),
    ("threshold.tau", 1.5, "threshold.tau: expected a number in [0, 1]"),
    ("threshold.rule", "median", "threshold.rule: expected one of"),
    ("overwrite", "both", "overwrite: expected '', 'slm', 'llm' or 'slm,llm'"),
])
def test_validate_names_the_field_and_what_it_expects(field, value, message):
    config = cascade_config.defaults()
    *groups, key = field.split(".")
    target = config
    for group in groups:
        target = target[group]
    with config.unlocked():
        target[key] = value
    with pytest.raises(ValueError, match=re.escape(message)):
        cascade_config.validate(config)
