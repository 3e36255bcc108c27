"""(question, gold answer) records from any `datasets` source, and the step-indexed iterator.

A source is "arithmetic" (a small generated set, no download), a local .jsonl / .json /
.parquet / .csv file, or a hub dataset name. Config fields (a `data` ConfigDict):

  source          "arithmetic", a file path, or a hub name ("openai/gsm8k")
  subset, split   hub configuration name and split ("train")
  question_field  column holding the question  ("question")
  answer_field    column holding the gold answer ("answer")
  limit           keep the first `limit` records (0: all)
  arithmetic      {num_records, max_operand, addend, seed} for source == "arithmetic"

The iterator has no state of its own: the records of step s are a function of (seed, s),
so a resumed run reads exactly the records an uninterrupted run would have.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

_FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


@dataclasses.dataclass(frozen=True)
class Record:
    """One training example: the question text and its gold answer (as the grader reads it)."""

    question: str
    answer: str


def arithmetic_records(num_records: int, max_operand: int, seed: int, addend: int = -1) -> list[Record]:
    """`num_records` questions "a+b" with 0 <= a <= max_operand; the gold is the sum.

    b is uniform in [0, max_operand] when `addend` is -1. Otherwise the question is
    "addend+a": every answer is equally frequent, and the answer depends on the question's
    last token alone (the easiest thing for a tiny model to learn from rewards).
    """
    if max_operand < 0 or max_operand > 9:
        raise ValueError(f"data.arithmetic.max_operand: expected an integer in [0, 9], found {max_operand}")
    if not -1 <= addend <= 9:
        raise ValueError(f"data.arithmetic.addend: expected -1 (random) or a digit, found {addend}")
    rng = np.random.default_rng(seed)
    a = rng.integers(0, max_operand + 1, size=num_records)
    b = rng.integers(0, max_operand + 1, size=num_records) if addend < 0 else np.full(num_records, addend)
    if addend >= 0:
        return [Record(f"{addend}+{x}", str(x + addend)) for x in a]
    return [Record(f"{x}+{y}", str(x + y)) for x, y in zip(a, b)]


def _is_local(source: str) -> bool:
    return Path(source).suffix in _FILE_BUILDERS or Path(source).exists()


def validate_data_config(data: Any) -> None:
    """Checks what can be checked without reading the data; ValueError naming the field."""
    if not isinstance(data.source, str) or not data.source:
        raise ValueError(f"config.data.source: expected 'arithmetic', a file path or a hub name, "
                         f"found {data.source!r}")
    if data.limit < 0:
        raise ValueError(f"config.data.limit: expected an integer >= 0 (0 = all), found {data.limit}")
    if data.source == "arithmetic":
        if data.arithmetic.num_records < 1:
            raise ValueError("config.data.arithmetic.num_records: expected an integer >= 1, "
                             f"found {data.arithmetic.num_records}")
        if not 0 <= data.arithmetic.max_operand <= 9:
            raise ValueError("config.data.arithmetic.max_operand: expected an integer in [0, 9], "
                             f"found {data.arithmetic.max_operand}")
        if not -1 <= data.arithmetic.addend <= 9:
            raise ValueError("config.data.arithmetic.addend: expected -1 (random) or a digit 0-9, "
                             f"found {data.arithmetic.addend}")
    elif _is_local(data.source):
        path = Path(data.source)
        if not path.exists():
            raise FileNotFoundError(f"config.data.source: file {str(path)!r} does not exist")
        if path.is_file() and path.suffix not in _FILE_BUILDERS:
            raise ValueError(f"config.data.source: expected a file ending in {sorted(_FILE_BUILDERS)}, "
                             f"found {path.name!r}")


def load_records(data: Any) -> list[Record]:
    """The records described by a `data` config (see the module docstring).

    Raises ValueError naming the missing column and the ones present when the source has
    no `question_field` / `answer_field`, and when no record is left.
    """
    validate_data_config(data)
    if data.source == "arithmetic":
        a = data.arithmetic
        records = arithmetic_records(a.num_records, a.max_operand, a.seed, a.addend)
    else:
        import datasets

        if _is_local(data.source):
            path = Path(data.source)
            builder = _FILE_BUILDERS.get(path.suffix, "json")
            files = str(path) if path.is_file() else sorted(str(p) for p in path.glob("*.jsonl"))
            dataset = datasets.load_dataset(builder, data_files=files, split="train")
        else:
            dataset = datasets.load_dataset(data.source, data.subset or None, split=data.split)
        columns = list(dataset.column_names)
        for field in ("question_field", "answer_field"):
            column = data[field]
            if column not in columns:
                raise ValueError(f"config.data.{field}: column {column!r} is not in {data.source!r}; "
                                 f"its columns are {columns}")
        if data.limit:
            dataset = dataset.select(range(min(data.limit, len(dataset))))
        records = [Record(str(q), str(a)) for q, a in
                   zip(dataset[data.question_field], dataset[data.answer_field])]
    if data.limit:
        records = records[:data.limit]
    if not records:
        raise ValueError(f"config.data.source: {data.source!r} holds no records")
    return records


def step_indices(num_records: int, step: int, batch_size: int, seed: int) -> np.ndarray:
    """Record indices [batch_size] of training step `step` (0-based).

    Records are read in a fresh permutation each epoch (seeded by (seed, epoch)); the
    position in the stream is `step * batch_size`, so no iterator state needs saving.
    """
    start = step * batch_size
    positions = np.arange(start, start + batch_size)
    epochs, offsets = np.divmod(positions, num_records)
    out = np.empty(batch_size, np.int64)
    for epoch in np.unique(epochs):
        order = np.random.default_rng([seed, int(epoch)]).permutation(num_records)
        hit = epochs == epoch
        out[hit] = order[offsets[hit]]
    return out
