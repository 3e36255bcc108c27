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
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Callable, Sequence

from tqdm.auto import tqdm

from corea_jax.cascade.datasets import Item

MODELS = ("slm", "llm")
SPLITS = ("calibration", "test")


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
            tmp = self.path.with_suffix(".jsonl.tmp")
            tmp.write_bytes(b"".join(line + b"\n" for line in complete))
            os.replace(tmp, self.path)
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
