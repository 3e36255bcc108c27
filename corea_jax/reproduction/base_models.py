"""The reproduction's shipped base models: the SFT SLM and the LLM, as the paper starts from
released checkpoints and trains only the SLM with RL.

  corea_jax/reproduction/base_models/
    manifest.json   the recipe that produced them (the config fields below), their greedy
                    test accuracy by operand length, and a hash of every file
    slm/, llm/      HF directories (config, safetensors weights, tokenizer)

`--config.from_scratch=True` rebuilds both with the same stages (task, tokenizer, init, SFT)
instead; `export` writes a from-scratch run's base models here. The default run copies the
shipped directories into its `slm_sft` / `llm_sft` stages, so everything downstream (RL,
cascade, report) is the same code either way. Float rounding differs between CPUs, so a
from-scratch LLM can land elsewhere on another machine; the shipped weights are the same
bytes everywhere.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from corea_jax.reproduction.stages import plain, replace_directory

SHIPPED = Path(__file__).parent / "base_models"
MANIFEST = "manifest.json"
ROLES = ("slm", "llm")
# The config fields that decide the base models (everything upstream of RL).
RECIPE_FIELDS = ("base_seed", "task", "tokenizer", "slm", "llm", "sft") + tuple(
    f"{role}_sft_{field}" for role in ("slm", "llm") for field in ("steps", "learning_rate", "confidences", "batch", "digit_shares"))


def recipe(config) -> dict:
    """The JSON-able recipe of the base models under `config` (tuples as lists)."""
    return json.loads(json.dumps({field: plain(config[field]) for field in RECIPE_FIELDS}))


def _first_difference(expected, found, path: str) -> str | None:
    if isinstance(expected, dict) and isinstance(found, dict):
        for key in sorted(set(expected) | set(found)):
            diff = _first_difference(expected.get(key), found.get(key), f"{path}.{key}")
            if diff:
                return diff
        return None
    if expected != found:
        return f"{path}: the shipped base models were built with {expected!r}, found {found!r}"
    return None


def _file_hashes(directory: Path) -> dict[str, str]:
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file() and p.name != MANIFEST}


def load_manifest(directory: Path = SHIPPED) -> dict:
    """The shipped manifest, with every file checked against its hash."""
    path = Path(directory) / MANIFEST
    if not path.exists():
        raise ValueError(f"config.from_scratch: no shipped base models at {directory} (expected {MANIFEST}); "
                         "set --config.from_scratch=True to train them")
    manifest = json.loads(path.read_text())
    hashes = _file_hashes(Path(directory))
    if hashes != manifest["files"]:
        changed = sorted(set(hashes.items()) ^ set(manifest["files"].items()))
        raise ValueError(f"{directory}: files differ from {MANIFEST} ({changed[0][0]} and "
                         f"{len(changed) - 1} more); reinstall the package or set --config.from_scratch=True")
    return manifest


def check_recipe(config, manifest: dict) -> None:
    """Refuses a config whose base-model recipe is not the shipped one, naming the field."""
    diff = _first_difference(manifest["recipe"], recipe(config), "config")
    if diff:
        raise ValueError(f"{diff}; set --config.from_scratch=True to train base models with this recipe")


def install(role: str, out: Path, directory: Path = SHIPPED) -> None:
    """Copies the shipped `role` model into `out/hf` (a stage directory)."""
    shutil.copytree(Path(directory) / role, Path(out) / "hf")


def correct_bits(records_path: Path, model: str, split: str = "test") -> str:
    """`model`'s greedy correctness on `split` as a string of 0/1, item i at position i."""
    bits: dict[int, str] = {}
    with Path(records_path).open() as f:
        for line in f:
            r = json.loads(line)
            if r["model"] == model and r["split"] == split:
                bits[int(r["id"].rsplit("/", 1)[1])] = "1" if r["correct"] else "0"
    return "".join(bits[i] for i in range(len(bits)))


def accuracy_by_digits(bits: str, task_dir: Path, split: str = "test") -> dict:
    """Pass@1 of per-item correctness `bits` on `split`, overall and by operand length."""
    with (Path(task_dir) / f"{split}.jsonl").open() as f:
        digits = [json.loads(line)["digits"] for line in f]
    by_digits: dict[str, list[bool]] = {}
    for bit, d in zip(bits, digits):
        by_digits.setdefault(f"{d}_digit", []).append(bit == "1")
    return {"all": bits.count("1") / len(bits), **{k: sum(v) / len(v) for k, v in sorted(by_digits.items())}}


def export(config, model_dirs: dict[str, Path], test_correct: dict[str, str], task_dir: Path,
           stage_seconds: dict[str, float], dest: Path = SHIPPED, cpu: str = "") -> dict:
    """Writes `model_dirs` (role -> HF dir) to `dest` with the manifest (recipe, greedy test
    correctness per item and accuracy by operand length, SFT seconds, CPU, file hashes);
    atomic (a sibling directory renamed into place)."""
    dest = Path(dest)
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for role in ROLES:
        shutil.copytree(model_dirs[role], tmp / role)
    accuracy = {role: accuracy_by_digits(bits, task_dir) for role, bits in test_correct.items()}
    manifest = {"recipe": recipe(config), "test_accuracy": accuracy, "test_correct": test_correct,
                "sft_seconds": stage_seconds,
                "cpu": cpu, "files": _file_hashes(tmp)}
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    replace_directory(tmp, dest, dest.with_name(dest.name + ".old"))
    return manifest
