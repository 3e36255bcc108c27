"""What a caller of the engine passes (`SamplingParams`) and gets back (`Completion`)."""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """How to generate.

    Attributes:
      max_new_tokens: upper bound on generated tokens per completion (> 0).
      temperature: softmax temperature; 0 means greedy decoding.
      top_p: nucleus mass in (0, 1]; 1 disables.
      top_k: keep the k most likely tokens; 0 disables.
      n: completions per prompt.
      stop: strings that end a completion (the text is cut before the first one).
      seed: PRNG seed; the same seed gives the same outputs.
      ignore_eos: keep generating past end-of-sequence tokens (benchmarks).
    """

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    n: int = 1
    stop: tuple[str, ...] = ()
    seed: int = 0
    ignore_eos: bool = False

    def __post_init__(self):
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        else:
            object.__setattr__(self, "stop", tuple(self.stop))
        if not isinstance(self.max_new_tokens, (int, np.integer)) or self.max_new_tokens <= 0:
            raise ValueError(f"max_new_tokens: expected an integer > 0, found {self.max_new_tokens!r}")
        if not self.temperature >= 0:
            raise ValueError(f"temperature: expected a number >= 0, found {self.temperature!r}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p: expected a number in (0, 1], found {self.top_p!r}")
        if self.top_k < 0:
            raise ValueError(f"top_k: expected an integer >= 0 (0 = off), found {self.top_k!r}")
        if self.n < 1:
            raise ValueError(f"n: expected an integer >= 1, found {self.n!r}")
        if any(not s for s in self.stop):
            raise ValueError(f"stop: expected non-empty strings, found {self.stop!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclasses.dataclass
class Completion:
    """One generated continuation.

    token_ids and logprobs cover the generated tokens (an ending EOS included); logprobs are
    log-probabilities under the distribution each token was sampled from: softmax(logits / T)
    at temperature T > 0, renormalised over the tokens top-k / top-p keep when they filter;
    greedy decoding (T = 0) reports softmax(logits), temperature 1. The RL trainer scores its
    log-probs at the rollout temperature (and refuses top-k / top-p), so the two agree.
    """

    text: str
    token_ids: list[int]
    logprobs: list[float]
    finish_reason: str  # "stop" (EOS or a stop string) or "length"
    num_prompt_tokens: int
    num_generated_tokens: int
