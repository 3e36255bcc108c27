"""The cascade job for one SLM and one LLM: items -> records.jsonl -> report.

  run(config, workdir)  generates what records.jsonl lacks (unless config.rescore_only), then
                        writes report.json / report.md / PNGs from the records alone.

Stages, each resumable: the SLM and the LLM on the calibration split, then the test split in
chunks of `config.chunk_size` items (SLM, then LLM), so a stopped run leaves complete pairs.
With `config.llm_on == "deferred"` the LLM answers every calibration item (the thresholds need
its accuracy there) but only the test items some system defers.

The workdir's fingerprint.json records, per role, what its answers depend on (`fingerprint`);
a run whose SLM or LLM differs from the records' is refused, naming the fields, unless
`config.overwrite` names that role ("slm", "llm" or "slm,llm"): then only its records are
regenerated.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

from corea_jax.cascade import config as cascade_config, datasets, records as records_lib
from corea_jax.cascade.loading import LazyBackend, cost_model_from_config
from corea_jax.parallel import machine

def load_splits(config) -> tuple[list[datasets.Item], list[datasets.Item]]:
    """(calibration items, test items) from config.data.calibration / config.data.test."""
    splits = []
    for name in ("calibration", "test"):
        spec = config.data[name]
        splits.append(datasets.load_items(
            spec.source, split=spec.split, limit=spec.limit, offset=spec.offset, seed=spec.seed,
            question_field=spec.question_field, answer_field=spec.answer_field,
            choices_field=spec.choices_field, task=spec.task, name=spec.name, data_file=spec.data_file))
    calibration, test = splits
    datasets.check_disjoint(calibration, test)
    return calibration, test


def _params_from_records(store: records_lib.RecordStore) -> dict[str, int | None]:
    """Non-embedding parameter counts recorded by earlier runs (rescoring needs no model)."""
    out = {}
    for role in records_lib.MODELS:
        counts = [r.get("non_embedding_params") for r in store.records(role)]
        out[role] = next((c for c in counts if c), None)
    return out


_SAMPLES, _SAMPLE_BYTES, _WHOLE_BYTES = 64, 1 << 16, 8 << 20


def _file_digest(path: Path, digest) -> None:
    """Feeds the file's name, size and content to `digest`: whole up to 8 MiB, else 64 evenly
    spaced 64 KiB samples (retraining changes every tensor; a rerun reads 4 MiB, not the model)."""
    size = path.stat().st_size
    digest.update(f"{path.name}\0{size}\0".encode())
    with open(path, "rb") as f:
        if size <= _WHOLE_BYTES:
            digest.update(f.read())
            return
        for k in range(_SAMPLES):
            f.seek((size - _SAMPLE_BYTES) * k // (_SAMPLES - 1))
            digest.update(f.read(_SAMPLE_BYTES))


def weights_digest(name: str) -> str | None:
    """What identifies a model's weights without loading them: a registry model's pinned GGUF
    sha256; for a path, a sha256 over its files (a directory's top-level files: config,
    tokenizer and chat template, weights; see `_file_digest`). None when the path is absent."""
    from corea_jax.models import fetch

    if name in fetch.REGISTRY:
        return f"registry:{fetch.REGISTRY[name].sha256}"
    path = Path(name).expanduser()
    if not path.exists():
        return None
    files = [path] if path.is_file() else sorted(p for p in path.iterdir()
                                                 if p.is_file() and not p.name.startswith("."))
    digest = hashlib.sha256()
    for file in files:
        _file_digest(file, digest)
    return f"sha256:{digest.hexdigest()[:32]}"


# The fields of config.<role> that change its answers; batch_size, schedule and mesh do not (the
# same tokens, up to float reduction order), nor do a server's concurrency and retry settings.
_ANSWER_FIELDS = ("backend", "dtype", "mode", "prompt", "system_prompt", "worked_example", "max_new_tokens",
                  "followup_tokens", "temperature", "probe_hidden", "probe_window")
_DATA_FIELDS = ("source", "split", "seed", "data_file", "question_field", "answer_field",
                "choices_field", "task", "name")  # not limit / offset: item ids name the item


def fingerprint(config, role: str) -> dict:
    """{config field path: value} of everything that changes `role`'s answers: the model
    (name and `weights_digest`, or the served model over HTTP), how it is asked and sampled,
    and the data sets the item ids point into."""
    spec = config[role]
    out = {f"{role}.name": spec.name}
    out.update({f"{role}.{key}": spec[key] for key in _ANSWER_FIELDS})
    if out[f"{role}.backend"] == "http":
        out.update({f"{role}.http.{key}": spec.http[key] for key in ("base_url", "model", "logprobs")})
    else:
        out[f"{role}.dtype"] = machine.resolve_dtype(out[f"{role}.dtype"])  # "auto" as resolved here
        out[f"{role}.weights"] = weights_digest(spec.name)
    for split in ("calibration", "test"):
        out.update({f"data.{split}.{key}": config.data[split][key] for key in _DATA_FIELDS})
    return out


def generate_records(config, workdir: Path, store: records_lib.RecordStore, calibration, test,
                     progress: bool = True) -> None:
    """Answers every item the records lack (see the module docstring for the order)."""
    lazy = {role: LazyBackend(config[role], role, progress) for role in records_lib.MODELS}
    one_at_a_time = bool(config.one_model_at_a_time)

    def collect(role, items, split):
        if all(store.done(item.id, role) for item in items):
            return
        if one_at_a_time:  # a small box: never hold both models (reloading costs a load, not a compile)
            lazy["llm" if role == "slm" else "slm"].release()
        backend = lazy[role].get()
        cost_model = cost_model_from_config(config, **{f"{role}_params": backend.non_embedding_params})

        def cost_fn(record):
            record["non_embedding_params"] = backend.non_embedding_params
            try:
                return cost_model(record)
            except ValueError:  # e.g. a price not configured: recomputed at report time
                return None

        records_lib.collect(backend, items, store, model=role, split=split, cost_fn=cost_fn,
                            cost_model=config.cost_model, progress=progress)

    collect("slm", calibration, "calibration")
    collect("llm", calibration, "calibration")
    for start in range(0, len(test), config.chunk_size):
        chunk = test[start:start + config.chunk_size]
        collect("slm", chunk, "test")
        if config.llm_on == "all":
            collect("llm", chunk, "test")
    if config.llm_on == "deferred":
        from corea_jax.cascade import report

        deferred = report.deferred_ids(config, store.records())
        collect("llm", [item for item in test if item.id in deferred], "test")


def run(config, workdir: str | os.PathLike, progress: bool = True) -> dict:
    """The whole cascade job; returns report.json's content. See the module docstring."""
    config = cascade_config.resolve(config)
    cascade_config.validate(config)
    start = time.perf_counter()
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    calibration, test = load_splits(config)
    store = records_lib.RecordStore(workdir / "records.jsonl")
    if not config.rescore_only:
        current = {role: fingerprint(config, role) for role in records_lib.MODELS}
        records_lib.reconcile_fingerprints(workdir / records_lib.FINGERPRINT, current, store,
                                           cascade_config.overwrite_roles(config))
        generate_records(config, workdir, store, calibration, test, progress)
    generation_s = time.perf_counter() - start
    if not config.report:
        return {}
    from corea_jax.cascade import report

    params = _params_from_records(store)
    cost_model = cost_model_from_config(config, params["slm"], params["llm"])
    return report.write_report(config, workdir, store.records(include_failed=True), calibration, test,
                               cost_model, started=start, generation_s=generation_s)
