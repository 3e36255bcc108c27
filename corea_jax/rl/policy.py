"""The policy model of a run and how its prompts and SFT targets are written.

`build_model` gives a `corea_jax.Model` for config.model.name: "toy" (a tiny random-init
decoder over `ToyTokenizer`), a `corea_jax.models.fetch` registry name, a local HF
directory or .gguf file, or a hub id.
"""

from __future__ import annotations

import functools
import re

import jax
import numpy as np

from corea_jax import prompts
from corea_jax.data import Record, ToyTokenizer, num_answers, toy_model_config
from corea_jax.generation import chat_token_ids
from corea_jax.models import ModelConfig, relayout
from corea_jax.models import (Model, decoding_feature_major, decoding_scan_layers, init_params, load_model,
                              param_shardings, training_layout, training_scan_layers)


def build_model(config, mesh=None) -> Model:
    """The initial policy (also the KL reference when kl_beta > 0): weights stored in
    config.model.param_dtype, matmuls in config.model.dtype, parameters in the run's training layout
    (`run_layout`)."""
    name, dtype, param_dtype = config.model.name, config.model.dtype, config.model.param_dtype
    if name == "toy":
        arithmetic = config.data.arithmetic
        tokenizer = ToyTokenizer(num_answers(arithmetic.max_operand, arithmetic.addend))
        toy = config.model.toy
        model_config = toy_model_config(tokenizer, hidden_size=toy.hidden_size, num_layers=toy.num_layers,
                                        num_heads=toy.num_heads,
                                        max_length=config.rollout.max_prompt_length
                                        + config.rollout.max_new_tokens)
        model_config = model_config.replace(dtype=dtype, param_dtype=param_dtype, remat=config.model.remat)
        # Initialized stacked, then laid out: the seed gives the same weights in either layout.
        params = init_params(model_config, jax.random.key(config.seed))
        model_config, params = relayout(model_config, params, *run_layout(config, model_config, mesh))
        if mesh is not None:
            from corea_jax.parallel import place_tree

            params = place_tree(params, param_shardings(model_config, mesh))
        return Model(model_config, params, tokenizer, mesh)
    from corea_jax.models import fetch

    path = fetch.fetch_model(name, fetch.default_model_dir(name)) if name in fetch.REGISTRY else name
    # Read straight into the run's layout and shardings (load_model's feature_major=None is
    # `decoding_feature_major`, the same rule as `training_layout`'s).
    scan = training_scan_layers(mesh) if config.model.scan_layers is None else bool(config.model.scan_layers)
    model = load_model(path, dtype=param_dtype, mesh=mesh, scan_layers=scan,
                       feature_major=config.model.feature_major)
    assert (model.config.scan_layers, model.config.feature_major) == run_layout(config, model.config, mesh)
    model.config = model.config.replace(dtype=dtype, remat=config.model.remat)
    return model


def run_layout(config, model_config: ModelConfig, mesh) -> tuple[bool, bool]:
    """(scan_layers, feature_major) of a run: config.model's, each None resolved by
    `models.model.training_layout` for this platform."""
    scan, feature_major = training_layout(model_config, mesh)
    pick = lambda value, default: default if value is None else bool(value)  # noqa: E731
    return pick(config.model.scan_layers, scan), pick(config.model.feature_major, feature_major)


def sampling_model(model: Model, params) -> Model:
    """The policy with `params`, for the generation engine, converted once per rollout from
    the training layout (`run_layout`, weights in config.model.param_dtype) into the decoding
    layout (`decoding_scan_layers`: one parameter set per layer unless the mesh shards
    parameters over fsdp; `decoding_feature_major`: [out, in] MLP kernels on a CPU) and cast
    to the compute dtype (the graph casts them at every matmul anyway, so the samples and their
    log-probs are those of the stored weights; a decode step then reads half the bytes)."""
    config = model.config
    scan = decoding_scan_layers(model.mesh)
    if (config.param_dtype == config.dtype and config.scan_layers == scan
            and config.feature_major == decoding_feature_major(config, model.mesh)):
        return Model(config, params, model.tokenizer, model.mesh)
    convert, out_config = _decoding_converter(config, model.mesh)
    return Model(out_config, convert(params), model.tokenizer, model.mesh)


@functools.lru_cache(maxsize=8)
def _decoding_converter(config, mesh):
    """(jitted params -> decoding-layout params, its config), placed by the sharding rules."""
    cast_config = config.replace(param_dtype=config.dtype)
    scan, feature_major = decoding_scan_layers(mesh), decoding_feature_major(config, mesh)
    out_config = cast_config.replace(scan_layers=scan, feature_major=feature_major)

    def convert(params):
        params = jax.tree.map(lambda x: x.astype(config.jnp_dtype), params)
        return relayout(cast_config, params, scan_layers=scan, feature_major=feature_major)[1]

    shardings = None if mesh is None else param_shardings(out_config, mesh)
    return jax.jit(convert, out_shardings=shardings), out_config


BARE_PROMPT = "question"  # the question alone as the user turn, no format instruction


def encode_prompt(model: Model, question: str, prompt_preset: str) -> list[int]:
    """Prompt token ids: the toy encoding, or the chat template over the preset's messages
    (`prompts.PROMPTS`, or "question" for the bare question)."""
    if isinstance(model.tokenizer, ToyTokenizer):
        return model.tokenizer.encode_question(question)
    if prompt_preset == BARE_PROMPT:
        return chat_token_ids(model.tokenizer, [{"role": "user", "content": question}])
    messages = prompts.build_messages(question, prompts.get_prompt_config(prompt_preset))
    return chat_token_ids(model.tokenizer, messages)


_CALCULATOR = re.compile(r"<<[^<>]*>>")


def sft_target_text(record: Record, task: str, confidence: float) -> str:
    """The completion SFT teaches: the gold's reasoning (GSM8K), the boxed answer, the confidence."""
    answer = record.answer
    reasoning = ""
    if task == "gsm8k" and "####" in answer:
        reasoning, answer = answer.rsplit("####", 1)
        reasoning = _CALCULATOR.sub("", reasoning).strip() + "\n"
    return f"{reasoning}The final answer is \\boxed{{{answer.strip()}}}.\nConfidence: {confidence:g}"


def sft_confidences(sft_config, seed: int, step: int, n: int) -> list[float]:
    """The confidences the n SFT targets of `step` state: sft.confidence, or draws from
    sft.confidence_choices (a function of (seed, step), so a resumed run repeats them)."""
    choices = tuple(sft_config.confidence_choices)
    if not choices:
        return [float(sft_config.confidence)] * n
    picks = np.random.default_rng([seed, step, 7]).integers(0, len(choices), size=n)
    return [float(choices[i]) for i in picks]


def sft_completion(model: Model, record: Record, task: str, confidence: float) -> list[int]:
    """Token ids of the SFT target, ending with EOS."""
    tokenizer = model.tokenizer
    if isinstance(tokenizer, ToyTokenizer):
        return tokenizer.encode_completion(record.answer, confidence)
    ids = tokenizer(sft_target_text(record, task, confidence), add_special_tokens=False)["input_ids"]
    eos = model.config.eos_token_ids[0] if model.config.eos_token_ids else tokenizer.eos_token_id
    return list(ids) + ([int(eos)] if eos is not None else [])
