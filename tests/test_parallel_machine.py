"""corea_jax.parallel.machine: the CPU's name and kind, and the XLA flags chosen per kind."""

import pytest

from corea_jax.parallel import machine


def test_cpu_model_names_the_cores():
    assert machine.cpu_model().endswith(" cores")
    assert machine.cpu_vendor() in ("intel", "amd", "other")


def test_intel_flags_are_added_to_the_users_flags():
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    added = machine.apply_cpu_xla_flags(env, vendor="intel")
    assert added == list(machine.CPU_XLA_FLAGS["intel"]) and added
    assert env["XLA_FLAGS"].split() == ["--xla_force_host_platform_device_count=8", *added]
    assert machine.apply_cpu_xla_flags(env, vendor="intel") == []  # idempotent


def test_a_flag_the_user_set_is_kept_and_off_adds_nothing():
    flag = machine.CPU_XLA_FLAGS["intel"][0].split("=", 1)[0]
    env = {"XLA_FLAGS": f"{flag}=dot"}
    assert machine.apply_cpu_xla_flags(env, vendor="intel") == []
    assert env["XLA_FLAGS"] == f"{flag}=dot"
    env = {machine.CPU_FLAGS_ENV: "off"}
    assert machine.apply_cpu_xla_flags(env, vendor="intel") == [] and "XLA_FLAGS" not in env
    assert machine.apply_cpu_xla_flags({}, vendor="amd") == []


def test_a_bad_setting_is_named():
    with pytest.raises(ValueError, match="COREA_CPU_XLA_FLAGS: expected 'on' or 'off'"):
        machine.apply_cpu_xla_flags({machine.CPU_FLAGS_ENV: "yes"}, vendor="intel")
