"""corea_jax.parallel.machine: the CPU's name, for reports and benchmark headers."""

import logging

import pytest

from corea_jax.parallel import machine


def test_cpu_model_names_the_cores():
    name = machine.cpu_model()
    assert name.endswith(" cores") and not name.startswith(",")


def test_fastest_dtype_on_cpu_is_measured_and_named():
    choice = machine.fastest_dtype()
    assert choice.dtype in ("float32", "bfloat16")
    assert machine.cpu_model() in choice.reason
    assert "GFLOP/s in float32" in choice.reason and "in bfloat16" in choice.reason
    assert machine.fastest_dtype() is choice  # decided once per process


@pytest.mark.parametrize("fp32, bf16, expected", [(100.0, 60.0, "float32"), (100.0, 115.0, "float32"),
                                                  (100.0, 125.0, "bfloat16")])
def test_cpu_picks_bfloat16_only_with_a_clear_margin(monkeypatch, fp32, bf16, expected):
    import jax.numpy as jnp

    speeds = {jnp.float32: fp32, jnp.bfloat16: bf16}
    monkeypatch.setattr(machine, "_matmul_gflops", lambda dtype: speeds[dtype])
    machine.fastest_dtype.cache_clear()
    try:
        assert machine.fastest_dtype().dtype == expected
    finally:
        machine.fastest_dtype.cache_clear()


def test_resolve_dtype_passes_names_through_and_logs_auto(caplog):
    assert machine.resolve_dtype("bfloat16") == "bfloat16"
    machine._log_choice.cache_clear()
    with caplog.at_level(logging.INFO, logger="absl"):
        picked = machine.resolve_dtype("auto")
    assert picked == machine.fastest_dtype().dtype
    assert f"dtype auto -> {picked}" in caplog.text
