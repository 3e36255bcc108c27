"""What `launch.replay` sends: items with gold answers from a JSONL file or drawn toy chains,
cycled in a seeded order, and a shift to another source part way (`plan`).

  items   a JSONL file of {"question", "answer"} (a toy split, `runs/corea/task/test.jsonl`, or
          GSM8K): the gold is what follows the last "####" in `answer`, else the whole field;
          an item without `answer` is sent but neither graded nor fed back. Cycled in a seeded
          order (each pass reshuffled) until `limit` requests.
  shift   from request `shift_at` on (0-based: the first `shift_at` requests are phase "before",
          the rest "after"), items come from `shift_to`, a JSONL path or a toy-chain spec:

            chains:KEY=VALUE[,KEY=VALUE...]

          drawn on the fly with `corea_jax.data.chains.make_problem`, each item's number of
          operations and operand length uniform in their ranges. Keys:
            ops=N | ops=A-B         operations per chain          (default 1-2, the toy's own)
            digits=N | digits=A-B   operand length in digits      (default 1-2, the toy's own)
            min_ops, max_ops, min_digits, max_digits   one end of a range (max_digits=3: 1-3)
            random_names=0|1        random distinct letters instead of a, b, c, ...
          e.g. `chains:digits=3` (three-digit operands only), `chains:ops=3-4` (longer chains).
          The served toy has 128 positions and takes prompts of at most 48 tokens, so a spec
          whose longest question would exceed MAX_CHAIN_QUESTION_CHARS characters is refused
          (its worked answer grows with the chain too: 72 new tokens hold about 4 short steps).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path
from typing import Iterator

import numpy as np

from corea_jax.data import chains

CHAINS_PREFIX = "chains:"
MAX_CHAIN_QUESTION_CHARS = 44  # within the served toy's 48-token prompt (a token per character, and <bos>)
PHASES = ("before", "after")


# --- items -------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Item:
    """One question to send: its id, where it came from, and its gold answer (None: ungraded)."""

    id: str
    source: str
    question: str
    gold: str | None


def gold_of(answer: str) -> str:
    """The gold in an answer field: the text after its last "####" ("... #### 47" -> "47"), else
    the whole field, stripped."""
    head, sep, tail = answer.rpartition("####")
    return (tail if sep else answer).strip()


def read_items(path: str | os.PathLike) -> list[Item]:
    """The items of a JSONL file: each line an object with a string `question` and, optionally, a
    string `answer`; ids from its `id` field, else "<file stem>-<line>". Blank lines are skipped;
    a bad line is refused naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data: no file {path}")
    items = []
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{number}: expected a JSON object, found {line[:80]!r} ({err})") from None
            if not isinstance(row, dict) or not isinstance(row.get("question"), str) or not row["question"]:
                raise ValueError(f"{path}:{number}: expected an object with a non-empty string `question`")
            answer = row.get("answer")
            if answer is not None and not isinstance(answer, str):
                raise ValueError(f"{path}:{number}: `answer` must be a string, found {type(answer).__name__}")
            items.append(Item(id=str(row.get("id", f"{path.stem}-{number}")), source=str(path),
                              question=row["question"], gold=gold_of(answer) if answer is not None else None))
    if not items:
        raise ValueError(f"data: {path} holds no items")
    return items


def cycled(items: list[Item], seed: int) -> Iterator[Item]:
    """`items` without end, each pass in a fresh order drawn from `seed`."""
    rng = np.random.default_rng(seed)
    while True:
        for i in rng.permutation(len(items)):
            yield items[int(i)]


@dataclasses.dataclass(frozen=True)
class ChainSpec:
    """Toy chains to draw: operations per chain and operand lengths, each uniform in [min, max]."""

    min_ops: int = 1
    max_ops: int = 2
    min_digits: int = 1
    max_digits: int = 2
    random_names: bool = False

    def longest_question(self) -> int:
        """Characters in the longest question the spec can draw ("a=999;b=a+999;b?")."""
        return 2 + self.max_digits + self.max_ops * (5 + self.max_digits) + 3


def _range(key: str, value: str) -> tuple[int, int]:
    match = re.fullmatch(r"(\d+)(?:-(\d+))?", value.strip())
    if not match:
        raise ValueError(f"shift_to: {key} expects N or A-B, found {value!r}")
    low = int(match.group(1))
    return low, int(match.group(2) or low)


