"""COREA end to end on a CPU: the main job's default config.

  python -m launch.reproduce --workdir=/tmp/corea [--config=configs/reproduce.py]
  python -m launch.reproduce --workdir=/tmp/corea_quick --config=configs/reproduce.py:quick

A synthetic chain-arithmetic task and its tokenizer; an SLM and an LLM (Qwen2 family, random
init) trained with the project's SFT; RLVR, RLCC-L1 and RLCC-Brier from the SFT SLM with the
same steps and seed; the cascade on the test split; report.md / report.json / PNGs in the
workdir. Every stage is cached there (corea_jax.reproduction.stages).

The "quick" variant (`:quick`) runs every stage at test size in a few minutes: short chains,
small splits, tiny models, a few hundred SFT steps and a handful of RL steps. Its models are
weak, but RLCC still lowers the overconfident SFT model's ECE, and every report file is
written (tests/test_reproduction_pipeline.py runs it).
"""

import ml_collections

# Uninformative SFT confidences: drawn per target independently of the question, so the SFT
# model's stated confidence says nothing about the question. The SLM's are 1.0 70% of the
# time, enough that greedy decoding picks the first token "1" over "0" on every question
# (overconfident; smaller shares: docs/reproduce/TUNING.md); every value keeps some
# probability, so RL can move the stated confidence. The LLM's confidence is never read (the
# cascade defers on the SLM's), so its draws were never tuned.
SLM_SFT_CONFIDENCES = (1.0,) * 23 + (0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.0)
LLM_SFT_CONFIDENCES = (0.9, 0.9, 1.0, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.0)


