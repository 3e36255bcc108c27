"""corea_jax.parallel.machine: the CPU's name, for reports and benchmark headers."""

from corea_jax.parallel import machine


def test_cpu_model_names_the_cores():
    name = machine.cpu_model()
    assert name.endswith(" cores") and not name.startswith(",")
