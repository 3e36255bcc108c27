"""The cascade stages of the reproduction, through the cascade package's public functions.

  llm_answers       the LLM answers the calibration and test splits once (records.jsonl)
  cascade_<slm>     one SLM answers both splits greedily; its records plus the LLM's are
                    scored by `corea_jax.cascade` (report.json / report.md / frontier and
                    reliability PNGs of that SLM's cascade, in the stage directory)
  sampled_<slm>     the same with k answers of the SLM per question at the RL runs'
                    temperature (`run_sampled_cascade`): pass@1 is the mean accuracy over the
                    samples, and confidence, thresholds and the cascade are scored on them

Every SLM meets the same LLM records, so the LLM never answers twice (its greedy answer to a
question stands for each of that question's samples).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import ml_collections

from corea_jax import cascade

RECORDS = "records.jsonl"


def _model_spec(name: Path, c) -> ml_collections.ConfigDict:
    """The cascade's model entry for a local HF directory: greedy, one turn, the static schedule,
    the whole prompt read by no probe; its LM head (hidden x vocab, counted by the FLOPs cost)
    from the directory's config.json."""
    spec = cascade.config.model_spec(str(name), c.prompt)
    spec.update(dict(max_new_tokens=c.max_new_tokens, batch_size=c.batch_size, schedule="static", probe_window=0,
                     lm_head_params=cascade.config.head_params_from_dir(name)))
    return spec


def _data_spec(path: Path, split: str) -> ml_collections.ConfigDict:
    spec = cascade.config.data_spec(str(path), split, 0)  # ids: "<split>/<index>"
    spec.update(dict(question_field="question", answer_field="answer", task="gsm8k"))
    return spec


def cascade_config(config, *, task_dir: Path, slm_dir: Path, llm_dir: Path) -> ml_collections.ConfigDict:
    """The `corea_jax.cascade.evaluate.run` config of one SLM against the LLM on the task's
    calibration and test files (greedy, one turn, the task's prompt, FLOPs cost): the cascade's
    defaults with what this run is about."""
    c = config.cascade
    out = cascade.config.defaults()
    gen = ml_collections.ConfigDict(dict(prompt=config.task.prompt, max_new_tokens=config.task.max_new_tokens,
                                         batch_size=c.batch_size))
    out.slm, out.llm = _model_spec(slm_dir, gen), _model_spec(llm_dir, gen)
    out.data.calibration = _data_spec(task_dir / "calibration.jsonl", "calibration")
    out.data.test = _data_spec(task_dir / "test.jsonl", "test")
    out.chunk_size = 100000  # one pass per model: nothing here is worth interleaving
    out.one_model_at_a_time = False  # small models: keep both
    out.cost_model = c.cost_model
    out.threshold.update(dict(rule="paper", epsilon=c.risk_epsilon, delta=c.risk_delta))
    out.probe_l2 = 1.0
    out.bootstrap = c.bootstrap
    out.seed = config.seed
    return out


def answer_llm(cascade_cfg, out: Path) -> None:
    """`out/records.jsonl`: the LLM's answers to the calibration and test items."""
    from corea_jax.cascade import evaluate, loading, records, CostModel

    calibration, test = evaluate.load_splits(cascade_cfg)
    backend = loading.make_backend(cascade_cfg.llm, "llm")
    cost = CostModel(cascade_cfg.cost_model, params={"llm": backend.non_embedding_params})

    def cost_fn(record):
        record["non_embedding_params"] = backend.non_embedding_params
        return cost(record)

    store = records.RecordStore(out / RECORDS)
    for split, items in (("calibration", calibration), ("test", test)):
        records.collect(backend, items, store, model="llm", split=split, cost_fn=cost_fn,
                        cost_model=cascade_cfg.cost_model)


def run_cascade(cascade_cfg, llm_records: Path, out: Path) -> dict:
    """The cascade job of one SLM in `out`, starting from the LLM's records (so only the SLM
    answers); returns its report.json."""
    from corea_jax.cascade import evaluate

    if not (out / RECORDS).exists():
        shutil.copyfile(llm_records, out / RECORDS)
    return evaluate.run(cascade_cfg, out)


def sampled_splits(task_dir: Path, samples: int, out: Path) -> dict[str, int]:
    """`out/<split>.jsonl`: each question of the task's calibration and test splits `samples`
    times, sample-major (row j * N + i is sample j of question i, with fields `sample` and
    `question_index`), so the cascade's item ids "<split>/<row>" name one sample each.
    Returns {split: N}."""
    sizes = {}
    for split in ("calibration", "test"):
        rows = [json.loads(line) for line in (task_dir / f"{split}.jsonl").read_text().splitlines() if line]
        sizes[split] = len(rows)
        with (out / f"{split}.jsonl").open("w") as f:
            for j in range(samples):
                for i, row in enumerate(rows):
                    f.write(json.dumps(dict(row, sample=j, question_index=i)) + "\n")
    return sizes


class _OneCall:
    """A backend answering all of `collect`'s items in one `answer` call: the engine then
    batches them itself, and every row draws from its own PRNG stream (row ids are positions
    in the call; per-chunk calls would restart them, so chunks would share streams)."""

    def __init__(self, backend):
        self.backend, self.name = backend, backend.name
        self.batch_size = 1 << 30
        self.non_embedding_params = backend.non_embedding_params

    def answer(self, items):
        return self.backend.answer(items)


def run_sampled_cascade(cascade_cfg, llm_records: Path, sizes: dict[str, int], *, samples: int,
                        temperature: float, seed: int, out: Path) -> dict:
    """The cascade job of one SLM on the sampled splits in `out` (`sampled_splits`): the SLM
    answers every row at `temperature` (one PRNG stream per row, from `seed`); row j * N + i
    of the LLM is its greedy record of question i. Returns the cascade's report.json."""
    from corea_jax.cascade import evaluate, loading, records, LocalBackend, CostModel

    store = records.RecordStore(out / RECORDS)
    if not all(store.done(f"{split}/{j * n + i}", "llm") for split, n in sizes.items()
               for j in range(samples) for i in range(n)):
        greedy = records.RecordStore(llm_records)
        store.append([dict(greedy.get(f"{split}/{i}", "llm"), id=f"{split}/{j * n + i}")
                      for split, n in sizes.items() for j in range(samples) for i in range(n)])
    calibration, test = evaluate.load_splits(cascade_cfg)
    spec = cascade_cfg.slm
    backend = LocalBackend(loading.load_model(spec), name=f"slm:{spec.name}", mode="one_turn", prompt=spec.prompt,
                           max_new_tokens=spec.max_new_tokens, batch_size=spec.batch_size,
                           temperature=temperature, seed=seed, progress=True)
    cost = CostModel(cascade_cfg.cost_model, params={"slm": backend.non_embedding_params})

    def cost_fn(record):
        record["non_embedding_params"] = backend.non_embedding_params
        return cost(record)

    for split, items in (("calibration", calibration), ("test", test)):
        records.collect(_OneCall(backend), items, store, model="slm", split=split, cost_fn=cost_fn,
                        cost_model=cascade_cfg.cost_model)
    del backend
    cascade_cfg.rescore_only = True  # every record is here: score them
    return evaluate.run(cascade_cfg, out)
