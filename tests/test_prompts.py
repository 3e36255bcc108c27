"""Tests for corea_jax.prompts: templates, chat rendering, the two-turn follow-up."""

import dataclasses

import pytest
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from transformers import PreTrainedTokenizerFast

from corea_jax import grading, prompts

# Qwen2.5's ChatML layout, reduced to what the tests need.
CHATML = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# A template that rewrites past assistant turns (drops everything up to </think>).
STRIPS_THINKING = CHATML.replace(
    "m['content']",
    "(m['content'].split('</think>')[-1] if m['role'] == 'assistant' else m['content'])",
)


def _tokenizer(template: str | None = CHATML) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(WordLevel({"[UNK]": 0}, unk_token="[UNK]")), chat_template=template
    )


QUESTION = "Natalia sold clips to 48 of her friends in April. How many clips did she sell?"


def test_corea_instruction_asks_for_box_and_confidence_and_shows_an_example():
    text = prompts.instruction(prompts.get_prompt_config("corea"))
    assert "step by step" in text
    assert "\\boxed{}" in text
    assert "Confidence: <number between 0 and 1>" in text
    assert "never the confidence" in text
    assert "Example." in text


def test_rlvr_instruction_has_no_confidence():
    text = prompts.instruction(prompts.get_prompt_config("rlvr"))
    assert "\\boxed{}" in text
    assert "onfidence" not in text


def test_choice_prompt_lists_options_and_asks_for_a_letter():
    messages = prompts.build_messages("Which is prime?", prompts.get_prompt_config("choice"), ["21", "23", "25"])
    content = messages[-1]["content"]
    assert "Which is prime?\nA. 21\nB. 23\nC. 25" in content
    assert "letter of the correct option" in content
    assert "Confidence:" in content


@pytest.mark.parametrize("name", sorted(prompts.PROMPTS))
def test_worked_example_is_itself_well_formed(name):
    # The example teaches the format; the parser must read it as intended.
    cfg = prompts.get_prompt_config(name)
    example = prompts._example(cfg)
    solution = example.split("Solution: ", 1)[1]
    task = "choice" if cfg.multiple_choice else "gsm8k"
    gold = "B" if cfg.multiple_choice else "19"
    assert grading.grade(solution, gold, task)
    assert grading.format_ok(solution, require_confidence=cfg.ask_confidence)
    assert grading.parse_confidence(solution) == (0.9 if cfg.ask_confidence else None)


def test_instruction_echo_is_not_a_confidence():
    # A model that repeats the instruction must not score a confidence from it.
    cfg = dataclasses.replace(prompts.get_prompt_config("corea"), worked_example=False)
    assert grading.parse_confidence(prompts.instruction(cfg)) is None
    assert grading.parse_confidence(prompts.CONFIDENCE_FOLLOWUP) is None


def test_worked_example_can_be_turned_off():
    cfg = dataclasses.replace(prompts.get_prompt_config("corea"), worked_example=False)
    assert "Example." not in prompts.instruction(cfg)


def test_build_messages_with_and_without_system_prompt():
    plain = prompts.build_messages(QUESTION)
    assert [m["role"] for m in plain] == ["user"]
    assert plain[0]["content"].endswith("\n\nProblem: " + QUESTION)
    cfg = dataclasses.replace(prompts.get_prompt_config("corea"), system_prompt="You are a careful solver.")
    with_system = prompts.build_messages(QUESTION, cfg)
    assert with_system[0] == {"role": "system", "content": "You are a careful solver."}
    assert with_system[1] == plain[0]


def test_choices_must_match_the_config():
    with pytest.raises(ValueError, match="choices"):
        prompts.build_messages(QUESTION, prompts.get_prompt_config("corea"), ["1", "2"])
    with pytest.raises(ValueError, match="choices"):
        prompts.build_messages(QUESTION, prompts.get_prompt_config("choice"))
    with pytest.raises(ValueError, match="2 to 5"):
        prompts.format_choices(["1", "2", "3", "4", "5", "6"])


def test_unknown_preset_names_the_valid_ones():
    with pytest.raises(ValueError, match=r"'cot'.*\['choice', 'corea', 'question', 'rlvr'\]"):
        prompts.get_prompt_config("cot")


def test_question_preset_sends_the_problem_alone():
    messages = prompts.build_messages(QUESTION, prompts.get_prompt_config("question"))
    assert messages == [{"role": "user", "content": QUESTION}]


def test_render_applies_the_chat_template():
    text = prompts.build_prompt(_tokenizer(), QUESTION)
    assert text.startswith("<|im_start|>user\nSolve the problem step by step.")
    assert text.endswith("Problem: " + QUESTION + "<|im_end|>\n<|im_start|>assistant\n")


def test_render_without_a_chat_template_raises():
    with pytest.raises(ValueError, match="chat_template"):
        prompts.build_prompt(_tokenizer(None), QUESTION)


