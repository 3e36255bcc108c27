"""The reproduction's chain task: problems are right, splits are disjoint and seeded."""

import json

import numpy as np
import pytest

from corea_jax import grading
from corea_jax.data import chains


def _evaluate(question: str) -> int:
    """The value the question asks for, computed from the definitions alone."""
    values = {}
    *definitions, ask = question.split(";")
    for d in definitions:
        var, expr = d.split("=")
        if expr.isdigit():
            values[var] = int(expr)
        else:
            op = "+" if "+" in expr else "-"
            prev, x = expr.split(op)
            values[var] = values[prev] + int(x) if op == "+" else values[prev] - int(x)
    return values[ask.rstrip("?")]


@pytest.mark.parametrize("digits, random_names", [(1, False), (2, False), (2, True)])
def test_problems_are_right_and_in_range(digits, random_names):
    for p in chains.make_problems(200, seed=3, max_ops=6, max_digits=digits, random_names=random_names):
        assert int(p.answer) == _evaluate(p.question)
        assert grading.grade(f"\\boxed{{{p.answer}}}", p.solution, "gsm8k")
        lines = p.solution.split("\n")
        assert len(lines) == p.num_ops + 2 and lines[-1] == f"#### {p.answer}"
        # each step restates its definition, then substitutes the value of the line before
        for definition, line, before in zip(p.question.split(";")[1:-1], lines[1:], lines):
            value = before.rsplit("=", 1)[1]
            var, expr = definition.split("=")
            assert line.startswith(f"{definition}={value}{expr[1:]}=")
        numbers = [int(n) for n in "".join(c if c.isdigit() else " " for c in p.question).split()]
        assert all(0 <= n < 10 ** p.digits for n in numbers)
        assert 1 <= p.num_ops <= 6 and 1 <= p.digits <= digits


def test_difficulty_is_spread_and_readable_from_the_question():
    problems = chains.make_problems(600, seed=0, max_ops=5, max_digits=2)
    assert {p.num_ops for p in problems} == {1, 2, 3, 4, 5}
    assert {p.digits for p in problems} == {1, 2}
    assert all(p.question.count(";") == p.num_ops + 1 for p in problems)


def test_splits_are_seeded_and_disjoint(tmp_path):
    sizes = {"train": 300, "calibration": 50, "test": 80}
    a = chains.make_splits(sizes, seed=1, max_ops=4, max_digits=1)
    b = chains.make_splits(sizes, seed=1, max_ops=4, max_digits=1)
    assert a == b and {k: len(v) for k, v in a.items()} == sizes
    train = {p.question for p in a["train"]}
    held_out = [p.question for s in ("calibration", "test") for p in a[s]]
    assert not train & set(held_out) and len(set(held_out)) == len(held_out)
    assert a != chains.make_splits(sizes, seed=2, max_ops=4, max_digits=1)

    # a held-out question seen in train is redrawn with its operand length: one-digit chains
    # keep their share although most short ones are in train
    mixed = chains.make_splits({"train": 2000, "calibration": 50, "test": 400}, seed=0, max_ops=3, max_digits=2)
    one_digit = np.mean([p.digits == 1 for p in mixed["test"]])
    assert 0.4 < one_digit < 0.6
    assert not {p.question for p in mixed["train"]} & {p.question for p in mixed["test"]}

    # digit shares and random names: the shares hold in every split, names are distinct letters
    shared = chains.make_splits({"train": 2000, "calibration": 50, "test": 400}, seed=0, max_ops=2, max_digits=2,
                                digit_shares=(0.7, 0.3), random_names=True)
    for split in ("train", "test"):
        assert 0.63 < np.mean([p.digits == 1 for p in shared[split]]) < 0.77
    names = [[d.split("=")[0] for d in p.question.split(";")[:-1]] for p in shared["train"]]
    assert all(len(set(n)) == len(n) for n in names) and len({n[0] for n in names}) > 20

    # a reserved share of the question space: train never draws it, the held-out splits only
    # draw from it, and short one-digit chains stay in the held-out splits
    reserved = chains.make_splits({"train": 5000, "calibration": 100, "test": 300}, seed=0, max_ops=2, max_digits=2,
                                  digit_shares=(0.6, 0.4), heldout_share=0.4)
    assert not any(chains.held_out_only(p.question, 0.4) for p in reserved["train"])
    held = reserved["calibration"] + reserved["test"]
    assert all(chains.held_out_only(p.question, 0.4) for p in held)
    assert 0.5 < np.mean([p.digits == 1 for p in held]) < 0.7
    assert {(p.digits, p.num_ops) for p in held} == {(1, 1), (1, 2), (2, 1), (2, 2)}

    path = chains.write_jsonl(a["test"], tmp_path / "test.jsonl")
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["id"] for r in rows[:2]] == ["test-00000", "test-00001"]
    assert rows[0]["question"] == a["test"][0].question and rows[0]["answer"] == a["test"][0].solution
    assert not list(tmp_path.glob("*.tmp"))


def test_bad_sizes_are_refused():
    with pytest.raises(ValueError, match="num_ops"):
        chains.make_problem(np.random.default_rng(0), 0, 1)


@pytest.mark.parametrize("kwargs, match", [
    (dict(sizes={"train": 10, "calibration": 5, "test": -1}), "task.test: expected a number of problems >= 1"),
    (dict(max_ops=0), "task.max_ops: expected 1 <= max_ops"),
    (dict(max_digits=0), "task.max_digits: expected >= 1"),
    (dict(max_digits=2, digit_shares=(0.5, 0.6)), "task.digit_shares: expected None or 2 probabilities"),
    (dict(heldout_share=1.0), r"task.heldout_share: expected a number in \[0, 1\)"),
    # one-operation one-digit chains: about a hundred distinct questions, fewer than asked for
    (dict(sizes={"train": 50, "calibration": 5, "test": 400}, max_ops=1), "task.test: 1000 draws in a row"),
])
def test_bad_task_fields_are_named(kwargs, match):
    args = dict(sizes={"train": 10, "calibration": 5, "test": 5}, seed=0, max_ops=3, max_digits=1)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        chains.make_splits(args.pop("sizes"), **args)


def test_subset_by_digits_keeps_the_asked_mix_without_repeating_rows():
    rows = [{"id": i, "digits": 1 if i % 10 < 6 else 2} for i in range(1000)]  # 600 / 400
    subset = chains.subset_by_digits(rows, (0.8, 0.2))
    ids = [r["id"] for r in subset]
    assert len(ids) == len(set(ids)) == 750  # all 600 one-digit rows and 150 two-digit ones
    assert sum(r["digits"] == 1 for r in subset) == 600
    assert ids == sorted(ids)  # train order kept, so the same rows on every machine
    assert [r["id"] for r in chains.subset_by_digits(rows, (0.6, 0.4))] == list(range(1000))
    assert all(r["digits"] == 1 for r in chains.subset_by_digits(rows, (1.0, 0.0)))


@pytest.mark.parametrize("shares", [(0.5, 0.6), (1.2, -0.2)])
def test_subset_by_digits_names_the_field(shares):
    with pytest.raises(ValueError, match="config.slm_sft_digit_shares"):
        chains.subset_by_digits([{"digits": 1}], shares, "config.slm_sft_digit_shares")
