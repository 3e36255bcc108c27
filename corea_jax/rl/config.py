"""The training config: every field with its default, and the checks run before any compile.

Config files (`configs/*.py`) start from `defaults()` and change fields; `validate` rejects
a field `defaults()` does not have (a typo would otherwise be silently ignored) and any
value the trainer cannot use, naming the field and what it expects.
"""

from __future__ import annotations

import json

import ml_collections

from corea_jax import rewards
from corea_jax.data import validate_data_config
from corea_jax.settings import check_fields, expect, is_int as _is_int
from corea_jax.rl import grpo
from corea_jax.rl.train_state import SCHEDULES, schedule_uses_run_length

MODES = ("grpo", "sft")
BEHAVIOUR_LOGPROBS = ("trainer", "sampler")
TASKS = ("gsm8k", "math", "choice")


def defaults() -> ml_collections.ConfigDict:
    """All fields, with the values of a small CPU run on the toy task."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.mode = "grpo"  # "grpo" (rollouts + RL) or "sft" (supervised on formatted gold answers)
    c.total_steps = 100

    # "toy" (random init, toy vocabulary), a corea_jax.models.fetch registry name, a local
    # HF directory / .gguf file, or a hub id.
    c.model = ml_collections.ConfigDict(dict(
        name="toy",
        dtype="float32",  # matmul (compute) dtype, also of the rollouts
        param_dtype="float32",  # master weights and optimizer state; keep float32 under bfloat16
        # compute: a 1e-6 learning-rate step is below bfloat16's resolution of a weight
        remat=False,
        # The training layout (`models.model.training_layout` when None: the fastest
        # measured on this platform). scan_layers True stacks the layers under one scan (one
        # compiled layer: fast compiles, the default on accelerators); False unrolls them (no
        # per-layer slicing and stacking of weights and gradients: faster updates on a CPU).
        # feature_major: [out, in] MLP and LM-head kernels (faster on a CPU for models >= 512
        # wide). Same model either way (up to float rounding): a run resumes in another
        # layout, its checkpoint converted. Sampling converts to its own layout.
        scan_layers=ml_collections.config_dict.placeholder(bool),
        feature_major=ml_collections.config_dict.placeholder(bool),
        toy=dict(hidden_size=64, num_layers=2, num_heads=4)))

    c.data = ml_collections.ConfigDict(dict(
        source="arithmetic", subset="", split="train", question_field="question",
        answer_field="answer", limit=0,
        task="gsm8k",  # grading task (corea_jax.grading.TASKS)
        prompt="corea",  # corea_jax.prompts.PROMPTS preset, or "question" (bare); toy: ignored
        arithmetic=dict(num_records=512, max_operand=3, addend=1, seed=0)))

    c.rollout = ml_collections.ConfigDict(dict(
        prompts_per_step=8, group_size=8, max_prompt_length=16, max_new_tokens=3,
        temperature=1.0, top_p=1.0, top_k=0,
        ignore_eos=False,  # always generate max_new_tokens (benchmarks)
        batch_size=64))  # rows per generation batch

    # A preset of corea_jax.rewards.PRESETS; a weight set here replaces the preset's (None: keep it)
    c.reward = ml_collections.ConfigDict(dict(
        preset="rlcc_l1",
        **{field: ml_collections.config_dict.placeholder(float) for field in rewards.WEIGHTS}))

    c.grpo = ml_collections.ConfigDict(dict(
        advantage="std",  # "std": (r - mean) / (std + eps); "mean": r - mean
        advantage_eps=1e-6,
        eps_low=0.2, eps_high=0.28,  # clip-higher (DAPO)
        kl_beta=0.0,  # k3 KL to the initial model; 0 keeps no reference
        aggregation="token_mean",  # grpo.AGGREGATIONS
        filter_tied_groups=True,  # drop groups whose rewards all tie
        behaviour_logprobs="trainer",  # old log-probs: recomputed ("trainer") or the engine's
        num_minibatches=1,  # optimizer steps per epoch over a rollout batch
        num_epochs=1,
        micro_batch_size=64))  # completions per gradient-accumulation micro-batch

    # The confidence SFT targets state: `confidence`, or when `confidence_choices` is non-empty a
    # value drawn from it per target (seeded by (seed, step)): uninformative like a constant,
    # but every value keeps some probability, so RL can explore the stated confidence.
    c.sft = ml_collections.ConfigDict(dict(confidence=0.9, confidence_choices=()))

    c.optim = ml_collections.ConfigDict(dict(
        learning_rate=1e-3, warmup_steps=0, schedule="constant", final_lr_ratio=0.1,
        weight_decay=0.0, b1=0.9, b2=0.999, eps=1e-8, grad_clip=1.0))

    c.checkpoint = ml_collections.ConfigDict(dict(every_steps=10, max_to_keep=2, async_save=False))

    # Peak FLOP/s that MFU is measured against. 6.6e10: `jnp.dot` 2048^2 fp32 measured on the
    # 2-core development CPU (benchmarks/train_step.py measures it afresh).
    c.log = ml_collections.ConfigDict(dict(peak_flops=6.6e10, tensorboard=True))

    # Device mesh (corea_jax.parallel.sharding axes); all ones: one device, no mesh.
    c.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=1, tensor=1))
    return c


def _check_fields(config, reference, path: str) -> None:
    check_fields(config, reference, path, free=("mesh",))


def _expect(ok: bool, field: str, expected: str, found) -> None:
    expect(ok, f"config.{field}", expected, found)


def validate(config: ml_collections.ConfigDict) -> None:
    """Raises ValueError (naming the field) for anything the trainer cannot run. No jax work."""
    _check_fields(config, defaults(), "config")
    _expect(config.mode in MODES, "mode", f"one of {MODES}", config.mode)
    _expect(_is_int(config.total_steps) and config.total_steps >= 1, "total_steps",
            "an integer >= 1", config.total_steps)
    for field in ("dtype", "param_dtype"):
        _expect(config.model[field] in ("float32", "bfloat16", "float16"), f"model.{field}",
                "one of ('float32', 'bfloat16', 'float16')", config.model[field])
    for field in ("scan_layers", "feature_major"):
        _expect(config.model[field] is None or isinstance(config.model[field], bool), f"model.{field}",
                "True, False or None (the platform's fastest)", config.model[field])

    r = config.rollout
    _expect(_is_int(r.group_size) and (r.group_size >= 2 or config.mode == "sft"), "rollout.group_size",
            "an integer >= 2 (GRPO compares completions within a group)", r.group_size)
    for field in ("prompts_per_step", "max_prompt_length", "max_new_tokens", "batch_size"):
        _expect(_is_int(r[field]) and r[field] >= 1, f"rollout.{field}", "an integer >= 1", r[field])
    _expect(r.temperature > 0, "rollout.temperature", "a number > 0 (RL samples)", r.temperature)
    _expect(0 < r.top_p <= 1, "rollout.top_p", "a number in (0, 1]", r.top_p)
    _expect(_is_int(r.top_k) and r.top_k >= 0, "rollout.top_k", "an integer >= 0", r.top_k)
    if config.mode == "grpo":
        # The trainer scores softmax(logits / T); a filtered rollout was drawn from another
        # distribution, so its importance ratios would be against the wrong one.
        _expect(r.top_p == 1, "rollout.top_p", "1.0 in a GRPO config (the loss's log-probs are "
                "under softmax(logits / temperature), unfiltered)", r.top_p)
        _expect(r.top_k == 0, "rollout.top_k", "0 in a GRPO config (the loss's log-probs are "
                "under softmax(logits / temperature), unfiltered)", r.top_k)

    _expect(config.reward.preset in rewards.PRESETS, "reward.preset",
            f"one of {sorted(rewards.PRESETS)}", config.reward.preset)
    for field in rewards.WEIGHTS:
        value = config.reward[field]
        _expect(value is None or (isinstance(value, (int, float)) and 0 <= value < float("inf")),
                f"reward.{field}", "None (the preset's) or a finite number >= 0", value)
    if config.reward.preset in rewards.PRESETS:
        _expect(not (rewards.PRESETS[config.reward.preset].calibration_weight == 0
                     and config.reward.calibration_weight),
                "reward.calibration_weight", f"None or 0 with preset {config.reward.preset!r}, which "
                "asks for no confidence (choose a preset with a calibration term)",
                config.reward.calibration_weight)
    d = config.data
    _expect(d.task in TASKS, "data.task", f"one of {TASKS}", d.task)
    from corea_jax import prompts

    presets = sorted(prompts.PROMPTS) + ["question"]
    _expect(d.prompt in presets, "data.prompt", f"one of {presets}", d.prompt)
    validate_data_config(d)
    if config.model.name == "toy":
        _expect(d.source == "arithmetic", "data.source", "'arithmetic' (the toy model reads only "
                "toy questions)", d.source)

    g = config.grpo
    _expect(g.advantage in grpo.ADVANTAGES, "grpo.advantage", f"one of {grpo.ADVANTAGES}", g.advantage)
    _expect(g.aggregation in grpo.AGGREGATIONS, "grpo.aggregation", f"one of {grpo.AGGREGATIONS}",
            g.aggregation)
    _expect(g.behaviour_logprobs in BEHAVIOUR_LOGPROBS, "grpo.behaviour_logprobs",
            f"one of {BEHAVIOUR_LOGPROBS}", g.behaviour_logprobs)
    _expect(0 <= g.eps_low < 1, "grpo.eps_low", "a number in [0, 1)", g.eps_low)
    _expect(g.eps_high >= 0, "grpo.eps_high", "a number >= 0", g.eps_high)
    _expect(g.kl_beta >= 0, "grpo.kl_beta", "a number >= 0", g.kl_beta)
    _expect(g.advantage_eps > 0, "grpo.advantage_eps", "a number > 0", g.advantage_eps)
    for field in ("num_minibatches", "num_epochs", "micro_batch_size"):
        _expect(_is_int(g[field]) and g[field] >= 1, f"grpo.{field}", "an integer >= 1", g[field])
    _expect(r.prompts_per_step % g.num_minibatches == 0, "grpo.num_minibatches",
            f"a divisor of rollout.prompts_per_step = {r.prompts_per_step}", g.num_minibatches)
    group = 1 if config.mode == "sft" else r.group_size
    from corea_jax.rl.batching import check_micro_batch_size

    check_micro_batch_size(g.micro_batch_size, group, r.prompts_per_step // g.num_minibatches * group)

    for i, value in enumerate((config.sft.confidence, *config.sft.confidence_choices)):
        _expect(isinstance(value, (int, float)) and 0 <= value <= 1,
                "sft.confidence" if i == 0 else f"sft.confidence_choices[{i - 1}]", "a number in [0, 1]", value)

    o = config.optim
    _expect(o.learning_rate > 0, "optim.learning_rate", "a number > 0", o.learning_rate)
    _expect(o.schedule in SCHEDULES, "optim.schedule", f"one of {SCHEDULES}", o.schedule)
    _expect(_is_int(o.warmup_steps) and o.warmup_steps >= 0, "optim.warmup_steps", "an integer >= 0",
            o.warmup_steps)
    _expect(0 <= o.final_lr_ratio <= 1, "optim.final_lr_ratio", "a number in [0, 1]", o.final_lr_ratio)
    _expect(o.grad_clip >= 0, "optim.grad_clip", "a number >= 0 (0: off)", o.grad_clip)
    _expect(o.weight_decay >= 0, "optim.weight_decay", "a number >= 0", o.weight_decay)

    ck = config.checkpoint
    _expect(_is_int(ck.every_steps) and ck.every_steps >= 1, "checkpoint.every_steps", "an integer >= 1",
            ck.every_steps)
    _expect(_is_int(ck.max_to_keep) and ck.max_to_keep >= 1, "checkpoint.max_to_keep", "an integer >= 1",
            ck.max_to_keep)
    _expect(config.log.peak_flops > 0, "log.peak_flops", "a number > 0 (FLOP/s)", config.log.peak_flops)

    mesh = dict(config.mesh)
    from corea_jax.parallel import MESH_AXES

    unknown = sorted(set(mesh) - set(MESH_AXES))
    _expect(not unknown, "mesh", f"axes from {MESH_AXES}", unknown)
    for axis, size in mesh.items():
        _expect(_is_int(size) and size >= 1, f"mesh.{axis}", "an integer >= 1", size)


def total_updates(config: ml_collections.ConfigDict) -> int:
    """Optimizer updates in the whole run: total_steps x minibatches x epochs (the learning-rate
    schedule's length; the trainer and the memory planner both read it here)."""
    return config.total_steps * config.grpo.num_minibatches * config.grpo.num_epochs


def loss_config(config: ml_collections.ConfigDict) -> grpo.LossConfig:
    """The GRPO loss settings of a run config (the trainer's and the memory planner's).

    On-policy (ratio 1 exactly, no old log-probs) when the old log-probs would be the
    trainer's own at the sampling params: behaviour_logprobs = "trainer" and one update per
    rollout batch (num_minibatches x num_epochs = 1). Log-probs are taken at the rollout
    temperature.
    """
    g = config.grpo
    return grpo.LossConfig(eps_low=g.eps_low, eps_high=g.eps_high, kl_beta=g.kl_beta,
                           on_policy=g.behaviour_logprobs == "trainer" and g.num_minibatches * g.num_epochs == 1,
                           temperature=float(config.rollout.temperature))


# Groups a resumed run may change: they cannot change its results (mesh: the same programs
# sharded otherwise, equal up to the float reduction order).
RESUMABLE_CHANGES = ("log", "checkpoint", "mesh")
# Fields a resumed run may change: the parameter layout (the same model, its checkpoint
# converted on restore, equal up to float rounding like a changed mesh).
RESUMABLE_FIELDS = ("model.scan_layers", "model.feature_major")


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def resume_differences(saved: dict, config: ml_collections.ConfigDict) -> list[str]:
    """The result-changing fields in which `config` differs from a run's saved config.json
    (`saved`, parsed), each as "config.<field>: <saved> in the workdir, <now> now".

    Every field counts except RESUMABLE_FIELDS and those under RESUMABLE_CHANGES, and
    total_steps only when the learning-rate schedule depends on the run length
    (`schedule_uses_run_length`).
    """
    now = _flat(json.loads(config.to_json_best_effort()))
    before = _flat(saved)
    absent = "<absent>"
    out = []
    for field in sorted(set(now) | set(before)):
        if field.split(".", 1)[0] in RESUMABLE_CHANGES or field in RESUMABLE_FIELDS:
            continue
        if field == "total_steps" and not schedule_uses_run_length(config.optim):
            continue
        if field.startswith("reward.") and before.get(field) is None and now.get(field) is None:
            continue  # a reward weight left to the preset: absent from configs saved before it existed
        if before.get(field, absent) != now.get(field, absent):
            out.append(f"config.{field}: {before.get(field, absent)!r} in the workdir, "
                       f"{now.get(field, absent)!r} now")
    return out
