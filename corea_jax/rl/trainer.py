"""The training loop: rollout -> score -> update, with metrics and checkpoints every step.

  train(config, workdir)   runs config.total_steps steps (resuming from workdir's checkpoints)

A GRPO step: read the step's records, sample G completions per prompt with the generation
engine (current params, same `Decoder` graph as the loss), grade and reward them, compute
group advantages, drop groups whose rewards all tie (optional), then make
num_epochs x num_minibatches AdamW updates, each over micro-batches. An SFT step trains on
formatted gold answers with the same batching and update. Everything a step draws at random
comes from fold_in(seed, step), and its records from (seed, step), so a resumed run repeats
an uninterrupted one exactly.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import platform
import time
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from corea_jax import rewards
from corea_jax.data import load_records, step_indices
from corea_jax.generation import SamplingParams
from corea_jax.models import Model, save_hf
from corea_jax.rl import batching, flops, grpo, policy, rollout, scoring
from corea_jax.rl.checkpointing import Checkpointer, key_data, key_from_data, layout_meta
from corea_jax.rl.config import loss_config as run_loss_config, resume_differences, total_updates, validate
from corea_jax.rl.metrics_writer import MetricsWriter
from corea_jax.parallel import global_array, place_tree, mesh_context
from corea_jax.rl.train_state import (TrainState, init_train_state, learning_rate_schedule, make_optimizer,
                                     optimizer_updates, relayout_state, train_state_shardings)
from corea_jax.rl.update import micro_batch_shardings, score_logprobs, sharded_update_step, update_step


def make_run_mesh(config):
    """The config's mesh, or None when every axis is 1 (one device)."""
    shape = {axis: int(size) for axis, size in dict(config.mesh).items()}
    if int(np.prod(list(shape.values()) or [1])) == 1:
        return None
    from corea_jax.parallel import make_mesh

    return make_mesh(shape, jax.devices()[:int(np.prod(list(shape.values())))])


def _place(micro: dict[str, np.ndarray], mesh) -> dict[str, jax.Array]:
    """Micro-batch arrays on device; with a mesh, the row axis (1) over (data, fsdp) when it
    divides, each process transferring only the rows of its own devices."""
    if mesh is None:
        return {k: jnp.asarray(v) for k, v in micro.items()}
    shardings = micro_batch_shardings(micro, mesh)
    return {k: global_array(v, shardings[k]) for k, v in micro.items()}


def make_update_fn(model_config, loss_config: grpo.LossConfig, mesh, state_shardings=None):
    """`update(state, micro_batches, objective) -> (state, metrics)`: `update_step`, or on a
    mesh `sharded_update_step` with the state's and the batch's shardings (one compiled
    program per batch layout and objective)."""
    if mesh is None:
        return lambda state, micro_batches, objective: update_step(
            state, micro_batches, model_config=model_config, loss_config=loss_config, objective=objective)
    compiled: dict = {}

    def update(state, micro_batches, objective):
        layout = (objective, jax.tree.structure(micro_batches),
                  tuple(x.shape for x in jax.tree.leaves(micro_batches)))
        if layout not in compiled:
            compiled[layout] = sharded_update_step(
                state_shardings, micro_batch_shardings(micro_batches, mesh), mesh,
                model_config=model_config, loss_config=loss_config, objective=objective)
        return compiled[layout](state, micro_batches)

    return update


