"""`DIR/records.jsonl`: one JSON line per (item, model), appended as answers finish.

Fields of a record:
  id, model ("slm" | "llm"), split ("calibration" | "test"), task, gold,
  response, answer (the extracted final answer or null), correct, format_ok,
  confidence {source: value in [0, 1] or null}, confidence_text (two-turn follow-up or null),
  prompt_tokens, generated_tokens, seconds, cost (under `cost_model`), cost_model,
  failed, error (null unless the call failed for good), hidden (probe features, SLM, optional).

The store is append-only: a later line for the same (id, model) supersedes an earlier one
(a failed call that succeeded on a later run). A line cut short by a kill is dropped on
the next open. `collect` answers only the items without a finished record, so a killed run
restarts where it stopped and never regenerates a finished item.

`DIR/fingerprint.json` holds, per model role, everything that changes that role's answers
(`evaluate.fingerprint`); `reconcile_fingerprints` refuses records made under another one.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Callable, Sequence

from tqdm.auto import tqdm

from corea_jax.cascade.datasets import Item
from corea_jax.files import write_atomic

MODELS = ("slm", "llm")
SPLITS = ("calibration", "test")
FINGERPRINT = "fingerprint.json"


_write_atomic = write_atomic


class RecordStore:
    """An append-only JSON-lines file of records, keyed by (id, model)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._records: dict[tuple[str, str], dict] = {}
        if self.path.exists():
            self._load()

    def _load(self) -> None:
        data = self.path.read_bytes()
        lines = data.split(b"\n")
        complete, torn = lines[:-1], lines[-1]
        if torn:  # a line cut short by a kill: drop it, atomically
            _write_atomic(self.path, b"".join(line + b"\n" for line in complete))
        for number, line in enumerate(complete, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{self.path}:{number}: not a JSON record ({err})") from None
            self._records[(record["id"], record["model"])] = record

    def records(self, model: str | None = None, split: str | None = None,
                include_failed: bool = False) -> list[dict]:
        """The latest record of every (id, model), in first-written order."""
        return [r for r in self._records.values()
                if (model is None or r["model"] == model) and (split is None or r["split"] == split)
                and (include_failed or not r.get("failed"))]

    def get(self, item_id: str, model: str) -> dict | None:
        return self._records.get((item_id, model))

    def done(self, item_id: str, model: str) -> bool:
        record = self._records.get((item_id, model))
        return record is not None and not record.get("failed")

    def drop(self, model: str) -> None:
        """Removes every record of `model` from the file (atomically) and from the store."""
        kept = [r for r in self._records.values() if r["model"] != model]
        _write_atomic(self.path, "".join(json.dumps(r, allow_nan=False) + "\n" for r in kept).encode())
        self._records = {(r["id"], r["model"]): r for r in kept}

    def append(self, records: Sequence[dict]) -> None:
        """Appends records and flushes them to disk before returning."""
        if not records:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write("".join(json.dumps(r, allow_nan=False) + "\n" for r in records))
            f.flush()
            os.fsync(f.fileno())
        for r in records:
            self._records[(r["id"], r["model"])] = r


def reconcile_fingerprints(path: str | os.PathLike, current: dict[str, dict], store: RecordStore,
                           overwrite: Sequence[str] = ()) -> list[str]:
    """Checks every role's records in `store` against its fingerprint now, then stores `current`.

    current: role -> {config field path: value} (`evaluate.fingerprint`).
    A role with records whose stored fingerprint differs is refused with a ValueError naming each
    differing field, unless the role is in `overwrite`: then its records are dropped, to be
    regenerated (an unchanged role keeps its records, so a killed overwrite run resumes). A role
    without records, or a workdir from before fingerprints, takes the current fingerprint.
    Returns the roles whose records were dropped.
    """
    path = Path(path)
    current = json.loads(json.dumps(current))  # tuples -> lists, as they read back
    stored = json.loads(path.read_text()) if path.exists() else {}
    changed = [role for role, now in current.items()
               if stored.get(role) not in (None, now) and store.records(role, include_failed=True)]
    dropped = [role for role in changed if role in overwrite]
    refused = [role for role in changed if role not in overwrite]
    if refused:
        absent = "<absent>"
        lines = {}  # field -> line; a data field shared by both roles is named once
        for role in refused:
            before, now = stored[role], current[role]
            for field in sorted(set(before) | set(now)):
                if before.get(field, absent) != now.get(field, absent):
                    lines[field] = (f"{field}: {before.get(field, absent)!r} in the workdir, "
                                    f"{now.get(field, absent)!r} now")
        names = " and ".join(refused)
        raise ValueError(
            f"{path.parent}: its {names} records were made with another setup; scoring them under "
            "this config would mix two models:\n  " + "\n  ".join(lines.values()) +
            f"\nUse a new workdir, restore these values, or pass --config.overwrite={','.join(refused)} "
            f"to regenerate the {names} records (the other role's records are kept).")
    for role in dropped:
        store.drop(role)
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(path, (json.dumps({**stored, **current}, indent=2, sort_keys=True) + "\n").encode())
    return dropped


def make_record(item: Item, answer, *, model: str, split: str, cost: float | None,
                cost_model: str) -> dict:
    """The records.jsonl line of `answer` (a backends.Answer) to `item`."""
    if model not in MODELS:
        raise ValueError(f"model: expected one of {MODELS}, found {model!r}")
    if split not in SPLITS:
        raise ValueError(f"split: expected one of {SPLITS}, found {split!r}")
    fields = dataclasses.asdict(answer)
    hidden = fields.pop("hidden")
    record = dict(id=item.id, model=model, split=split, task=item.task, gold=item.gold, **fields,
                  cost=cost, cost_model=cost_model)
    if hidden is not None:
        record["hidden"] = [round(float(x), 5) for x in hidden]
    return record


def collect(backend, items: Sequence[Item], store: RecordStore, *, model: str, split: str,
            cost_fn: Callable[[dict], float | None] | None = None, cost_model: str = "flops",
            progress: bool = True) -> list[dict]:
    """Answers the items of `items` without a finished record and appends each batch as it ends.

    backend: anything with `answer(items) -> list[Answer]` and `batch_size`.
    cost_fn: record -> its cost (`costs.cost_function`); None leaves `cost` null.
    Returns the records of all `items` (earlier ones included), failed ones included.
    """
    todo = [item for item in items if not store.done(item.id, model)]
    batch = max(1, int(getattr(backend, "batch_size", 1)))
    desc = f"{model} {split} ({getattr(backend, 'name', model)})"
    with tqdm(total=len(items), initial=len(items) - len(todo), desc=desc, unit="item",
              disable=not progress) as bar:
        for start in range(0, len(todo), batch):
            chunk = todo[start:start + batch]
            answers = backend.answer(chunk)
            if len(answers) != len(chunk):
                raise RuntimeError(f"{desc}: backend returned {len(answers)} answers for {len(chunk)} items")
            records = []
            for item, answer in zip(chunk, answers):
                record = make_record(item, answer, model=model, split=split, cost=None,
                                     cost_model=cost_model)
                if cost_fn is not None and not answer.failed:
                    record["cost"] = cost_fn(record)
                records.append(record)
            store.append(records)
            bar.update(len(chunk))
    return [store.get(item.id, model) for item in items]
