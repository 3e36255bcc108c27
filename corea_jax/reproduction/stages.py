"""Cached pipeline stages: each writes one directory of the run's workdir, once per input.

A stage's key is a hash of everything it depends on (its config fields and the keys of the
stages it reads), stored in `<stage>/stage.json`. A rerun with the same key skips the stage;
a changed config changes the keys of exactly the stages that read the changed fields, and
of those downstream of them. A stage builds into `.<stage>.partial/` and is renamed into
place when it finishes, so a killed run never leaves a stage that looks done (a partial
directory with the same key is kept, and the trainer resumes from its checkpoints).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable

from corea_jax.files import write_atomic

MARKER = "stage.json"


def plain(value):
    """ConfigDict / FieldReference -> JSON-able dicts and lists (what stage inputs hold)."""
    return json.loads(value.to_json_best_effort()) if hasattr(value, "to_json_best_effort") else value


def fingerprint(inputs: Any) -> str:
    """A short, stable hash of a JSON-able value (dict keys sorted)."""
    text = json.dumps(inputs, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclasses.dataclass(frozen=True)
class Stage:
    """A finished stage: its directory, its key, whether this run built it, its build seconds."""

    name: str
    path: Path
    key: str
    built: bool
    seconds: float


def read_marker(path: Path) -> dict | None:
    marker = path / MARKER
    if not marker.exists():
        return None
    try:
        return json.loads(marker.read_text())
    except json.JSONDecodeError:
        return None


def replace_directory(new: Path, dest: Path, old: Path) -> None:
    """Puts directory `new` in place of `dest` by renames (the previous `dest` parked at `old`,
    then deleted), so a reader finds the whole old or the whole new directory."""
    if dest.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(dest, old)
    os.replace(new, dest)
    shutil.rmtree(old, ignore_errors=True)


def run_stage(workdir: Path, name: str, inputs: dict, build: Callable[[Path], None], *,
              log: Callable[[str], None] = print) -> Stage:
    """Builds stage `name` into `workdir/name` with `build(directory)` unless it is there with
    the same inputs. Returns the Stage; its key feeds the inputs of the stages that read it."""
    key = fingerprint(inputs)
    out = workdir / name
    done = read_marker(out)
    if done is not None and done.get("key") == key:
        log(f"[{name}] cached ({out})")
        return Stage(name, out, key, built=False, seconds=float(done.get("seconds", 0.0)))
    partial = workdir / f".{name}.partial"
    started = read_marker(partial)
    if partial.exists() and (started is None or started.get("key") != key):
        shutil.rmtree(partial)
    partial.mkdir(parents=True, exist_ok=True)
    # Written first with "finished": false, so a killed build with the same key resumes here.
    (partial / MARKER).write_text(json.dumps({"key": key, "finished": False, "inputs": inputs}, indent=2,
                                             default=str) + "\n")
    log(f"[{name}] building ({'stale: inputs changed' if done is not None else 'new'})")
    t0 = time.perf_counter()
    build(partial)
    seconds = time.perf_counter() - t0
    marker = {"key": key, "finished": True, "seconds": seconds, "inputs": inputs}
    write_atomic(partial / MARKER, json.dumps(marker, indent=2, default=str) + "\n")
    replace_directory(partial, out, workdir / f".{name}.old")
    log(f"[{name}] done in {seconds:.1f} s")
    return Stage(name, out, key, built=True, seconds=seconds)