def versions() -> dict[str, str]:
    """Versions of Python and the libraries a run depends on, and the corea_jax commit."""
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for name in ("corea_jax", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "transformers",
                 "numpy", "ml-collections", "datasets", "tensorboardX"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            if name == "corea_jax":
                import corea_jax

                out[name] = corea_jax.__version__
    head = Path(__file__).resolve().parents[2] / ".git" / "HEAD"
    if head.exists():
        ref = head.read_text().strip()
        if ref.startswith("ref: "):
            ref_file = head.parent / ref[5:]
            ref = ref_file.read_text().strip() if ref_file.exists() else ref
        out["git_commit"] = ref
    return out


def check_resumable(workdir: Path, config) -> None:
    """Raises ValueError naming every result-changing field (`rl.config.resume_differences`) in
    which `config` differs from the config.json a run already wrote to `workdir`."""
    saved = workdir / "config.json"
    if not saved.exists():
        return
    differences = resume_differences(json.loads(saved.read_text()), config)
    if differences:
        raise ValueError(f"{workdir} holds a run with another config; resuming it with this one would "
                         "mix two runs (use a new workdir, or these values):\n  " + "\n  ".join(differences))


def check_total_steps(workdir: Path, config) -> None:
    """Raises ValueError naming config.total_steps when it is below the step of the latest
    checkpoint in `workdir` (a run cannot train backwards)."""
    if not (workdir / "checkpoints").is_dir():
        return
    checkpointer = Checkpointer(workdir)
    step = checkpointer.latest_step()
    checkpointer.close()
    if step is not None and config.total_steps < step:
        raise ValueError(f"config.total_steps: expected at least {step}, the step of the latest checkpoint "
                         f"in {checkpointer.directory} (train fewer steps in a new workdir), "
                         f"found {config.total_steps}")


def _model_location(workdir: Path, config, checkpoints: Path, step: int) -> Path:
    """Where a finished run's model is: workdir/hf (transformers format), or for the toy
    model, whose tokenizer is not a transformers one, its last checkpoint."""
    return checkpoints / str(step) if config.model.name == "toy" else workdir / "hf"


def write_run_info(workdir: Path, config) -> None:
    """workdir/config.json and workdir/versions.json."""
    (workdir / "config.json").write_text(config.to_json_best_effort(indent=2) + "\n")
    (workdir / "versions.json").write_text(json.dumps(versions(), indent=2) + "\n")


# --------------------------------------------------------------------------- one step


@dataclasses.dataclass(frozen=True)
class StepContext:
    """What every step of a run shares besides the train state.

    base_key: PRNG key of config.seed; step s samples with fold_in(base_key, s).
    update: `make_update_fn(...)`, the run's (possibly sharded) update step.
    ref_params: the initial params (the KL reference), or None when kl_beta is 0.
    """

    base_key: jax.Array
    reward_config: rewards.RewardConfig
    loss_config: grpo.LossConfig
    update: Callable = None  # make_update_fn(...)
    ref_params: Any = None


def _step_seed(base_key: jax.Array, step: int) -> int:
    return int(jax.random.randint(jax.random.fold_in(base_key, step), (), 0, 2**31 - 1))


def _sum_update_metrics(all_metrics: list[dict]) -> dict[str, float]:
    host = [jax.device_get(m) for m in all_metrics]
    out = {k: float(sum(m[k] for m in host)) for k in host[0]}
    out["loss"] /= len(host)
    out["grad_norm"] /= len(host)
    return out


def _step_prompts(model: Model, records, step: int, config):
    """This step's records (a deterministic function of the step) and their prompt token ids."""
    idx = step_indices(len(records), step, config.rollout.prompts_per_step, config.seed)
    batch_records = [records[i] for i in idx]
    return batch_records, [policy.encode_prompt(model, rec.question, config.data.prompt) for rec in batch_records]


def grpo_step(state: TrainState, model: Model, records, step: int, config, ctx: StepContext):
    """One rollout -> score -> update step: (new state, metrics)."""
    r, g = config.rollout, config.grpo
    t0 = time.perf_counter()
    batch_records, prompt_ids = _step_prompts(model, records, step, config)
    sampling = SamplingParams(max_new_tokens=r.max_new_tokens, temperature=r.temperature, top_p=r.top_p,
                              top_k=r.top_k, n=r.group_size, seed=_step_seed(ctx.base_key, step),
                              ignore_eos=r.ignore_eos)
    policy_model = policy.sampling_model(model, state.params)
    roll = rollout.sample_groups(policy_model, prompt_ids, sampling, prompt_length=r.max_prompt_length,
                                 batch_size=r.batch_size)
    t1 = time.perf_counter()

    texts = scoring.decode_completions(model.tokenizer, roll.completion_tokens, roll.completion_mask)
    scores = scoring.score_texts(texts, [rec.answer for rec in batch_records], config.data.task,
                                 ctx.reward_config)
    advantages = grpo.group_advantages(scores["total"], g.advantage, g.advantage_eps)
    tied = grpo.tied_groups(scores["total"])
    keep = ~tied if g.filter_tied_groups else np.ones_like(tied)
    t2 = time.perf_counter()

    rows = {"completion_tokens": roll.completion_tokens, "completion_mask": roll.completion_mask,
            "advantages": advantages, "sampler_logprobs": roll.sampler_logprobs,
            "old_logprobs": roll.sampler_logprobs, "ref_logprobs": np.zeros_like(roll.sampler_logprobs)}
    minibatches = batching.micro_batches(
        roll.prompt_tokens, roll.prompt_mask, rows, keep, num_minibatches=g.num_minibatches,
        micro_batch_size=g.micro_batch_size, aggregation=g.aggregation, max_length=r.max_new_tokens)
    state, update_metrics, scoring_passes = _grpo_updates(
        state, [_place(mb, model.mesh) for mb in minibatches], model, config, ctx)
    t3 = time.perf_counter()

    metrics = scoring.reward_metrics(scores)
    lengths = roll.lengths
    metrics.update(update_metrics)
    metrics.update(
        response_length=float(lengths.mean()), response_length_max=int(lengths.max()),
        truncated_rate=float(np.mean(~roll.hit_eos)),
        zero_variance_groups=float(np.mean(tied)), groups_trained=int(keep.sum()))
    metrics.update(_cost_metrics(model.config, config, roll, keep, scoring_passes,
                                 did_update=bool(keep.any()), times=(t0, t1, t2, t3)))
    return state, metrics


def _grpo_updates(state: TrainState, minibatches: list[dict], model: Model, config, ctx: StepContext):
    """num_epochs x len(minibatches) AdamW updates (`minibatches` holds only optimizer batches
    with a kept group): (state, metrics, forward-only passes run, each over every kept group).

    The sampler-vs-trainer log-prob gap is measured where the trainer's log-probs at the
    sampling params are at hand: the recomputed old log-probs, else the first update.
    """
    g = config.grpo
    nan = float("nan")
    if not minibatches:  # every group tied and was filtered: nothing to learn from
        return state, dict(loss=0.0, grad_norm=0.0, clip_fraction=0.0, ratio_mean=1.0, kl=0.0,
                           entropy=nan, trainer_logprob_mean=nan, sampler_logprob_gap=nan), 0
    gap, all_metrics = None, []
    with mesh_context(model.mesh):
        recompute_old = g.behaviour_logprobs == "trainer" and not ctx.loss_config.on_policy
        for mb in minibatches:
            if recompute_old:
                mb["old_logprobs"] = score_logprobs(state.params, mb, model_config=model.config,
                                                    temperature=ctx.loss_config.temperature)
            if g.kl_beta:
                mb["ref_logprobs"] = score_logprobs(ctx.ref_params, mb, model_config=model.config,
                                                    temperature=ctx.loss_config.temperature)
        # The minibatches together hold the kept groups once: one pass per kind of log-prob.
        passes = int(recompute_old) + int(bool(g.kl_beta))
        if recompute_old:
            tokens = sum(float(jnp.sum(mb["completion_mask"])) for mb in minibatches)
            gap = sum(float(jnp.sum(jnp.abs(mb["old_logprobs"] - mb["sampler_logprobs"])
                                    * mb["completion_mask"])) for mb in minibatches) / max(tokens, 1.0)
        for _ in range(g.num_epochs):
            for mb in minibatches:
                state, m = ctx.update(state, mb, "grpo")
                all_metrics.append(m)
                if gap is None:
                    first = jax.device_get(m)
                    gap = float(first["sampler_gap"] / max(first["tokens"], 1.0))
        jax.block_until_ready(state.params)
    u = _sum_update_metrics(all_metrics)
    tokens = max(u["tokens"], 1.0)
    return state, dict(loss=u["loss"], grad_norm=u["grad_norm"], clip_fraction=u["clipped"] / tokens,
                       ratio_mean=u["ratio"] / tokens, kl=u["kl"] / tokens, entropy=u["entropy"] / tokens,
                       trainer_logprob_mean=u["logprob"] / tokens, sampler_logprob_gap=gap), passes


def _cost_metrics(model_config, config, roll: rollout.Rollout, keep: np.ndarray, scoring_passes: int, *,
                  did_update: bool, times: tuple[float, float, float, float]) -> dict[str, float]:
    """Step time split, throughput and MFU against config.log.peak_flops.

    Model FLOPs: sampling prefills each prompt once (its G samples share the prefill) and
    runs a forward per generated token; the update runs a prompt once per micro-batch chunk
    of a kept group (forward + backward), plus `scoring_passes` forward-only passes, each
    over every kept group.
    """
    r, g = config.rollout, config.grpo
    t0, t1, t2, t3 = times
    prompt_lens, lengths = roll.prompt_mask.sum(-1), roll.lengths
    chunks = r.group_size // min(r.group_size, g.micro_batch_size)
    gen_tokens = int(lengths.sum())
    rollout_f = flops.rollout_flops(model_config, int(prompt_lens.sum()), gen_tokens,
                                    float(prompt_lens.mean()), float(lengths.mean()))
    one_update = flops.update_flops(model_config, int(prompt_lens[keep].sum()) * chunks,
                                    int(lengths[keep].sum()), float(prompt_lens.mean()), float(lengths.mean()))
    update_f = (one_update * g.num_epochs + one_update / 3 * scoring_passes) if did_update else 0.0
    step_time, peak = t3 - t0, config.log.peak_flops
    return dict(
        time_generation=t1 - t0, time_scoring=t2 - t1, time_update=t3 - t2, time_step=step_time,
        tokens_per_s=(int(prompt_lens.sum()) * r.group_size + gen_tokens) / step_time,
        generation_tokens_per_s=gen_tokens / (t1 - t0),
        mfu_update=update_f / (t3 - t2) / peak if did_update else 0.0,
        mfu=(rollout_f + update_f) / step_time / peak,
        model_tflops=(rollout_f + update_f) / 1e12)


def sft_step(state: TrainState, model: Model, records, step: int, config, ctx: StepContext):
    """One supervised step on formatted gold answers (loss on completion tokens only)."""
    r, g = config.rollout, config.grpo
    t0 = time.perf_counter()
    batch_records, prompt_ids = _step_prompts(model, records, step, config)
    confidences = policy.sft_confidences(config.sft, config.seed, step, len(batch_records))
    targets = [policy.sft_completion(model, rec, config.data.task, c)
               for rec, c in zip(batch_records, confidences)]
    pad_id = model.config.pad_token_id if model.config.pad_token_id is not None else 0
    prompt_tokens, prompt_mask = rollout.pad_prompts(prompt_ids, r.max_prompt_length, pad_id)
    tokens, mask, _ = rollout.pad_completions([[t] for t in targets], r.max_new_tokens, pad_id)
    minibatches = batching.micro_batches(
        prompt_tokens, prompt_mask, {"completion_tokens": tokens, "completion_mask": mask},
        np.ones(len(targets), bool), num_minibatches=g.num_minibatches, micro_batch_size=g.micro_batch_size,
        aggregation="token_mean", max_length=r.max_new_tokens)
    update_metrics = []
    with mesh_context(model.mesh):
        for _ in range(g.num_epochs):
            for mb in minibatches:
                state, m = ctx.update(state, _place(mb, model.mesh), "sft")
                update_metrics.append(m)
        jax.block_until_ready(state.params)
    step_time = time.perf_counter() - t0
    u = _sum_update_metrics(update_metrics)
    tokens = max(u["tokens"], 1.0)
    lengths = mask.sum(-1)
    prompt_lens = prompt_mask.sum(-1)
    update_f = g.num_epochs * flops.update_flops(model.config, int(prompt_lens.sum()), int(lengths.sum()),
                                                 float(prompt_lens.mean()), float(lengths.mean()))
    return state, {
        "loss": u["loss"], "grad_norm": u["grad_norm"], "nll": -u["logprob"] / tokens,
        "entropy": u["entropy"] / tokens,
        "truncated_rate": float(np.mean([len(t) > r.max_new_tokens for t in targets])),
        "time_update": step_time, "time_step": step_time,
        "tokens_per_s": float(prompt_lens.sum() + lengths.sum()) / step_time,
        "mfu_update": update_f / step_time / config.log.peak_flops,
        "mfu": update_f / step_time / config.log.peak_flops}


# --------------------------------------------------------------------------- the loop


def restore_checkpoint(checkpointer: Checkpointer, state: TrainState, model_config, mesh,
                       log: Callable[[str], None]) -> tuple[TrainState, dict] | None:
    """The latest checkpoint as a state in `model_config`'s layout (`state`'s), with its
    metadata; None when there is none. A checkpoint in another layout (written on another
    platform, or before the layout default changed) is restored as written, then converted."""
    saved = checkpointer.saved_layout()
    if saved is None:
        return None
    layout = (model_config.scan_layers, model_config.feature_major)
    if saved == layout:
        return checkpointer.restore(state)
    saved_config = model_config.replace(scan_layers=saved[0], feature_major=saved[1])

    def shardings(abstract_state, config):  # where a state in `config`'s layout lives
        if mesh is None:
            return jax.tree.map(lambda _: jax.sharding.SingleDeviceSharding(jax.devices()[0]), abstract_state)
        return train_state_shardings(abstract_state, policy.param_shardings(config, mesh), mesh)

    target = jax.eval_shape(lambda s: relayout_state(s, model_config, *saved), state)
    target = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), target,
                          shardings(target, saved_config))
    restored, meta = checkpointer.restore(target)
    log(f"converting the checkpoint from layout (scan_layers, feature_major) = {saved} to {layout}")
    # No donation: the converted arrays have other shapes, so XLA could not reuse the buffers.
    convert = jax.jit(lambda s: relayout_state(s, saved_config, *layout),
                      out_shardings=shardings(state, model_config))
    return convert(restored), meta