def get_config(variant: str = ""):
    if variant not in ("", "quick"):
        raise ValueError(f"configs/reproduce.py: expected variant '' or 'quick', found {variant!r}")
    c = ml_collections.ConfigDict()
    # seed: the RL runs and the cascade's bootstrap. base_seed: the task, the tokenizer and the
    # base models (SFT SLM, LLM). from_scratch=False starts from the shipped base models
    # (corea_jax/reproduction/base_models, built by this config with from_scratch=True), as
    # the paper starts from released checkpoints; True trains them here first.
    c.seed = 0
    c.base_seed = 0
    c.from_scratch = False

    # corea_jax.data.chains; prompt "question": the question alone as the user turn (short
    # prompts keep CPU training cheap; the chat template still frames it).
    # One- and two-digit operands (60% / 40%), 1-2 operations: the operand length, visible in
    # the question, splits the items into ones the SLM gets right and ones only the LLM does.
    # 40% of the question space is reserved for the held-out splits (one-digit chains number
    # about 1,300: train would otherwise hold nearly all). Variable names a, b, c in order: the
    # 64x2 SLM never learned to copy random ones (docs/reproduce/TUNING.md).
    c.task = dict(train=20000, calibration=300, test=500, max_ops=2, max_digits=2, digit_shares=(0.6, 0.4),
                  random_names=False, heldout_share=0.4, prompt="question", max_prompt_tokens=40,
                  max_new_tokens=72)
    c.tokenizer = dict(vocab_size=320)

    arch = dict(model_type="qwen2", max_position_embeddings=128)
    c.slm = dict(arch, hidden_size=64, intermediate_size=256, num_layers=2, num_heads=4, num_kv_heads=4)
    c.llm = dict(arch, hidden_size=96, intermediate_size=384, num_layers=4, num_heads=4, num_kv_heads=4)

    # Trainer fields (corea_jax.rl.config) of the SFT runs; per model: steps, learning rate,
    # stated-confidence draws and questions per step (one micro-batch).
    # Unrolled layers: a 1.5x faster update on a 2-core CPU at these sizes (BENCHMARKS.md).
    c.sft = dict(mode="sft", model=dict(scan_layers=False), optim=dict(warmup_steps=30, schedule="cosine"))
    c.slm_sft_steps, c.slm_sft_learning_rate, c.slm_sft_confidences = 2500, 3e-3, SLM_SFT_CONFIDENCES
    c.slm_sft_batch = 16
    # Each model's own mix of operand lengths within the train split (None: the split's mix,
    # chains.subset_by_digits): the SLM sees mostly one-digit chains, as a small model's
    # training covers less, so its capacity goes to the easy class it must get right. 0.7 / 0.3
    # leaves RL a little to gain on that class (other mixes: docs/reproduce/TUNING.md).
    c.slm_sft_digit_shares = (0.7, 0.3)
    c.llm_sft_digit_shares = None
    # The LLM learns two-digit sums only with many steps at a lower rate (docs/reproduce/TUNING.md).
    c.llm_sft_steps, c.llm_sft_learning_rate, c.llm_sft_confidences = 4000, 1e-3, LLM_SFT_CONFIDENCES
    c.llm_sft_batch = 16

    # Trainer fields of the three RL runs (same steps and seed); each adds its reward preset.
    # 16 prompts a step and lr 1e-4: fewer prompts or a higher rate lost accuracy; 600 steps:
    # fewer left RLVR's pass@1 gain over SFT under 2 points on some seeds (docs/reproduce/TUNING.md).
    c.rl = dict(mode="grpo", total_steps=600, model=dict(scan_layers=False),
                rollout=dict(prompts_per_step=16, group_size=8, batch_size=128, temperature=1.0),
                # advantage "mean" (r - group mean, Dr. GRPO): dividing by the group's std
                # magnifies the calibration term in groups whose correctness ties (all right:
                # most of them here) and pushes every stated confidence up (docs/reproduce/TUNING.md).
                # Micro-batches of two groups: the update skips those without a group whose rewards
                # differ (most groups tie here), 2-4x faster than one of all 128 rows (BENCHMARKS.md).
                grpo=dict(micro_batch_size=16, advantage="mean"),
                optim=dict(learning_rate=1e-4, warmup_steps=5, schedule="constant"))
    # Each run's reward: a preset of corea_jax.rewards.PRESETS and, where set, its own weight of
    # the calibration term (None: the preset's 1.0). At 0.5 RLCC kept more of its accuracy on the
    # shipped SLM but never learned to separate on an SFT SLM built from scratch on another CPU
    # (its confidence rose to 0.99 everywhere); at 1.0 it separated on both (TUNING.md).
    c.rl_runs = dict(rlvr=dict(preset="rlvr"),
                     rlcc=dict(preset="rlcc_l1", calibration_weight=ml_collections.config_dict.placeholder(float)),
                     brier=dict(preset="rlcc_brier", calibration_weight=ml_collections.config_dict.placeholder(float)))

    # The cascade on the test split (thresholds and probe on the calibration split).
    # samples: the protocol of the report and its claims. k > 0: each SLM answers every
    # calibration and test question k times at the RL runs' rollout temperature, and pass@1,
    # confidence and the cascade are scored on those samples (as RL papers report pass@1;
    # RLCC calibrates its confidence to those rollouts); greedy numbers alongside. 0: greedy.
    # 8 samples: steadier margins than greedy at a small cost (docs/reproduce/TUNING.md).
    c.cascade = dict(cost_model="flops", risk_epsilon=0.05, risk_delta=0.1, batch_size=256, bootstrap=1000,
                     samples=8)
    if variant == "quick":
        c.task.update(dict(train=4000, calibration=64, test=96, max_ops=3, max_digits=1, digit_shares=None,
                           random_names=False, heldout_share=0.0, max_prompt_tokens=32, max_new_tokens=48))
        c.slm.update(dict(hidden_size=32, intermediate_size=128, num_layers=1, num_heads=2, num_kv_heads=2))
        c.llm.update(dict(hidden_size=64, intermediate_size=256, num_layers=2, num_heads=4, num_kv_heads=4))
        c.slm_sft_steps = c.llm_sft_steps = 150
        c.slm_sft_learning_rate = c.llm_sft_learning_rate = 3e-3
        # mostly 0.9 (greedy 0.9): eight RL steps move it; a tiny SLM stating 1.0 on 70% of its
        # SFT targets keeps saying it through eight steps
        c.slm_sft_confidences = LLM_SFT_CONFIDENCES
        c.slm_sft_digit_shares = None
        c.rl.total_steps = 8
        # lr 1e-3: eight steps move the confidence without losing the parseable answers
        # (docs/reproduce/TUNING.md)
        c.rl.optim.learning_rate = 1e-3
        c.cascade.bootstrap = 100
        c.cascade.samples = 2
        c.from_scratch = True  # no shipped models at test size
    return c
