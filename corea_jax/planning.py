"""Will a config fit? Ahead-of-time compiles of its programs on abstract arrays of the full model.

`plan(config, mesh, device_memory_bytes)` lowers and compiles, on `ShapeDtypeStruct`s that
carry their shardings (no weight is allocated), the programs a config runs:

  training config (config.rollout / config.grpo): the update step (`rl.update.sharded_update_step`,
    one optimizer step over the config's micro-batches, float32 master weights under the
    compute dtype, remat as configured) and the rollout generation (the engine's
    `generation.GenerationProgram`, prefill + decode loop over config.rollout.batch_size
    rows, while the train state stays resident);
  generation config (config.generation): the generation program at its batch and lengths.

It sits above `rl` and `generation` (it composes their programs) and is what
`python -m launch.plan` runs.

Memory is `compiled.memory_analysis()`: for an SPMD program these are the sizes of ONE
device's buffers (arguments, outputs, temporaries; aliased = donated outputs that reuse an
argument's buffer), checked in tests/test_planning.py against sharded vs unsharded
arguments. A program's peak is arguments + outputs + temporaries - aliased. The compile
runs on CPU devices, whose XLA compiler fuses and schedules differently from GPU/TPU
compilers, so the temporaries are an estimate (arguments and outputs are exact).

FLOPs: the model FLOPs of `corea_jax.rl.flops` (whole mesh, per program call), and the
compiled program's own count per device (`cost_analysis`; XLA counts a loop body once).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import numpy as np

from corea_jax.generation import GenerationProgram, SamplingParams
from corea_jax.models import (ARCHITECTURES, architecture, ModelConfig, cache_logical_axes,
                              decoding_feature_major, decoding_scan_layers, param_shapes, param_shardings)
from corea_jax.parallel import sharding as sharding_lib
from corea_jax.rl import (batching, flops, loss_config, total_updates, init_train_state, make_optimizer,
                          train_state_shardings, micro_batch_shardings, sharded_update_step)

GiB = 1024**3


def architecture_name(config) -> str:
    """The `models.architectures` name of config.model: its `architecture` field, else the
    lower-cased hub id's model part ("Qwen/Qwen2.5-7B-Instruct" -> "qwen2.5-7b-instruct")."""
    name = config.model.get("architecture") or str(config.model.name).rsplit("/", 1)[-1].lower()
    if name not in ARCHITECTURES:
        raise ValueError(f"config.model.name: expected a model with known shapes "
                         f"(corea_jax.models.architectures: {sorted(ARCHITECTURES)}), found "
                         f"{config.model.name!r}; set config.model.architecture to one of them")
    return name


def model_config(config) -> ModelConfig:
    """The full-size ModelConfig of config.model (compute dtype, master dtype, remat)."""
    m = config.model
    return architecture(architecture_name(config), dtype=m.dtype).replace(
        param_dtype=m.get("param_dtype", m.dtype), remat=bool(m.get("remat", False)))


def per_device_bytes(abstract_tree) -> int:
    """Bytes one device holds of a pytree of sharded ShapeDtypeStructs (the most loaded device)."""
    total = 0
    for leaf in jax.tree.leaves(abstract_tree):
        shape = leaf.sharding.shard_shape(leaf.shape) if leaf.sharding is not None else leaf.shape
        total += math.prod(shape) * np.dtype(leaf.dtype).itemsize
    return total


def _abstract(tree, shardings):
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


@dataclasses.dataclass
class ProgramPlan:
    """One compiled program: its per-device memory (bytes) and FLOPs."""

    name: str
    argument_bytes: int
    output_bytes: int
    temp_bytes: int
    alias_bytes: int
    resident_bytes: int  # held on device outside this program's arguments (the train state during rollouts)
    model_flops: float  # whole mesh, one call
    compiled_flops_per_device: float
    compile_seconds: float

    @property
    def peak_bytes(self) -> int:
        return (self.argument_bytes + self.output_bytes + self.temp_bytes - self.alias_bytes
                + self.resident_bytes)


def _compile(name: str, lowered_fn, model_flops: float, resident_bytes: int = 0) -> ProgramPlan:
    import time

    start = time.perf_counter()
    compiled = lowered_fn().compile()
    seconds = time.perf_counter() - start
    memory = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return ProgramPlan(name, int(memory.argument_size_in_bytes), int(memory.output_size_in_bytes),
                       int(memory.temp_size_in_bytes), int(memory.alias_size_in_bytes), resident_bytes,
                       float(model_flops), float((cost or {}).get("flops", 0.0)), seconds)


# ------------------------------------------------------------------------ training


def abstract_micro_batches(config) -> dict:
    """ShapeDtypeStructs of one optimizer step's micro-batches, as `rl.batching` builds them."""
    r, g = config.rollout, config.grpo
    group = 1 if config.mode == "sft" else r.group_size
    rows = {"completion_tokens": np.zeros((r.prompts_per_step, group, r.max_new_tokens), np.int32),
            "completion_mask": np.zeros((r.prompts_per_step, group, r.max_new_tokens), bool)}
    if config.mode == "grpo":
        rows["advantages"] = np.zeros((r.prompts_per_step, group), np.float32)
        for field in ("sampler_logprobs", "old_logprobs", "ref_logprobs"):
            rows[field] = np.zeros((r.prompts_per_step, group, r.max_new_tokens), np.float32)
    prompts = np.zeros((r.prompts_per_step, r.max_prompt_length), np.int32)
    first = batching.micro_batches(prompts, prompts.astype(bool), rows, np.ones(r.prompts_per_step, bool),
                                   num_minibatches=g.num_minibatches, micro_batch_size=g.micro_batch_size,
                                   aggregation=g.aggregation, max_length=r.max_new_tokens)[0]
    return {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in first.items()}


