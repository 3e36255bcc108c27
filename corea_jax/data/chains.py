"""The reproduction's synthetic reasoning task: chains of additions and subtractions.

A problem defines a chain of variables, each from the one before, and asks for the last,
"a=47;b=a+8;c=b-15;d=c+3;d?", with a worked solution of one line per operation,

  a=47
  b=a+8=47+8=55
  c=b-15=55-15=40
  d=c+3=40+3=43
  #### 43

each line restating its definition before substituting (the sign and operand are copied
from the question, then the value from the line before), and "#### answer" last: the GSM8K
gold convention, so the project's grader (task "gsm8k") reads it and the trainer's
SFT turns it into "reasoning, \\boxed{43}, Confidence: c". Difficulty is visible in the
question: more operations and longer operands mean more steps and harder single steps, so
a small model's accuracy falls with both, and a calibrated confidence can be read off the
question. A subtraction is only drawn when it keeps the running total non-negative.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Iterable

import numpy as np

from corea_jax.files import write_atomic


@dataclasses.dataclass(frozen=True)
class ChainProblem:
    """One problem: question text, GSM8K-style gold solution, answer, difficulty."""

    question: str
    solution: str  # steps, then "#### answer"
    answer: str
    num_ops: int
    digits: int  # operand length in digits


VARIABLES = "abcdefghijklmnopqrstuvwxyz"


def make_problem(rng: np.random.Generator, num_ops: int, digits: int, *, random_names: bool = False
                 ) -> ChainProblem:
    """A chain of `num_ops` additions or subtractions, each defining the next variable from the
    previous one ("a=7;b=a-6;c=b+1;c?"), with operands and running totals in
    [0, 10**digits - 1]: every step is one fact of a small table, and a longer chain needs
    more of them in a row. Operands are uniform; the sign is whichever keeps the total in
    range (a coin flip when both do). `random_names`: distinct letters drawn at random
    ("q=7;x=q-6;e=x+1;e?") instead of a, b, c in order, which multiplies the number of
    distinct short chains (so short questions stay plentiful outside train)."""
    if not 1 <= num_ops < len(VARIABLES) or digits < 1:
        raise ValueError(f"num_ops, digits: expected 1 <= num_ops < {len(VARIABLES)} and digits >= 1, "
                         f"found {num_ops}, {digits}")
    names = ("".join(VARIABLES[i] for i in rng.permutation(len(VARIABLES))[:num_ops + 1])
             if random_names else VARIABLES)
    top = 10 ** digits - 1
    total = int(rng.integers(0, top + 1))
    definitions, steps = [f"{names[0]}={total}"], [f"{names[0]}={total}"]
    for i in range(1, num_ops + 1):
        while True:  # an operand, then a sign that keeps the total in range
            x = int(rng.integers(0, top + 1))
            signs = [op for op, ok in (("+", total + x <= top), ("-", x <= total)) if ok]
            if signs:
                break
        op = signs[int(rng.integers(0, len(signs)))]
        new = total + x if op == "+" else total - x
        var, prev = names[i], names[i - 1]
        definitions.append(f"{var}={prev}{op}{x}")
        steps.append(f"{var}={prev}{op}{x}={total}{op}{x}={new}")
        total = new
    question = ";".join(definitions) + f";{names[num_ops]}?"
    return ChainProblem(question=question, solution="\n".join(steps) + f"\n#### {total}",
                        answer=str(total), num_ops=num_ops, digits=digits)


def _draw_digits(rng: np.random.Generator, max_digits: int, digit_shares, size=None):
    """Operand lengths in [1, max_digits]: uniform, or with probabilities `digit_shares`."""
    return rng.choice(np.arange(1, max_digits + 1), size=size, p=digit_shares)


def make_problems(n: int, seed: int, *, max_ops: int, max_digits: int, digit_shares=None,
                  random_names: bool = False) -> list[ChainProblem]:
    """`n` problems with num_ops uniform in [1, max_ops] and digits in [1, max_digits]
    (uniform, or drawn with probabilities `digit_shares`, one per length)."""
    rng = np.random.default_rng(seed)
    ops = rng.integers(1, max_ops + 1, size=n)
    digits = _draw_digits(rng, max_digits, digit_shares, size=n)
    return [make_problem(rng, int(k), int(d), random_names=random_names) for k, d in zip(ops, digits)]


SPLITS = ("train", "calibration", "test")


def held_out_only(question: str, heldout_share: float) -> bool:
    """Whether `question` belongs to the share of the question space reserved for the held-out
    splits (a hash of its text, so the same on every machine): train never draws it."""
    return int.from_bytes(hashlib.sha256(question.encode()).digest()[:8], "big") / 2 ** 64 < heldout_share
MAX_REDRAWS = 1000  # held-out draws in a row that may collide before make_splits gives up


def make_splits(sizes: dict[str, int], seed: int, *, max_ops: int, max_digits: int, digit_shares=None,
                random_names: bool = False, heldout_share: float = 0.0) -> dict[str, list[ChainProblem]]:
    """Independent draws per split (seeds (seed, split index)); a test or calibration question
    that also occurs in train is redrawn with the same operand length (its number of operations
    and its values drawn again), so evaluation measures more than recall and the held-out
    splits keep train's mix of operand lengths. Sizes and ranges are checked first, and a task
    too small for its held-out splits (every draw already seen) is refused with the fields to
    change.

    `heldout_share` > 0 reserves that share of the question space (`held_out_only`, a hash of
    the text) for the held-out splits: train redraws a reserved question (same length and
    number of operations), the held-out splits draw only reserved ones. Where the space is
    small (one-digit chains of one or two operations: about 1,300 questions) a plain redraw
    would leave the held-out splits only the longest chains, or none; the reserve keeps the
    same mix in every split."""
    for split in SPLITS:
        if not isinstance(sizes.get(split), int) or sizes[split] < 1:
            raise ValueError(f"task.{split}: expected a number of problems >= 1, found {sizes.get(split)!r}")
    if not isinstance(max_ops, int) or not 1 <= max_ops < len(VARIABLES):
        raise ValueError(f"task.max_ops: expected 1 <= max_ops < {len(VARIABLES)}, found {max_ops!r}")
    if not isinstance(max_digits, int) or max_digits < 1:
        raise ValueError(f"task.max_digits: expected >= 1, found {max_digits!r}")
    if not isinstance(heldout_share, (int, float)) or not 0 <= heldout_share < 1:
        raise ValueError(f"task.heldout_share: expected a number in [0, 1), found {heldout_share!r}")
    if digit_shares is not None:
        digit_shares = tuple(digit_shares)
        if (len(digit_shares) != max_digits or any(not 0 <= x <= 1 for x in digit_shares)
                or abs(sum(digit_shares) - 1) > 1e-6):
            raise ValueError(f"task.digit_shares: expected None or {max_digits} probabilities (one per operand "
                             f"length 1..task.max_digits) summing to 1, found {digit_shares!r}")
    kinds = dict(max_ops=max_ops, random_names=random_names)
    train = make_problems(sizes["train"], seed * 3, max_digits=max_digits, digit_shares=digit_shares, **kinds)
    if heldout_share > 0:
        rng = np.random.default_rng([seed, 0])
        for j, p in enumerate(train):
            for _ in range(MAX_REDRAWS):
                if not held_out_only(p.question, heldout_share):
                    break
                p = make_problem(rng, p.num_ops, p.digits, random_names=random_names)
            else:
                raise ValueError(f"task.heldout_share: {MAX_REDRAWS} train draws in a row were reserved for the "
                                 f"held-out splits; expected a smaller share, found {heldout_share}")
            train[j] = p
    seen = {p.question for p in train}
    out = {"train": train}
    for i, split in enumerate(SPLITS[1:], start=1):
        rng = np.random.default_rng([seed, i])
        problems: list[ChainProblem] = []
        while len(problems) < sizes[split]:
            digits = int(_draw_digits(rng, max_digits, digit_shares))
            for _ in range(MAX_REDRAWS):
                p = make_problem(rng, int(rng.integers(1, max_ops + 1)), digits, random_names=random_names)
                if p.question not in seen and (heldout_share == 0 or held_out_only(p.question, heldout_share)):
                    break
            else:
                raise ValueError(
                    f"task.{split}: {MAX_REDRAWS} draws in a row were all in train or already held out "
                    f"({len(problems)} of {sizes[split]} found); raise task.max_ops, task.max_digits or "
                    f"task.heldout_share, or lower task.train / task.{split}")
            seen.add(p.question)
            problems.append(p)
        out[split] = problems
    return out


def subset_by_digits(rows: list[dict], shares, field: str = "digit_shares") -> list[dict]:
    """The largest prefix-per-length subset of `rows` (dicts with a "digits" field, in their
    order) whose operand lengths 1..len(shares) come in the proportions `shares`: a model's
    own training mix drawn from a shared train split, without repeating any row. `field`
    names the config field in errors."""
    shares = tuple(shares)
    if any(not 0 <= x <= 1 for x in shares) or abs(sum(shares) - 1) > 1e-6:
        raise ValueError(f"{field}: expected probabilities (one per operand length) summing to 1, found {shares!r}")
    by_length = {d: [r for r in rows if r["digits"] == d] for d in range(1, len(shares) + 1)}
    total = min(len(by_length[d]) / share for d, share in enumerate(shares, start=1) if share > 0)
    keep = {d: by_length[d][:int(round(total * share))] for d, share in enumerate(shares, start=1)}
    if not any(keep.values()):
        raise ValueError(f"{field}: no train row has an operand length with a share above 0 ({shares!r})")
    kept = {id(r) for rs in keep.values() for r in rs}
    return [r for r in rows if id(r) in kept]


def write_jsonl(problems: Iterable[ChainProblem], path: str | os.PathLike) -> Path:
    """One JSON object per problem (id "<file stem>-<index>", question, answer = the gold
    solution, num_ops, digits); written to a temporary file and renamed, so a reader never
    sees half a file."""
    path = Path(path)
    return write_atomic(path, "".join(
        json.dumps({"id": f"{path.stem}-{i:05d}", "question": p.question, "answer": p.solution,
                    "num_ops": p.num_ops, "digits": p.digits}) + "\n" for i, p in enumerate(problems)))
