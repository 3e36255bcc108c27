"""The checks every job's config module (`rl.config`, `cascade.config`, `serving.config`) runs on
its settings: unknown fields refused with the closest known one, and each value checked once,
where the job's config is validated, with an error naming the field and what it expects."""

from __future__ import annotations

import difflib

import ml_collections


def check_fields(config, reference, path: str = "config", *, free: tuple[str, ...] = ()) -> None:
    """Refuses a field of `config` that `reference` (the job's defaults()) lacks, recursively;
    groups named in `free` may hold any fields (e.g. a mesh's axes)."""
    for key in config.keys():
        name = f"{path}.{key}"
        if key not in reference:
            close = difflib.get_close_matches(key, list(reference.keys()), n=1)
            hint = f"; did you mean {path}.{close[0]}?" if close else ""
            raise ValueError(f"{name}: unknown config field (known fields of {path}: "
                             f"{sorted(reference.keys())}){hint}")
        value, ref = config[key], reference[key]
        if isinstance(ref, ml_collections.ConfigDict):
            if not isinstance(value, ml_collections.ConfigDict):
                raise ValueError(f"{name}: expected a group of fields {sorted(ref.keys())}, found {value!r}")
            if key not in free:
                check_fields(value, ref, name, free=free)


def expect(ok: bool, field: str, expected: str, found) -> None:
    """ValueError "<field>: expected <expected>, found <found>" unless `ok`."""
    if not ok:
        raise ValueError(f"{field}: expected {expected}, found {found!r}")


def is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def check_int(value, field: str, low: int) -> None:
    expect(is_int(value) and value >= low, field, f"an integer >= {low}", value)


def check_choice(value, field: str, choices) -> None:
    expect(value in tuple(choices), field, f"one of {tuple(choices)}", value)
