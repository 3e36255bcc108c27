"""Training data: generated arithmetic, datasets-loaded files, the step iterator, the toy task."""

from __future__ import annotations

import json

import ml_collections
import numpy as np
import pytest

from corea_jax import grading, rewards
from corea_jax.data import ToyTokenizer, arithmetic_records, load_records, step_indices
from corea_jax.data.toy import num_answers, toy_model_config
from corea_jax.rl.config import defaults
from tests.helpers import SHARED_DATA


def _data(**changes) -> ml_collections.ConfigDict:
    data = defaults().data
    for key, value in changes.items():
        data[key] = value
    return data


def test_arithmetic_records_are_deterministic_sums():
    records = arithmetic_records(50, 3, seed=1)
    assert records == arithmetic_records(50, 3, seed=1)
    for record in records:
        a, b = record.question.split("+")
        assert int(record.answer) == int(a) + int(b) and int(a) <= 3 and int(b) <= 3
    fixed = arithmetic_records(20, 3, seed=1, addend=1)
    assert all(r.question.startswith("1+") for r in fixed)
    assert {r.answer for r in fixed} <= {"1", "2", "3", "4"}


def test_gsm8k_jsonl_loads_through_datasets():
    path = SHARED_DATA / "gsm8k" / "train.jsonl"
    records = load_records(_data(source=str(path), limit=20))
    assert len(records) == 20
    first = json.loads(path.read_text().splitlines()[0])
    assert records[0].question == first["question"] and records[0].answer == first["answer"]
    assert grading.grade(r"\boxed{72}", records[0].answer, "gsm8k")


def test_fields_are_mapped_by_config_and_a_missing_column_is_named(tmp_path):
    import pandas as pd

    path = tmp_path / "problems.parquet"
    pd.DataFrame({"problem": ["1+1", "2+3"], "final_answer": ["2", "5"]}).to_parquet(path)
    records = load_records(_data(source=str(path), question_field="problem", answer_field="final_answer"))
    assert [(r.question, r.answer) for r in records] == [("1+1", "2"), ("2+3", "5")]
    with pytest.raises(ValueError, match=r"config.data.answer_field: column 'answer' is not in .*"
                                         r"\['problem', 'final_answer'\]"):
        load_records(_data(source=str(path), question_field="problem"))
    with pytest.raises(FileNotFoundError, match="config.data.source"):
        load_records(_data(source=str(tmp_path / "missing.jsonl")))


def test_step_indices_cover_each_epoch_once_and_depend_only_on_step():
    n, batch = 10, 4
    stream = np.concatenate([step_indices(n, step, batch, seed=3) for step in range(5)])
    assert sorted(stream[:10]) == list(range(10)) and sorted(stream[10:20]) == list(range(10))
    np.testing.assert_array_equal(step_indices(n, 3, batch, seed=3), stream[12:16])
    assert not np.array_equal(step_indices(n, 0, batch, seed=4), stream[:4])


def test_toy_completion_decodes_to_text_the_grader_scores():
    tokenizer = ToyTokenizer(num_answers(3, addend=1))
    assert tokenizer.decode(tokenizer.encode_question("1+2")) == "1+2"
    completion = tokenizer.encode_completion("3", 0.7)
    text = tokenizer.decode(completion)
    assert text == "\\boxed{3}\nConfidence: 0.7"
    out = rewards.rewards_from_texts([[text, tokenizer.decode(completion[::-1])]], ["3"], "gsm8k",
                                     rewards.get_preset("rlcc_l1"))
    np.testing.assert_array_equal(out["correct"], [[True, False]])
    np.testing.assert_array_equal(out["format_ok"], [[True, False]])  # confidence before the box
    assert toy_model_config(tokenizer).vocab_size >= len(tokenizer)
    with pytest.raises(ValueError, match="not in the toy vocabulary"):
        tokenizer.encode_question("1*2")
