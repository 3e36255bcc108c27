"""Evaluation items: the real GSM8K / MATH500 files and generated files with each hub set's columns."""

import json

import pytest

from corea_jax import grading
from corea_jax.cascade import backends, datasets
from tests.cascade_helpers import SHARED_DATA


@pytest.fixture(autouse=True)
def _shared_data(monkeypatch):
    monkeypatch.setenv("COREA_SHARED_DATA", str(SHARED_DATA))


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_gsm8k_and_math500_from_the_shared_files():
    test = datasets.load_items("gsm8k", split="test", limit=5)
    train = datasets.load_items("gsm8k", split="train", limit=5, offset=10)
    assert [i.id for i in test] == [f"gsm8k/test/{k}" for k in range(5)]
    assert train[0].id == "gsm8k/train/10" and all(i.task == "gsm8k" for i in test + train)
    assert test[0].question.startswith("Janet") and grading.grade("\\boxed{18}", test[0].gold, "gsm8k")
    datasets.check_disjoint(train, test)
    math500 = datasets.load_items("math500", limit=2)
    assert math500[0].task == "math" and math500[0].gold == "\\left( 3, \\frac{\\pi}{2} \\right)"


def test_deepmath_split_is_seeded_disjoint_and_sized():
    test = datasets.deepmath_split(20_000, "test", seed=0)
    train = datasets.deepmath_split(20_000, "train", seed=0)
    assert len(test) == 500 and len(train) == 16_000 and not set(test) & set(train)
    assert (datasets.deepmath_split(20_000, "test", seed=0) == test).all()
    assert not (datasets.deepmath_split(20_000, "test", seed=1) == test).all()


def test_deepmath_columns(tmp_path):
    rows = [dict(question=f"What is {k}+1?", final_answer=str(k + 1), difficulty=5.0, topic="Algebra",
                 r1_solution_1="...", r1_solution_2="...", r1_solution_3="...") for k in range(600)]
    path = _jsonl(tmp_path / "deepmath.jsonl", rows)
    test = datasets.load_items("deepmath", split="test", data_file=path)
    train = datasets.load_items("deepmath", split="train", data_file=path)
    assert len(test) == 500 and len(train) == 100 and test[0].task == "math"
    assert not {i.question for i in test} & {i.question for i in train}
    assert test[0].gold == str(int(test[0].question.split()[2].rstrip("+1?")) + 1)


def test_olympiadbench_columns_list_answers_and_text_only(tmp_path):
    import pandas as pd

    rows = [dict(id=1, question="Find $x$ with $x^2=4$, $x>0$.", solution=["..."], final_answer=["$2$"],
                 context=None, modality="Text-only", difficulty="Competition", is_multiple_answer=False,
                 unit=None, answer_type="Numerical", error=None, question_type="Open-ended",
                 subfield="Algebra", subject="Math", language="English"),
            dict(id=2, question="See the figure <image_1>", solution=["..."], final_answer=["$3$"],
                 context=None, modality="Multimodal", difficulty="Competition", is_multiple_answer=False,
                 unit=None, answer_type="Numerical", error=None, question_type="Open-ended",
                 subfield="Geometry", subject="Math", language="English")]
    path = tmp_path / "olympiad.parquet"
    pd.DataFrame(rows).to_parquet(path)
    items = datasets.load_items("olympiadbench", split="test", data_file=str(path))
    assert len(items) == 1 and items[0].gold == "2" and items[0].task == "math"


def test_gpqa_shuffles_options_with_a_seeded_rule_and_grades_the_letter(tmp_path):
    rows = [{"Question": f"Q{k}?", "Correct Answer": f"right{k}", "Incorrect Answer 1": "w1",
             "Incorrect Answer 2": "w2", "Incorrect Answer 3": "w3", "Subdomain": "Physics"}
            for k in range(40)]
    path = _jsonl(tmp_path / "gpqa.jsonl", rows)
    items = datasets.load_items("gpqa", data_file=path)
    assert all(i.choices["ABCD".index(i.gold)] == f"right{k}" for k, i in enumerate(items))
    assert len({i.gold for i in items}) == 4  # the correct option is not always A
    assert [i.gold for i in datasets.load_items("gpqa", data_file=path)] == [i.gold for i in items]
    messages = backends.messages_for(items[0], "corea")
    assert f"{items[0].gold}. right0" in messages[-1]["content"]
    assert grading.grade(f"\\boxed{{{items[0].gold}}}", items[0].gold, "choice")


def test_commonsenseqa_columns(tmp_path):
    rows = [dict(id="abc", question="Where do fish live?", question_concept="fish",
                 choices={"label": ["A", "B", "C", "D", "E"], "text": ["sea", "sky", "desk", "car", "tree"]},
                 answerKey="A")]
    items = datasets.load_items("commonsenseqa", split="validation", data_file=_jsonl(tmp_path / "c.jsonl", rows))
    assert items[0] == datasets.Item("commonsenseqa/validation/abc", "Where do fish live?", "A", "choice",
                                     ("sea", "sky", "desk", "car", "tree"))


def test_local_file_with_custom_columns(tmp_path):
    path = _jsonl(tmp_path / "mine.jsonl", [dict(prompt="2+2?", target="4")])
    items = datasets.load_items(path, question_field="prompt", answer_field="target", task="gsm8k")
    assert items == [datasets.Item("mine/0", "2+2?", "4", "gsm8k")]


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown data set 'gsm9k'.*commonsenseqa.*gsm8k"):
        datasets.load_items("gsm9k")


def test_missing_column_names_it_and_those_present(tmp_path):
    path = _jsonl(tmp_path / "bad.jsonl", [dict(problem="2+2?", answer="4")])
    with pytest.raises(ValueError, match=r"question_field: column 'question' not in .*\['problem', 'answer'\]"):
        datasets.load_items(path)
    path = _jsonl(tmp_path / "bad_deepmath.jsonl", [dict(question="2+2?", answer="4")])
    with pytest.raises(ValueError, match=r"answer_field: column 'final_answer' not in .*\['question', 'answer'\]"):
        datasets.load_items("deepmath", split="test", data_file=path)


def test_overlapping_splits_are_refused():
    items = datasets.load_items("gsm8k", split="test", limit=3)
    with pytest.raises(ValueError, match="calibration"):
        datasets.check_disjoint(items[:2], items)
