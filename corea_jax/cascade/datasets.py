"""Evaluation items: every data set normalized to one record (id, question, gold, task, choices).

A source is a known name (`SOURCES`) or a local .jsonl / .json / .parquet / .csv file; both
go through `datasets`. Known names read the copy in ../shared/data/ when there is one
(GSM8K, MATH500), else the hub. Hub sets and their columns:

  gsm8k          openai/gsm8k (main)           question, answer ("... #### n")      task gsm8k
  math500        HuggingFaceH4/MATH-500        problem, answer                      task math
  deepmath       zwhe99/DeepMath-103K          question, final_answer               task math
  olympiadbench  Hothan/OlympiadBench          question, final_answer (a list)      task math
                 (OE_TO_maths_en_COMP: text-only English competition maths)
  gpqa           Idavidrein/gpqa (gpqa_diamond) Question, Correct Answer,
                                                Incorrect Answer 1..3               task choice
  commonsenseqa  tau/commonsense_qa            question, choices {label, text},
                                                answerKey                           task choice

DeepMath has one split; the paper's DeepMath16K (train) and DeepMath500 (test) are drawn from
it by `deepmath_split`: a seeded permutation of the rows, the first 500 are the test set, the
next 16,000 the training set. GPQA's correct answer is always its first column; the options are
shuffled per item by a seeded rule (seed, item index) so the gold letter is uniform.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np


def shared_data_dir() -> Path:
    """../shared/data beside the repository, or $COREA_SHARED_DATA when set (a git worktree)."""
    return Path(os.environ.get("COREA_SHARED_DATA",
                               Path(__file__).resolve().parents[3] / "shared" / "data"))

_FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
CHOICE_LETTERS = "ABCDE"
DEEPMATH_TEST, DEEPMATH_TRAIN = 500, 16_000


@dataclasses.dataclass(frozen=True)
class Item:
    """One evaluation question.

    id: unique across every split of a run ("gsm8k/test/17").
    gold: what `grading.grade` compares with (a number, LaTeX, or an option letter).
    task: the grading task ("gsm8k", "math", "choice").
    choices: the option texts of a multiple-choice question (A, B, ... in order), else None.
    """

    id: str
    question: str
    gold: str
    task: str
    choices: tuple[str, ...] | None = None


@dataclasses.dataclass(frozen=True)
class _Source:
    hub: str
    subset: str | None
    task: str
    question: str
    answer: str
    local: dict[str, str] = dataclasses.field(default_factory=dict)  # split -> file under shared_data_dir()
    splits: tuple[str, ...] = ("train", "test")


SOURCES: dict[str, _Source] = {
    "gsm8k": _Source("openai/gsm8k", "main", "gsm8k", "question", "answer",
                     {"train": "gsm8k/train.jsonl", "test": "gsm8k/test.jsonl"}),
    "math500": _Source("HuggingFaceH4/MATH-500", None, "math", "problem", "answer",
                       {"test": "math500/test.jsonl"}, splits=("test",)),
    "deepmath": _Source("zwhe99/DeepMath-103K", None, "math", "question", "final_answer"),
    "olympiadbench": _Source("Hothan/OlympiadBench", "OE_TO_maths_en_COMP", "math", "question",
                             "final_answer", splits=("test",)),
    "gpqa": _Source("Idavidrein/gpqa", "gpqa_diamond", "choice", "Question", "Correct Answer",
                    splits=("test",)),
    "commonsenseqa": _Source("tau/commonsense_qa", None, "choice", "question", "answerKey",
                             splits=("train", "validation")),
}
_HUB_SPLIT = {"deepmath": "train", "olympiadbench": "train", "gpqa": "train"}


def _is_file(source: str) -> bool:
    return Path(source).suffix in _FILE_BUILDERS


def _read_file(path: str):
    import datasets

    if not Path(path).exists():
        raise FileNotFoundError(f"source: no file {path!r}")
    return datasets.load_dataset(_FILE_BUILDERS[Path(path).suffix], data_files=str(path),
                                 split="train")


def _require_columns(rows, columns: dict[str, str], where: str) -> None:
    for field, column in columns.items():
        if column not in rows.column_names:
            raise ValueError(f"{field}: column {column!r} not in {where} "
                             f"(columns present: {rows.column_names})")


def deepmath_split(num_rows: int, split: str, seed: int = 0) -> np.ndarray:
    """Row indices of the paper's DeepMath500 ("test") or DeepMath16K ("train") split.

    A permutation of range(num_rows) by `np.random.default_rng(seed)`; the first 500 rows
    are the test set, the next 16,000 the training set (disjoint by construction).
    """
    order = np.random.default_rng(seed).permutation(num_rows)
    if split == "test":
        return np.sort(order[:DEEPMATH_TEST])
    if split == "train":
        return np.sort(order[DEEPMATH_TEST:DEEPMATH_TEST + DEEPMATH_TRAIN])
    raise ValueError(f"split: expected 'train' or 'test' for deepmath, found {split!r}")


def _gold_text(value: Any) -> str:
    if isinstance(value, (list, tuple)):  # OlympiadBench: a list of final answers
        value = value[0] if len(value) == 1 else ", ".join(map(str, value))
    return str(value).strip().strip("$").strip()


def _gpqa_items(rows, name: str, split: str, seed: int) -> list[Item]:
    wrong = [f"Incorrect Answer {k}" for k in (1, 2, 3)]
    _require_columns(rows, {"question_field": "Question", "answer_field": "Correct Answer",
                            **{f"choices[{k}]": c for k, c in enumerate(wrong, 1)}}, name)
    items = []
    for i, row in enumerate(rows):
        options = [row["Correct Answer"], *(row[c] for c in wrong)]
        order = np.random.default_rng([seed, i]).permutation(len(options))
        choices = tuple(str(options[k]).strip() for k in order)
        gold = CHOICE_LETTERS[int(np.flatnonzero(order == 0)[0])]
        items.append(Item(f"{name}/{split}/{i}", str(row["Question"]).strip(), gold, "choice", choices))
    return items


def _commonsenseqa_items(rows, name: str, split: str) -> list[Item]:
    _require_columns(rows, {"question_field": "question", "answer_field": "answerKey",
                            "choices_field": "choices"}, name)
    items = []
    for i, row in enumerate(rows):
        if not row["answerKey"]:
            raise ValueError(f"split: {name} split {split!r} has no answers (answerKey is empty); "
                             "use 'train' or 'validation'")
        labels, texts = row["choices"]["label"], row["choices"]["text"]
        choices = tuple(str(t) for _, t in sorted(zip(labels, texts)))
        items.append(Item(f"{name}/{split}/{row.get('id', i)}", str(row["question"]).strip(),
                          str(row["answerKey"]).strip(), "choice", choices))
    return items


def load_items(source: str, *, split: str = "test", limit: int = 0, offset: int = 0, seed: int = 0,
               question_field: str | None = None, answer_field: str | None = None,
               choices_field: str | None = None, task: str | None = None,
               name: str | None = None, data_file: str | None = None) -> list[Item]:
    """Items of `source`, normalized; the first `limit` (0: all) after skipping `offset`.

    Args:
      source: a name in `SOURCES`, or a local .jsonl/.json/.parquet/.csv file.
      split: which split of a named source ("train", "test", ...); ignored for a file.
      seed: the seed of DeepMath's split and of GPQA's option order.
      question_field, answer_field: the columns of a local file (default "question" / "answer"),
        or of a named source read from `data_file`.
      choices_field: a local file's column holding a list of option texts (multiple choice;
        the answer column is then the letter).
      task: grading task of a local file ("gsm8k", "math", "choice"; default "math", or
        "choice" when choices_field is given).
      name: the id prefix (default: the source name or the file's stem).
      data_file: read a named source from this local file (with its hub column names) instead
        of ../shared/data or the hub; how the tests exercise hub-only sets.
    """
    if limit < 0 or offset < 0:
        raise ValueError(f"limit, offset: expected integers >= 0, found limit={limit}, offset={offset}")
    if source in SOURCES:
        items = _named_items(source, split, seed, name or source, data_file)
    elif _is_file(source):
        items = _file_items(source, question_field or "question", answer_field or "answer",
                            choices_field, task, name or Path(source).stem)
    else:
        raise ValueError(f"source: unknown data set {source!r}; known names: {sorted(SOURCES)}, "
                         f"or a local file ending in one of {sorted(_FILE_BUILDERS)}")
    items = items[offset:]
    return items[:limit] if limit else items


def _named_items(source: str, split: str, seed: int, name: str, data_file: str | None) -> list[Item]:
    spec = SOURCES[source]
    if split not in spec.splits:
        raise ValueError(f"split: {source} has splits {spec.splits}, found {split!r}")
    if data_file is not None:
        rows = _read_file(data_file)
    elif split in spec.local and (shared_data_dir() / spec.local[split]).exists():
        rows = _read_file(str(shared_data_dir() / spec.local[split]))
    else:
        import datasets

        rows = datasets.load_dataset(spec.hub, spec.subset, split=_HUB_SPLIT.get(source, split))
    if source == "deepmath":
        rows = rows.select(deepmath_split(len(rows), split, seed))
    where = data_file or source
    if source == "gpqa":
        return _gpqa_items(rows, name, split, seed)
    if source == "commonsenseqa":
        return _commonsenseqa_items(rows, name, split)
    _require_columns(rows, {"question_field": spec.question, "answer_field": spec.answer}, where)
    if source == "olympiadbench" and "modality" in rows.column_names:
        rows = rows.filter(lambda r: "image" not in str(r["modality"]).lower()
                           and "<image" not in r[spec.question])
    return [Item(f"{name}/{split}/{i}", str(row[spec.question]).strip(), _gold_text(row[spec.answer]),
                 spec.task) for i, row in enumerate(rows)]


def _file_items(path: str, question: str, answer: str, choices_field: str | None, task: str | None,
                name: str) -> list[Item]:
    rows = _read_file(path)
    columns = {"question_field": question, "answer_field": answer}
    if choices_field:
        columns["choices_field"] = choices_field
    _require_columns(rows, columns, path)
    task = task or ("choice" if choices_field else "math")
    items = []
    for i, row in enumerate(rows):
        choices = tuple(str(c) for c in row[choices_field]) if choices_field else None
        items.append(Item(f"{name}/{i}", str(row[question]).strip(), _gold_text(row[answer]), task, choices))
    return items


def check_disjoint(calibration: Sequence[Item], test: Sequence[Item]) -> None:
    """Raises ValueError when a question appears in both the calibration and the test split."""
    seen = {item.question for item in calibration}
    shared = [item.id for item in test if item.question in seen]
    if shared:
        raise ValueError(f"calibration: {len(shared)} test questions also appear in the calibration "
                         f"split (e.g. {shared[:3]}); the threshold must be chosen on other items")