def train(config, workdir: str | Path, *, log: Callable[[str], None] = logging.info,
          on_step: Callable[[int, dict], None] | None = None) -> TrainState:
    """Runs (or resumes) a training run in `workdir`; returns the final train state.

    Everything that can be checked before compiling is: the config (fields and values),
    that it matches the config of a run already in `workdir` (`check_resumable`), the reward
    preset, and the dataset's columns. On several hosts every process runs this (the same
    records, the same steps); only process 0 writes config, metrics and logs.
    """
    validate(config)
    workdir = Path(workdir)
    check_resumable(workdir, config)
    check_total_steps(workdir, config)
    reward_config = rewards.reward_config(config.reward.preset,
                                          **{field: config.reward[field] for field in rewards.WEIGHTS})
    records = load_records(config.data)
    primary = jax.process_index() == 0
    if primary:
        workdir.mkdir(parents=True, exist_ok=True)
        write_run_info(workdir, config)
    else:
        log = lambda _: None  # noqa: E731 - process 0 reports for all

    mesh = make_run_mesh(config)
    model = policy.build_model(config, mesh)
    g = config.grpo
    tx = make_optimizer(config.optim, total_updates(config))
    # Copy: the update donates the state's buffers, and the reference must outlive them.
    ref_params = jax.tree.map(jnp.copy, model.params) if g.kl_beta and config.mode == "grpo" else None
    state = init_train_state(model.params, tx)
    model.params = None  # the state owns the params; updates donate their buffers

    checkpointer = Checkpointer(workdir, max_to_keep=config.checkpoint.max_to_keep,
                                async_save=config.checkpoint.async_save)
    restored = restore_checkpoint(checkpointer, state, model.config, mesh, log)
    base_key = jax.random.key(config.seed)
    if restored is not None:
        state, meta = restored
        if meta.get("seed") != config.seed:
            raise ValueError(f"config.seed: the checkpoints in {workdir} were written with seed "
                             f"{meta.get('seed')}, found {config.seed}")
        base_key = key_from_data(meta["rng_key"])  # the run's own key, whatever derives it
        log(f"resumed from step {int(state.step)} in {checkpointer.directory}")
    if mesh is None:
        # Commit every array to the device: fresh and restored states then share compiled programs.
        state = jax.device_put(state, jax.devices()[0])
        state_shardings = None
    else:
        state_shardings = train_state_shardings(state, policy.param_shardings(model.config, mesh), mesh)
        state = place_tree(state, state_shardings)
    start = int(jax.device_get(state.step))
    if start == config.total_steps:
        log(f"the run in {workdir} is already complete: {start} of {config.total_steps} steps, nothing "
            f"to train (raise config.total_steps to train on); its model: "
            f"{_model_location(workdir, config, checkpointer.directory, start)}")
    writer = MetricsWriter(workdir, resume_step=start, tensorboard=config.log.tensorboard) if primary else None
    loss_config = run_loss_config(config)
    ctx = StepContext(base_key=base_key, reward_config=reward_config, ref_params=ref_params,
                      loss_config=loss_config,
                      update=make_update_fn(model.config, loss_config, mesh, state_shardings))
    schedule = learning_rate_schedule(config.optim, total_updates(config))
    if on_step is not None:
        on_step(start, {})  # where the run starts (a resumed run: its checkpoint's step)
    step_fn = grpo_step if config.mode == "grpo" else sft_step
    try:
        for step in range(start, config.total_steps):
            state, metrics = step_fn(state, model, records, step, config, ctx)
            state = state.replace(step=state.step + 1)
            # The rate of the latest update: the optimizer's own count (tied steps make none).
            metrics["lr"] = float(schedule(max(optimizer_updates(state) - 1, 0)))
            if writer is not None:
                writer.write(step + 1, metrics)
            log(f"step {step + 1}: " + ", ".join(
                f"{k}={metrics[k]:.4g}" for k in ("loss", "reward_mean", "accuracy", "ece", "time_step")
                if k in metrics))
            if on_step is not None:
                on_step(step + 1, metrics)
            if (step + 1) % config.checkpoint.every_steps == 0 or step + 1 == config.total_steps:
                checkpointer.save(state, {"step": step + 1, "seed": config.seed, "rng_key": key_data(base_key),
                                          **layout_meta(model.config)})
    finally:
        checkpointer.wait()
        checkpointer.close()
        if writer is not None:
            writer.close()
    model.params = state.params
    # A complete run wrote its model when it finished (unless killed just before).
    unsaved = start < config.total_steps or not (workdir / "hf").exists()
    if primary and config.model.name != "toy" and unsaved:  # the toy tokenizer is not a transformers one
        out = save_hf(model, _model_location(workdir, config, checkpointer.directory, config.total_steps))
        log(f"trained policy: {out} (load_model / transformers / --config.model.name={out})")
    return state