def parse_chains_spec(spec: str) -> ChainSpec:
    """`chains:digits=3,ops=1-2` -> ChainSpec (the grammar in the module docstring); a bad key or
    value, an empty range, or questions past MAX_CHAIN_QUESTION_CHARS is refused naming it."""
    if not spec.startswith(CHAINS_PREFIX):
        raise ValueError(f"shift_to: a chain spec starts with {CHAINS_PREFIX!r}, found {spec!r}")
    fields = dataclasses.asdict(ChainSpec())
    for part in filter(None, (p.strip() for p in spec[len(CHAINS_PREFIX):].split(","))):
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep:
            raise ValueError(f"shift_to: expected KEY=VALUE, found {part!r}")
        if key in ("ops", "digits"):
            fields[f"min_{key}"], fields[f"max_{key}"] = _range(key, value)
        elif key in ("min_ops", "max_ops", "min_digits", "max_digits"):
            low, high = _range(key, value)
            if low != high:
                raise ValueError(f"shift_to: {key} expects one number, found {value!r}")
            fields[key] = low
        elif key == "random_names":
            if value.strip().lower() not in ("0", "1", "true", "false"):
                raise ValueError(f"shift_to: random_names expects 0 or 1, found {value!r}")
            fields[key] = value.strip().lower() in ("1", "true")
        else:
            raise ValueError(f"shift_to: unknown key {key!r}; expected ops, digits, min_ops, max_ops, "
                             f"min_digits, max_digits or random_names")
    result = ChainSpec(**fields)
    if not 1 <= result.min_ops <= result.max_ops < len(chains.VARIABLES):
        raise ValueError(f"shift_to: ops expects 1 <= min <= max < {len(chains.VARIABLES)}, "
                         f"found {result.min_ops}-{result.max_ops}")
    if not 1 <= result.min_digits <= result.max_digits:
        raise ValueError(f"shift_to: digits expects 1 <= min <= max, found {result.min_digits}-{result.max_digits}")
    if result.longest_question() > MAX_CHAIN_QUESTION_CHARS:
        raise ValueError(f"shift_to: {spec!r} draws questions of up to {result.longest_question()} characters; "
                         f"the served toy takes at most {MAX_CHAIN_QUESTION_CHARS} (fewer ops or digits)")
    return result


def chain_items(spec: ChainSpec, seed: int, source: str = "chains") -> Iterator[Item]:
    """Toy chains drawn from `spec` without end (graded as numbers: the gold is the answer)."""
    rng = np.random.default_rng(seed)
    for k in range(2 ** 62):
        ops = int(rng.integers(spec.min_ops, spec.max_ops + 1))
        digits = int(rng.integers(spec.min_digits, spec.max_digits + 1))
        problem = chains.make_problem(rng, ops, digits, random_names=spec.random_names)
        yield Item(id=f"chains-{k:06d}", source=source, question=problem.question, gold=problem.answer)


def open_source(source: str, seed: int) -> Iterator[Item]:
    """Items without end from a JSONL path (cycled) or a `chains:` spec (drawn)."""
    if source.startswith(CHAINS_PREFIX):
        return chain_items(parse_chains_spec(source), seed, source=source)
    return cycled(read_items(source), seed)


@dataclasses.dataclass(frozen=True)
class Planned:
    """Request `index` (0-based) of the replay, its phase and its item."""

    index: int
    phase: str
    item: Item


def plan(data: str, limit: int, seed: int = 0, shift_at: int | None = None,
         shift_to: str | None = None) -> Iterator[Planned]:
    """`limit` requests: from `data` (a JSONL path or a chain spec), then from request `shift_at`
    on from `shift_to`. Sources are opened (and checked) before the first item is yielded."""
    if not isinstance(limit, int) or limit < 1:
        raise ValueError(f"limit: expected a number of requests >= 1, found {limit!r}")
    if (shift_at is None) != (shift_to is None):
        raise ValueError("shift_at, shift_to: set both or neither")
    if shift_at is not None and not 0 <= shift_at <= limit:
        raise ValueError(f"shift_at: expected a request number in [0, limit={limit}], found {shift_at}")
    before = open_source(data, seed)
    after = open_source(shift_to, seed + 1) if shift_to is not None else None
    return _planned(before, after, limit, shift_at)


def _planned(before, after, limit, shift_at) -> Iterator[Planned]:
    for index in range(limit):
        shifted = after is not None and index >= shift_at
        yield Planned(index, PHASES[shifted], next(after if shifted else before))
