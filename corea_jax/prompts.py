"""Prompt templates: the chat messages that ask for reasoning, a boxed answer and a confidence.

Formats (presets in `PROMPTS`):
  corea  step-by-step reasoning, `\\boxed{answer}`, last line `Confidence: <0..1>`.
  rlvr   the same without the confidence line.
  choice multiple choice: the option letter boxed, then the confidence line.
  question  the problem alone, no instruction (models trained on the format).

Small instruct models (Qwen2.5-Coder-0.5B/1.5B on GSM8K) box the confidence, or box it
instead of the answer; the instruction therefore says in words which goes where and,
by default, shows a short worked example of the expected ending.

Two-turn elicitation: ask with a format that has no confidence (`rlvr`), let the model
answer, then `followup_messages` appends that answer and a turn asking only for the
confidence. `followup_suffix` gives the text to feed after the answer when the first
turn's KV cache is reused.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

Message = dict[str, str]

CHOICE_LETTERS = "ABCDE"

_REASON = "Solve the problem step by step."
_ANSWER = "Put your final answer inside \\boxed{}."
_CHOICE_ANSWER = "Put the letter of the correct option inside \\boxed{}."
_CONFIDENCE = (
    "Then, on the last line, write how confident you are that your final answer is "
    "correct, in the form `Confidence: <number between 0 and 1>`. "
    "Box only the answer, never the confidence."
)
_EXAMPLE_QUESTION = "A shelf holds 3 rows of 8 books. 5 books are taken away. How many books are left?"
_EXAMPLE_REASONING = "The shelf holds 3 * 8 = 24 books. After 5 are taken away, 24 - 5 = 19 books are left."
_CHOICE_EXAMPLE_QUESTION = (
    "Which number is prime?\nA. 21\nB. 23\nC. 25\nD. 27"
)
_CHOICE_EXAMPLE_REASONING = "21 = 3 * 7, 25 = 5 * 5 and 27 = 3 * 9, while 23 has no divisor other than 1 and itself."

CONFIDENCE_FOLLOWUP = (
    "How likely is it that your final answer above is correct? Reply with one line only, "
    "in the form `Confidence: <number between 0 and 1>`. "
    "Do not repeat the answer and do not use \\boxed{}."
)


@dataclasses.dataclass(frozen=True)
class PromptConfig:
    """What the instruction asks for.

    ask_confidence: ask for the `Confidence:` line (RLCC / COREA) or not (RLVR).
    multiple_choice: the answer is an option letter A-E and the options are listed.
    worked_example: append a short solved example showing the expected ending.
    system_prompt: a system message, or None to leave the chat template's default.
    instruction: write the instruction; False sends the problem alone (models whose SFT taught
      them the format, such as the reproduction's from-scratch models).
    """

    ask_confidence: bool = True
    multiple_choice: bool = False
    worked_example: bool = True
    system_prompt: str | None = None
    instruction: bool = True


PROMPTS: dict[str, PromptConfig] = {
    "corea": PromptConfig(),
    "rlvr": PromptConfig(ask_confidence=False),
    "choice": PromptConfig(multiple_choice=True),
    # The question alone as the user turn (the trainer's data.prompt = "question").
    "question": PromptConfig(instruction=False, worked_example=False),
}


def get_prompt_config(name: str) -> PromptConfig:
    """The preset `name` from `PROMPTS`; ValueError naming the valid ones otherwise."""
    if name not in PROMPTS:
        raise ValueError(f"unknown prompt preset name={name!r}; valid: {sorted(PROMPTS)}")
    return PROMPTS[name]


def _example(cfg: PromptConfig) -> str:
    """A solved example showing the ending the parser expects."""
    if cfg.multiple_choice:
        question, reasoning, answer = _CHOICE_EXAMPLE_QUESTION, _CHOICE_EXAMPLE_REASONING, "B"
    else:
        question, reasoning, answer = _EXAMPLE_QUESTION, _EXAMPLE_REASONING, "19"
    lines = [
        "Example.",
        f"Problem: {question}",
        f"Solution: {reasoning}",
        f"The final answer is \\boxed{{{answer}}}.",
    ]
    if cfg.ask_confidence:
        lines.append("Confidence: 0.9")
    return "\n".join(lines)


def instruction(cfg: PromptConfig) -> str:
    """The instruction text that follows the problem in the user turn."""
    parts = [_REASON, _CHOICE_ANSWER if cfg.multiple_choice else _ANSWER]
    if cfg.ask_confidence:
        parts.append(_CONFIDENCE)
    text = " ".join(parts)
    if cfg.worked_example:
        text += "\n\n" + _example(cfg)
    return text


def format_choices(choices: Sequence[str]) -> str:
    """Options as lines `A. first`, `B. second`, ...; 2 to 5 options."""
    if not 2 <= len(choices) <= len(CHOICE_LETTERS):
        raise ValueError(f"choices must hold 2 to {len(CHOICE_LETTERS)} options, got {len(choices)}")
    return "\n".join(f"{letter}. {text}" for letter, text in zip(CHOICE_LETTERS, choices))


def build_messages(
    question: str, cfg: PromptConfig = PROMPTS["corea"], choices: Sequence[str] | None = None
) -> list[Message]:
    """Chat messages for one problem: [system?, user].

    choices: the options of a multiple-choice problem (required iff
    cfg.multiple_choice); they are listed after the question as `A. ...`.
    """
    if cfg.multiple_choice != (choices is not None):
        raise ValueError(
            f"choices must be given exactly when cfg.multiple_choice is True "
            f"(multiple_choice={cfg.multiple_choice}, choices={'given' if choices is not None else None})"
        )
    problem = question.strip()
    if choices is not None:
        problem += "\n" + format_choices(choices)
    messages: list[Message] = []
    if cfg.system_prompt is not None:
        messages.append({"role": "system", "content": cfg.system_prompt})
    # Instruction (and worked example) first, the problem last: small models that saw the
    # example last copied its ending ("Confidence: 0.9") instead of solving the problem.
    content = f"{instruction(cfg)}\n\nProblem: {problem}" if cfg.instruction else problem
    messages.append({"role": "user", "content": content})
    return messages


def render(tokenizer: Any, messages: Sequence[Message]) -> str:
    """The prompt text for `messages`, ending where the assistant starts to write.

    Uses the tokenizer's chat template; a tokenizer without one raises transformers'
    ValueError.
    """
    return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)


def build_prompt(
    tokenizer: Any,
    question: str,
    cfg: PromptConfig = PROMPTS["corea"],
    choices: Sequence[str] | None = None,
) -> str:
    """`render(tokenizer, build_messages(question, cfg, choices))`."""
    return render(tokenizer, build_messages(question, cfg, choices))


def followup_messages(first_turn: Sequence[Message], answer: str) -> list[Message]:
    """Messages for the confidence-only second turn.

    first_turn: the messages that produced `answer` (usually built with the `rlvr`
    preset, so the answer holds no confidence yet).
    answer: the model's reply to them, as generated.
    Returns first_turn + [assistant: answer, user: CONFIDENCE_FOLLOWUP].
    """
    return [
        *first_turn,
        {"role": "assistant", "content": answer},
        {"role": "user", "content": CONFIDENCE_FOLLOWUP},
    ]


def followup_suffix(tokenizer: Any, first_turn: Sequence[Message], answer: str) -> str:
    """Text to feed after `render(first_turn) + answer` to reach the follow-up prompt.

    With the first turn's KV cache kept, only this suffix (end of the assistant turn,
    the follow-up question, the new generation prompt) needs a forward pass. Raises
    ValueError if the chat template rewrites the earlier turns (some templates drop
    reasoning from past assistant messages); then re-encode the whole follow-up.
    """
    prefix = render(tokenizer, first_turn) + answer
    full = render(tokenizer, followup_messages(first_turn, answer))
    if not full.startswith(prefix):
        raise ValueError(
            "the chat template does not extend the first turn verbatim; "
            "render followup_messages(...) in full instead of reusing the cache"
        )
    return full[len(prefix) :]
