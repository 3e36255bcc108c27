"""Test-wide settings. They must run before jax is imported anywhere.

Tests that read fetched real weights carry `@pytest.mark.real_model`, so
`pytest -m "not real_model"` runs offline with nothing downloaded; they count as `slow` too, so the
default fast loop (`pytest -q`, pytest.ini: `-m "not slow"`) downloads nothing. `fetch.fetch_model` and
`fetch.fetch_gguf` of a registry model fail any test without the marker (module-scoped
fixtures included: they run inside the first test that asks for them).
"""

import os

import pytest

# 8 fake CPU devices so sharding tests run on one machine.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

_RUNNING: list = [None]  # the test item whose setup, call or teardown is running


def pytest_collection_modifyitems(config, items):
    """A test that reads fetched real weights is slow too (a download on first use, large models)."""
    for item in items:
        if item.get_closest_marker("real_model") is not None and item.get_closest_marker("slow") is None:
            item.add_marker(pytest.mark.slow)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    _RUNNING[0] = item
    try:
        yield
    finally:
        _RUNNING[0] = None


def _require_real_model_marker(fetch_fn, real_names):
    def guarded(name, *args, **kwargs):
        item = _RUNNING[0]
        if name in real_names and item is not None and item.get_closest_marker("real_model") is None:
            pytest.fail(f"{item.nodeid} reads the fetched weights of {name!r} ({fetch_fn.__name__}) "
                        "but is not marked @pytest.mark.real_model", pytrace=False)
        return fetch_fn(name, *args, **kwargs)

    guarded.__wrapped__ = fetch_fn
    return guarded


@pytest.fixture(scope="session", autouse=True)
def _fetch_needs_the_real_model_marker():
    from corea_jax.models import fetch

    real_names = frozenset(fetch.REGISTRY)
    originals = fetch.fetch_model, fetch.fetch_gguf
    fetch.fetch_model, fetch.fetch_gguf = (_require_real_model_marker(f, real_names) for f in originals)
    yield
    fetch.fetch_model, fetch.fetch_gguf = originals
