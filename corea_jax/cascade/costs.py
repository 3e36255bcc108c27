"""What a model call costs, as a function of one record (so a run can be re-costed offline).

  flops  2 x non-embedding parameters x (prompt_tokens + generated_tokens)
         + 2 x LM-head parameters (hidden_size x vocab_size) x generated_tokens:
         the forward pass's weight matmuls (Kaplan et al.'s C = 2N per token through the
         decoder), the head once per generated token (a prefill needs only its last position's
         logits, as in our engine and vLLM); attention scores left out. The head matters for
         small models with large vocabularies: Qwen2.5-Coder-0.5B's is 28% of its per-token
         matmul FLOPs, 1.5B's 15%. A model whose head size is unknown is costed without it, and
         `describe` (in the report) says so.
  price  USD: prompt_tokens x input price + generated_tokens x output price, the prices in USD
         per 1M tokens per model (from the config).
  time   measured wall seconds of the call (a batch's time shared among its items).

A deferred item pays the SLM call it already made plus the LLM call (`report` adds them).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

COST_MODELS = ("flops", "price", "time")


def lm_head_params(model_config) -> int:
    """hidden_size x vocab_size: the LM head's matmul, run per generated token even when the
    head's weights are tied to the embedding's."""
    return int(model_config.hidden_size) * int(model_config.vocab_size)


@dataclasses.dataclass(frozen=True)
class CostModel:
    """name: one of COST_MODELS. params: model -> non-embedding parameters (flops).
    prices: model -> (USD per 1M input tokens, USD per 1M output tokens) (price).
    head_params: model -> LM-head parameters, hidden_size x vocab_size (flops; `lm_head_params`)."""

    name: str
    params: dict = dataclasses.field(default_factory=dict)
    prices: dict = dataclasses.field(default_factory=dict)
    head_params: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if self.name not in COST_MODELS:
            raise ValueError(f"cost_model: expected one of {COST_MODELS}, found {self.name!r}")
        for model, value in self.params.items():
            if value is not None and not (isinstance(value, (int, float)) and value > 0):
                raise ValueError(f"{model}.non_embedding_params: expected a number > 0, found {value!r}")
        for model, value in self.head_params.items():
            if value is not None and not (isinstance(value, (int, float)) and value > 0):
                raise ValueError(f"{model}.lm_head_params: expected a number > 0 "
                                 f"(hidden_size x vocab_size), found {value!r}")
        for model, value in self.prices.items():
            if value is not None and (len(value) != 2 or any(not (p >= 0) for p in value)):
                raise ValueError(f"{model}.price_per_million: expected (input, output) USD >= 0, "
                                 f"found {value!r}")

    def __call__(self, record: dict) -> float:
        """The cost of the call behind `record` (fields model, prompt_tokens, generated_tokens,
        seconds)."""
        model = record["model"]
        if self.name == "time":
            return float(record["seconds"])
        tokens_in, tokens_out = record["prompt_tokens"], record["generated_tokens"]
        if self.name == "flops":
            params = self.params.get(model)
            if params is None:
                raise ValueError(f"{model}.non_embedding_params: needed by the flops cost model "
                                 "(a served model's count is not known; set it in the config)")
            head = self.head_params.get(model) or 0
            return 2.0 * params * (tokens_in + tokens_out) + 2.0 * head * tokens_out
        price = self.prices.get(model)
        if price is None:
            raise ValueError(f"{model}.price_per_million: needed by the price cost model, "
                             "expected (USD per 1M input tokens, USD per 1M output tokens)")
        return (tokens_in * price[0] + tokens_out * price[1]) / 1e6

    def with_lm_heads(self, head_params: dict) -> "CostModel":
        """This model with LM-head sizes added for the models it lacks them for (falsy: unknown)."""
        known = {m: v for m, v in self.head_params.items() if v}
        return dataclasses.replace(self, head_params={**{m: v for m, v in head_params.items() if v}, **known})

    def describe(self, models: Sequence[str] = ("slm", "llm")) -> str:
        """What a cost counts, in a sentence for the report."""
        if self.name == "time":
            return "measured wall seconds of each call (a batch's time shared among its items)"
        if self.name == "price":
            return "USD: prompt tokens x input price + generated tokens x output price (per 1M tokens, from the config)"
        counted = [f"{m} {_millions(self.head_params[m])}" for m in models if self.head_params.get(m)]
        missing = [m for m in models if not self.head_params.get(m)]
        text = ("FLOPs = 2 x non-embedding parameters x (prompt + generated tokens) + 2 x LM-head "
                "parameters (hidden x vocab) x generated tokens (weight matmuls; attention scores "
                "left out)")
        if counted:
            text += f"; LM head counted for {', '.join(counted)} parameters"
        if missing:
            text += (f"; LM head NOT counted for {', '.join(missing)} (size unknown: set "
                     f"{'/'.join(missing)}.lm_head_params)")
        return text

    @property
    def unit(self) -> str:
        return {"flops": "FLOPs", "price": "USD", "time": "s"}[self.name]


def format_cost(value: float | None, unit: str) -> str:
    """A cost for a table: 1.2e12 FLOPs -> '1.20 TFLOPs', USD with 4 significant digits."""
    if value is None or not math.isfinite(value):
        return "-"
    if unit == "FLOPs":
        for scale, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M")):
            if abs(value) >= scale:
                return f"{value / scale:.2f} {prefix}FLOPs"
        return f"{value:.3g} FLOPs"
    if unit == "USD":
        return f"${value:.4g}"
    return f"{value:.2f} s"


def _millions(n: float) -> str:
    """136.1M, or 20.5k below 0.1M (the toy's LM heads)."""
    return f"{n / 1e6:.1f}M" if n >= 1e5 else f"{n / 1e3:.1f}k"
