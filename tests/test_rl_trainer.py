"""The training loop on the toy task: RLCC learns, SFT learns, minibatches + epochs + KL."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from corea_jax.rl import trainer
from corea_jax.rl.metrics_writer import read_metrics
from tests.helpers import REPO


def tiny_config():
    spec = importlib.util.spec_from_file_location("tiny_config", REPO / "configs" / "tiny.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    config.log.tensorboard = False
    config.checkpoint.every_steps = 1000
    return config


def _mean(rows, key):
    return float(np.nanmean([np.nan if r[key] is None else r[key] for r in rows]))


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("toy_rlcc")
    config = tiny_config()  # 300 steps, about 10 s after compiling
    trainer.train(config, workdir, log=lambda _: None)
    return read_metrics(workdir)


@pytest.mark.slow
def test_toy_rlcc_reward_rises_and_ece_falls(toy_run):
    rows = toy_run
    assert [r["step"] for r in rows] == list(range(1, 301))
    first, last = rows[:10], rows[-20:]
    # Seen over seeds 0-5: reward -0.75 -> 1.1 to 1.5 (of 1.5), ECE 0.43 -> 0.00 to 0.2,
    # format 0.15 -> 1, accuracy 0.08 -> 0.75 to 1.
    assert _mean(last, "reward_mean") > _mean(first, "reward_mean") + 1.0
    assert _mean(last, "ece") < _mean(first, "ece") - 0.15
    assert _mean(last, "format_rate") > 0.9 > 0.5 > _mean(first, "format_rate")
    assert _mean(last, "accuracy") > _mean(first, "accuracy") + 0.4
    for row in rows:
        assert row["ratio_mean"] == 1.0 and row["clip_fraction"] == 0.0  # on-policy, one update
        if row["groups_trained"]:  # else every group tied and was filtered: no update
            assert row["sampler_logprob_gap"] < 1e-4
        for key in ("loss", "reward_calibration", "brier", "entropy", "time_generation", "time_scoring",
                    "time_update", "tokens_per_s", "mfu", "mfu_update", "zero_variance_groups", "lr"):
            assert key in row


@pytest.mark.slow
def test_sft_teaches_the_answer_format(tmp_path):
    config = tiny_config()
    config.mode = "sft"
    config.total_steps = 20
    config.grpo.micro_batch_size = 4
    trainer.train(config, tmp_path, log=lambda _: None)
    rows = read_metrics(tmp_path)
    assert rows[-1]["nll"] < 0.6 * rows[0]["nll"]
    assert rows[0]["truncated_rate"] == 0.0


@pytest.mark.slow
def test_minibatches_epochs_and_kl(tmp_path):
    config = tiny_config()
    config.total_steps = 1
    config.grpo.num_minibatches = 2
    config.grpo.num_epochs = 2
    config.grpo.kl_beta = 0.05
    config.grpo.micro_batch_size = 8
    config.grpo.filter_tied_groups = False
    trainer.train(config, tmp_path, log=lambda _: None)
    rows = read_metrics(tmp_path)
    for row in rows:
        # Old log-probs are recomputed by the trainer: the same graph as the sampler.
        assert row["sampler_logprob_gap"] < 1e-4
        assert row["ratio_mean"] != 1.0  # later updates move the policy off the sampler's
        assert 0 < row["kl"] < 1 and np.isfinite(row["loss"])
        assert row["groups_trained"] == 8


@pytest.mark.real_model  # SmolLM2's tokenizer files
@pytest.mark.slow
def test_gsm8k_records_through_a_real_tokenizer(tmp_path):
    """Real data end to end: GSM8K questions under SmolLM2's chat template and tokenizer,
    sampled from a small random Llama, graded as GSM8K, one GRPO update."""
    import shutil

    from tests.fetched_models import SMOLLM2, fetched_dir
    from tests.helpers import SHARED_DATA, save_random_hf_model

    model_dir = tmp_path / "model"
    save_random_hf_model("llama3", model_dir, vocab_size=49152, num_hidden_layers=2)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        if (fetched_dir(SMOLLM2) / name).exists():
            shutil.copy(fetched_dir(SMOLLM2) / name, model_dir / name)
    config = tiny_config()
    config.model.name = str(model_dir)
    config.data.source = str(SHARED_DATA / "gsm8k" / "train.jsonl")
    config.data.limit = 16
    config.data.prompt = "question"
    config.total_steps = 1
    config.rollout.prompts_per_step = 2
    config.rollout.group_size = 2
    config.rollout.max_prompt_length = 192
    config.rollout.max_new_tokens = 8
    config.grpo.micro_batch_size = 2
    config.grpo.filter_tied_groups = False
    state = trainer.train(config, tmp_path / "run", log=lambda _: None)
    [row] = read_metrics(tmp_path / "run")
    assert row["groups_trained"] == 2 and np.isfinite(row["loss"])
    assert row["sampler_logprob_gap"] < 1e-3
    assert row["response_length"] <= 8
    # The trained policy is exported as an HF directory that loads back with its tokenizer.
    from corea_jax import load_model

    exported = load_model(tmp_path / "run" / "hf", scan_layers=False)  # the trainer's layout on one CPU
    assert exported.tokenizer is not None and exported.config.num_layers == 2
    import jax

    for ours, theirs in zip(jax.tree.leaves(state.params), jax.tree.leaves(exported.params)):
        np.testing.assert_array_equal(np.asarray(ours), np.asarray(theirs))


def test_sft_targets_are_formatted_gold_answers():
    from corea_jax import grading
    from corea_jax.data import Record
    from corea_jax.rl.policy import sft_target_text

    gold = "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nAltogether 48+24 = <<48+24=72>>72.\n#### 72"
    text = sft_target_text(Record("q", gold), "gsm8k", 0.9)
    assert "<<" not in text and text.endswith("\\boxed{72}.\nConfidence: 0.9")
    assert grading.format_ok(text) and grading.grade(text, gold, "gsm8k")
    assert sft_target_text(Record("q", "\\frac{1}{2}"), "math", 0.5) == \
        "The final answer is \\boxed{\\frac{1}{2}}.\nConfidence: 0.5"


@pytest.mark.slow
def test_bfloat16_compute_keeps_float32_master_weights():
    """dtype=bfloat16 with param_dtype=float32: the sampler's cast copy (one parameter set per
    layer) holds exactly the weights the trainer's graph computes with: back in the stacked
    layout it gives exactly the trainer's logits, and in its own unrolled layout the same
    logits up to bfloat16 rounding. A 1e-6 learning-rate update changes the master weights (it
    would round away in bfloat16 weights of magnitude ~0.02)."""
    import jax
    import jax.numpy as jnp

    from corea_jax.models.decoder import relayout
    from corea_jax.models.model import forward
    from corea_jax.rl import policy

    config = tiny_config()
    config.model.dtype = "bfloat16"
    config.model.scan_layers = True
    model = policy.build_model(config)
    assert model.config.param_dtype == "float32" and model.config.dtype == "bfloat16"
    assert {x.dtype for x in jax.tree.leaves(model.params)} == {jnp.dtype("float32")}
    sampler = policy.sampling_model(model, model.params)
    assert {x.dtype for x in jax.tree.leaves(sampler.params)} == {jnp.dtype("bfloat16")}
    tokens = jnp.asarray(np.random.default_rng(0).integers(3, 12, (2, 7)), jnp.int32)
    positions = jnp.broadcast_to(jnp.arange(7), (2, 7))
    mask = jnp.ones((2, 7), bool)
    assert not sampler.config.scan_layers and model.config.scan_layers
    ours = forward(model.config, model.params, tokens, positions, mask)[0]
    theirs = forward(*relayout(sampler.config, sampler.params, scan_layers=True), tokens, positions, mask)[0]
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(theirs))
    unrolled = forward(sampler.config, sampler.params, tokens, positions, mask)[0]
    assert np.abs(np.asarray(unrolled) - np.asarray(ours)).max() <= 1e-2

    weights = [p for p in jax.tree.leaves(model.params) if float(jnp.min(jnp.abs(p))) > 0]  # no zero biases
    assert len(weights) >= 5
    for w in weights:
        stepped = w - 1e-6 * jnp.sign(w)
        assert bool(jnp.all(stepped != w))
        # The same step on bfloat16 weights: lost wherever |w| >= 2^-10 (half an ulp > 1e-6).
        wb = w.astype(jnp.bfloat16)
        big = jnp.abs(wb) >= 2.0**-10
        assert float(jnp.mean(big)) > 0.5
        assert bool(jnp.all(jnp.where(big, wb - jnp.bfloat16(1e-6) * jnp.sign(wb) == wb, True)))


# ------------------------------------------------------------------------ resuming


def _short_config(steps=2):
    config = tiny_config()
    config.total_steps, config.checkpoint.every_steps = steps, 1
    return config


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    """A finished 2-step run (checkpoints at steps 1 and 2) and its metrics rows."""
    workdir = tmp_path_factory.mktemp("short_run")
    trainer.train(_short_config(), workdir, log=lambda _: None)
    return workdir, read_metrics(workdir)


def _copy_run(source, target):
    import shutil

    shutil.copytree(source, target)
    return target


@pytest.mark.slow
def test_stacked_layers_and_kernels_out_in_train_as_the_default_layout_does(short_run, tmp_path):
    """model.scan_layers=True (one scan over stacked layers) with [out, in] kernels is the same
    model as the CPU default (layers unrolled, [in, out] kernels for a toy-sized model): the
    same samples, rewards and losses, step for step, and a resume in that layout."""
    _, unrolled = short_run
    config = _short_config()
    assert (config.model.scan_layers, config.model.feature_major) == (None, None)
    config.model.scan_layers, config.model.feature_major = True, True
    trainer.train(config, tmp_path, log=lambda _: None)
    stacked = read_metrics(tmp_path)
    assert [r["step"] for r in stacked] == [1, 2]
    for a, b in zip(unrolled, stacked):
        assert a["reward_mean"] == b["reward_mean"] and a["accuracy"] == b["accuracy"]
        np.testing.assert_allclose(b["loss"], a["loss"], rtol=1e-4, atol=1e-6)
        assert b["sampler_logprob_gap"] < 1e-4
    config.total_steps = 3
    trainer.train(config, tmp_path, log=lambda _: None)
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2, 3]


@pytest.mark.slow
def test_a_run_resumes_in_another_layout_its_checkpoint_converted(short_run, tmp_path):
    """A checkpoint written in the CPU default layout resumes stacked with [out, in] kernels:
    params and AdamW moments are converted exactly (back in the saved layout they equal the
    checkpoint bit for bit), and the resumed step 2 matches the uninterrupted one."""
    import shutil

    import jax

    from corea_jax.rl import policy
    from corea_jax.rl.checkpointing import Checkpointer
    from corea_jax.rl.train_state import init_train_state, make_optimizer, relayout_state

    workdir = _copy_run(short_run[0], tmp_path / "run")
    shutil.rmtree(workdir / "checkpoints" / "2")
    (workdir / "metrics.jsonl").write_text((workdir / "metrics.jsonl").read_text().splitlines()[0] + "\n")
    assert Checkpointer(workdir).saved_layout() == (False, False)
    config = _short_config()
    config.model.scan_layers, config.model.feature_major = True, True
    messages = []
    trainer.train(config, workdir, log=messages.append)
    assert any("converting the checkpoint from layout (scan_layers, feature_major) = (False, False) to "
               "(True, True)" in m for m in messages), messages
    rows, reference = read_metrics(workdir), short_run[1]
    assert [r["step"] for r in rows] == [1, 2]
    assert rows[1]["reward_mean"] == reference[1]["reward_mean"]
    np.testing.assert_allclose(rows[1]["loss"], reference[1]["loss"], rtol=1e-4, atol=1e-6)
    assert Checkpointer(workdir).saved_layout() == (True, True)

    # The conversion itself: the run's latest checkpoint (step 2), restored stacked and
    # [out, in], converted back.
    model = policy.build_model(config)
    state = init_train_state(model.params, make_optimizer(config.optim, config.total_steps))
    converted, _ = trainer.restore_checkpoint(Checkpointer(short_run[0]), state, model.config, None, print)
    unconverted = jax.eval_shape(lambda s: relayout_state(s, model.config, False, False), state)
    unconverted = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=jax.sharding.SingleDeviceSharding(jax.devices()[0])),
        unconverted)
    original, _ = Checkpointer(short_run[0]).restore(unconverted)
    assert "layers" in converted.params and "layers_0" in original.params
    back = relayout_state(converted, model.config, False, False)
    assert jax.tree.structure(back) == jax.tree.structure(original)
    for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(original)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.slow
def test_a_run_resumes_on_a_mesh_from_a_single_device_checkpoint(short_run, tmp_path):
    """The CPU default's checkpoint (layers unrolled) resumed on an fsdp mesh (stacked):
    converted into the mesh's shardings, and step 2 as the uninterrupted run's."""
    import shutil

    workdir = _copy_run(short_run[0], tmp_path / "run")
    shutil.rmtree(workdir / "checkpoints" / "2")
    (workdir / "metrics.jsonl").write_text((workdir / "metrics.jsonl").read_text().splitlines()[0] + "\n")
    config = _short_config()
    config.mesh.fsdp = 8
    messages = []
    state = trainer.train(config, workdir, log=messages.append)
    assert any("= (False, False) to (True, False)" in m for m in messages), messages
    rows, reference = read_metrics(workdir), short_run[1]
    assert rows[1]["reward_mean"] == reference[1]["reward_mean"]
    np.testing.assert_allclose(rows[1]["loss"], reference[1]["loss"], rtol=1e-4, atol=1e-6)
    kernel = state.params["layers"]["mlp"]["up_proj"]["kernel"]
    assert len(kernel.sharding.device_set) == 8 and not kernel.sharding.is_fully_replicated


def test_a_restart_with_another_result_changing_config_is_refused(short_run, tmp_path, monkeypatch):
    from corea_jax.generation import compile_count
    from corea_jax.rl import policy

    workdir = _copy_run(short_run[0], tmp_path / "run")
    saved = (workdir / "config.json").read_text()

    def fail(*args, **kwargs):
        raise AssertionError("the trainer built a model before refusing the config")

    monkeypatch.setattr(policy, "build_model", fail)
    compiled = compile_count()
    config = _short_config()
    config.optim.learning_rate = 3e-4
    config.rollout.temperature = 0.7
    config.log.tensorboard = True  # logging and checkpoint cadence may change
    config.checkpoint.every_steps = 5
    with pytest.raises(ValueError, match=r"holds a run with another config") as err:
        trainer.train(config, workdir, log=lambda _: None)
    message = str(err.value)
    assert "config.optim.learning_rate: 0.001 in the workdir, 0.0003 now" in message
    assert "config.rollout.temperature: 1.0 in the workdir, 0.7 now" in message
    assert "log." not in message and "checkpoint." not in message
    assert compile_count() == compiled and (workdir / "config.json").read_text() == saved

    config = _short_config()  # the run length counts once the schedule depends on it
    config.optim.schedule, config.total_steps = "linear", 3
    with pytest.raises(ValueError) as err:
        trainer.train(config, workdir, log=lambda _: None)
    assert "config.total_steps: 2 in the workdir, 3 now" in str(err.value)


def test_resume_longer_and_past_a_half_written_metrics_line(short_run, tmp_path):
    """A kill during the write of a metrics row leaves half a line; the resume drops it.
    A constant learning rate does not depend on the run length, so the run may be extended."""
    workdir = _copy_run(short_run[0], tmp_path / "run")
    with open(workdir / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "loss": 0.12')  # no newline: the write was cut short
    config = _short_config(steps=3)
    config.log.tensorboard = True
    trainer.train(config, workdir, log=lambda _: None)
    rows = read_metrics(workdir)
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert rows[:2] == short_run[1]


def test_the_checkpointed_rng_key_is_the_one_a_resumed_run_samples_with(short_run, tmp_path):
    import json
    import shutil

    import jax

    from corea_jax.rl.checkpointing import key_data

    workdir = _copy_run(short_run[0], tmp_path / "run")
    meta_file = workdir / "checkpoints" / "1" / "meta" / "metadata"
    meta = json.loads(meta_file.read_text())
    assert set(meta) == {"step", "seed", "rng_key", "layout"}  # the step is the data position
    assert meta["layout"] == {"scan_layers": False, "feature_major": False}  # the CPU default, toy-sized
    assert meta["rng_key"] == key_data(jax.random.key(0))
    shutil.rmtree(workdir / "checkpoints" / "2")
    meta_file.write_text(json.dumps(dict(meta, rng_key=key_data(jax.random.key(123)))))
    trainer.train(_short_config(), workdir, log=lambda _: None)
    rows, reference = read_metrics(workdir), short_run[1]
    assert rows[0] == reference[0]
    assert rows[1]["reward_mean"] != reference[1]["reward_mean"] or rows[1]["loss"] != reference[1]["loss"]


@pytest.mark.slow
def test_logged_learning_rate_follows_the_optimizers_own_count(tmp_path, monkeypatch):
    """Steps whose groups all tie make no update, so they do not advance the schedule."""
    from corea_jax.rl import scoring

    score_texts, calls = scoring.score_texts, []

    def tie_odd_steps(*args, **kwargs):
        scores = score_texts(*args, **kwargs)
        calls.append(1)
        if len(calls) % 2:  # steps 1 and 3: every completion gets the same reward
            scores = dict(scores, total=np.zeros_like(scores["total"]))
        return scores

    monkeypatch.setattr(scoring, "score_texts", tie_odd_steps)
    config = tiny_config()
    config.total_steps = 4
    config.optim.schedule, config.optim.final_lr_ratio = "linear", 0.0  # 1e-3 -> 0 over 4 updates
    trainer.train(config, tmp_path, log=lambda _: None)
    rows = read_metrics(tmp_path)
    assert [r["groups_trained"] > 0 for r in rows] == [False, True, False, True]
    # Updates run at optimizer counts 0 (step 2) and 1 (step 4): rates 1e-3 and 7.5e-4.
    np.testing.assert_allclose([r["lr"] for r in rows], [1e-3, 1e-3, 1e-3, 7.5e-4], rtol=1e-6)


@pytest.mark.slow
def test_the_trainer_reports_each_step_as_data(tmp_path):
    """on_step(steps done, that step's metrics): once where the run starts ({}: nothing trained yet,
    a resumed run at its checkpoint's step), then after every step; the pipeline's progress bar
    reads this, not the log's text."""
    config = tiny_config()
    config.total_steps = 3
    config.checkpoint.every_steps = 2
    seen = []
    trainer.train(config, tmp_path, log=lambda _: None, on_step=lambda step, m: seen.append((step, dict(m))))
    assert [s for s, _ in seen] == [0, 1, 2, 3] and seen[0][1] == {}
    assert all({"loss", "reward_mean"} <= set(m) for _, m in seen[1:])
    config.total_steps = 4  # resume from the last checkpoint (step 3) and train one more
    seen.clear()
    trainer.train(config, tmp_path, log=lambda _: None, on_step=lambda step, m: seen.append((step, dict(m))))
    assert [s for s, _ in seen] == [3, 4]


def test_total_updates_is_the_learning_rate_schedules_length():
    from corea_jax.rl.config import total_updates

    config = tiny_config()
    config.total_steps, config.grpo.num_minibatches, config.grpo.num_epochs = 7, 2, 3
    assert total_updates(config) == 42