def abstract_train_state(config, cfg: ModelConfig, mesh):
    """The sharded abstract TrainState of a training config (master weights + AdamW moments)."""
    tx = make_optimizer(config.optim, total_updates(config))
    state = jax.eval_shape(lambda p: init_train_state(p, tx), param_shapes(cfg))
    return _abstract(state, train_state_shardings(state, param_shardings(cfg, mesh), mesh))


def update_plan(config, cfg: ModelConfig, mesh) -> ProgramPlan:
    state = abstract_train_state(config, cfg, mesh)
    batch = abstract_micro_batches(config)
    batch_shardings = micro_batch_shardings(batch, mesh)
    batch = _abstract(batch, batch_shardings)
    step = sharded_update_step(jax.tree.map(lambda x: x.sharding, state), batch_shardings, mesh,
                               model_config=cfg, loss_config=loss_config(config), objective=config.mode)
    m, k, p = batch["prompt_tokens"].shape
    rows, c = batch["completion_tokens"].shape[1:]
    model_flops = flops.update_flops(cfg, m * k * p, m * rows * c, p, c)

    def lower():
        with sharding_lib.mesh_context(mesh):
            return step.lower(state, batch)

    return _compile("update_step", lower, model_flops)


# ---------------------------------------------------------------------- generation


@dataclasses.dataclass(frozen=True)
class GenerationShape:
    batch_size: int
    prompt_length: int
    max_new_tokens: int
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0


def generation_plan(cfg: ModelConfig, shape: GenerationShape, mesh, resident_bytes: int = 0,
                    name: str = "generate") -> ProgramPlan:
    """The engine's prefill + decode-loop program for `shape.batch_size` rows, weights in the
    compute dtype, the KV cache for the bucketed prompt and new-token lengths."""
    # What `policy.sampling_model` and `load_model` generate with: compute-dtype weights in the
    # mesh's decoding layout.
    cfg = cfg.replace(param_dtype=cfg.dtype, remat=False, scan_layers=decoding_scan_layers(mesh),
                      feature_major=decoding_feature_major(cfg, mesh))
    program = GenerationProgram.for_sampling(cfg, SamplingParams(
        max_new_tokens=shape.max_new_tokens, temperature=shape.temperature, top_k=shape.top_k,
        top_p=shape.top_p))
    args = program.abstract_args(shape.batch_size, shape.prompt_length, mesh)
    sharding_lib.check_divisible(cache_logical_axes(cfg), args[1], mesh)
    b = shape.batch_size
    model_flops = flops.rollout_flops(cfg, b * shape.prompt_length, b * shape.max_new_tokens,
                                      shape.prompt_length, shape.max_new_tokens)

    def lower():
        with sharding_lib.mesh_context(mesh):
            return program.lower(*args)

    return _compile(name, lower, model_flops, resident_bytes)


# ---------------------------------------------------------------------------- plan


def is_generation_config(config) -> bool:
    return "generation" in config


def plan(config, mesh, device_memory_bytes: int) -> dict[str, Any]:
    """Compiles the config's programs on `mesh`; returns the report (see `report_lines`)."""
    cfg = model_config(config)
    programs = []
    if is_generation_config(config):
        gen = config.generation
        programs.append(generation_plan(cfg, GenerationShape(
            gen.batch_size, gen.max_prompt_length, gen.max_new_tokens, gen.temperature, gen.top_k,
            gen.top_p), mesh))
    else:
        r = config.rollout
        state = abstract_train_state(config, cfg, mesh)
        programs.append(update_plan(config, cfg, mesh))
        programs.append(generation_plan(
            cfg, GenerationShape(r.batch_size, r.max_prompt_length, r.max_new_tokens, r.temperature,
                                 r.top_k, r.top_p), mesh, resident_bytes=per_device_bytes(state),
            name="rollout_generate"))
    peak = max(p.peak_bytes for p in programs)
    return {
        "config_model": str(config.model.name), "architecture": architecture_name(config),
        "num_params": cfg.num_params, "mesh": dict(mesh.shape), "devices": int(mesh.size),
        "programs": [dict(dataclasses.asdict(p), peak_bytes=p.peak_bytes) for p in programs],
        "bytes_per_device": int(peak), "device_memory_bytes": int(device_memory_bytes),
        "fits": bool(peak <= device_memory_bytes),
    }


def report_lines(report: dict) -> list[str]:
    """Human-readable lines of a plan report (the JSON line comes after them)."""
    lines = [f"{report['config_model']} ({report['architecture']}, {report['num_params'] / 1e9:.2f}B params) "
             f"on mesh {report['mesh']} ({report['devices']} devices); per-device memory from the "
             "CPU-compiled programs' memory analysis:"]
    for p in report["programs"]:
        lines.append(
            f"  {p['name']:<17} arguments {p['argument_bytes'] / GiB:7.2f} GiB  outputs {p['output_bytes'] / GiB:7.2f} GiB"
            f"  temps {p['temp_bytes'] / GiB:7.2f} GiB  aliased {p['alias_bytes'] / GiB:7.2f} GiB"
            f"  resident {p['resident_bytes'] / GiB:6.2f} GiB  -> peak {p['peak_bytes'] / GiB:7.2f} GiB;"
            f"  model {p['model_flops'] / 1e12:,.1f} TFLOP per call (compiled {p['compiled_flops_per_device'] / 1e12:,.2f}"
            f" TFLOP/device, loops once); compiled in {p['compile_seconds']:.0f} s")
    verdict = "fits" if report["fits"] else "does NOT fit"
    lines.append(f"peak {report['bytes_per_device'] / GiB:.2f} GiB per device of "
                 f"{report['device_memory_bytes'] / GiB:.2f} GiB: {verdict}")
    return lines