def test_followup_messages_append_the_answer_and_the_question():
    first = prompts.build_messages(QUESTION, prompts.get_prompt_config("rlvr"))
    snapshot = [dict(m) for m in first]
    follow = prompts.followup_messages(first, "She sold \\boxed{72} clips.")
    assert follow[: len(first)] == first
    assert follow[-2] == {"role": "assistant", "content": "She sold \\boxed{72} clips."}
    assert follow[-1] == {"role": "user", "content": prompts.CONFIDENCE_FOLLOWUP}
    assert first == snapshot  # the caller's list is untouched


def test_followup_suffix_extends_the_first_turn_verbatim():
    tok = _tokenizer()
    first = prompts.build_messages(QUESTION, prompts.get_prompt_config("rlvr"))
    answer = "She sold \\boxed{72} clips."
    suffix = prompts.followup_suffix(tok, first, answer)
    assert suffix == (
        "<|im_end|>\n<|im_start|>user\n" + prompts.CONFIDENCE_FOLLOWUP + "<|im_end|>\n<|im_start|>assistant\n"
    )
    assert prompts.render(tok, first) + answer + suffix == prompts.render(
        tok, prompts.followup_messages(first, answer)
    )


def test_followup_suffix_refuses_a_template_that_rewrites_history():
    first = prompts.build_messages(QUESTION, prompts.get_prompt_config("rlvr"))
    with pytest.raises(ValueError, match="verbatim"):
        prompts.followup_suffix(_tokenizer(STRIPS_THINKING), first, "<think>hmm</think>\\boxed{72}")


# ------------------------------------------------------- the cascade's messages, with history

HISTORY = [{"role": "system", "content": "Answer in French."},
           {"role": "user", "content": "What is 2 + 2?"},
           {"role": "assistant", "content": "Quatre: \\boxed{4}"},
           {"role": "system", "content": "Be brief."}]


@pytest.mark.parametrize("preset, system_prompt, choices", [
    ("corea", None, None), ("rlvr", "You are careful.", None), ("choice", None, ["21", "23", "25"]),
    ("question", None, None)])
def test_messages_for_without_history_is_the_preset_alone(preset, system_prompt, choices):
    from corea_jax.cascade.backends import messages_for
    from corea_jax.cascade.datasets import Item

    item = Item("t/0", QUESTION, "B" if choices else "72", "choice" if choices else "gsm8k", choices=choices)
    cfg = dataclasses.replace(prompts.get_prompt_config(preset), multiple_choice=choices is not None)
    if system_prompt:
        cfg = dataclasses.replace(cfg, system_prompt=system_prompt)
    assert messages_for(item, preset, system_prompt=system_prompt) == prompts.build_messages(QUESTION, cfg, choices)
    assert messages_for(item, preset, system_prompt=system_prompt, history=()) == \
        messages_for(item, preset, system_prompt=system_prompt)


def test_messages_for_puts_earlier_turns_before_the_question_and_merges_system_texts():
    from corea_jax.cascade.backends import messages_for
    from corea_jax.cascade.datasets import Item

    item = Item("t/0", QUESTION, "72", "gsm8k")
    alone = messages_for(item, "corea")  # no system message in the preset: the client's become one
    out = messages_for(item, "corea", history=HISTORY)
    assert out == [{"role": "system", "content": "Answer in French.\n\nBe brief."},
                   HISTORY[1], HISTORY[2], alone[-1]]
    assert "Example." in out[-1]["content"] and out[-1]["content"].endswith("Problem: " + QUESTION)
    # COREA's system message stays first, the client's texts follow it in their order.
    out = messages_for(item, "corea", system_prompt="You are careful.", history=HISTORY)
    assert out[0] == {"role": "system", "content": "You are careful.\n\nAnswer in French.\n\nBe brief."}
    assert out[1:] == [HISTORY[1], HISTORY[2], alone[-1]]
    # Turns alone: the preset's messages around them, unchanged.
    out = messages_for(item, "corea", system_prompt="You are careful.", history=HISTORY[1:3])
    assert out == [{"role": "system", "content": "You are careful."}, HISTORY[1], HISTORY[2], alone[-1]]


@pytest.mark.parametrize("turn, match", [
    ({"role": "developer", "content": "x"}, r"history\[1\]\.role: expected 'system', 'user' or 'assistant', found 'developer'"),
    ({"role": "tool", "content": "x"}, r"history\[1\]\.role: .*found 'tool'"),
    ({"role": "user", "content": None}, r"history\[1\]\.content: expected a string, found NoneType")])
def test_messages_for_refuses_a_turn_it_cannot_place(turn, match):
    from corea_jax.cascade.backends import messages_for
    from corea_jax.cascade.datasets import Item

    with pytest.raises(ValueError, match=match):
        messages_for(Item("t/0", QUESTION, "72", "gsm8k"), "corea", history=[HISTORY[1], turn])
