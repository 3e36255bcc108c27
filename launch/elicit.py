"""Measure how an SLM states its confidence: parse rate, accuracy, ECE/Brier/AUROC per source.

  python -m launch.elicit --config=configs/elicit.py --workdir=DIR [--config.model=...]

Writes DIR/<mode>.jsonl (one record per question) and DIR/summary.json, and prints a table.
"""

import json
from pathlib import Path

from absl import app, flags
from ml_collections import config_flags

import corea_jax
from corea_jax import elicitation
from corea_jax.confidence import SOURCES
from corea_jax.files import write_atomic
from corea_jax.models import fetch
from launch import quiet_logs

_CONFIG = config_flags.DEFINE_config_file("config", "configs/elicit.py", "Elicitation config.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory.", required=True)


def _load_model(name: str, dtype: str):
    path = fetch.default_model_dir(name) if name in fetch.REGISTRY else name
    if name in fetch.REGISTRY:
        fetch.fetch_model(name, path)
    return corea_jax.load_model(path, dtype=dtype)


def main(argv):
    del argv
    quiet_logs()
    config = _CONFIG.value
    import datasets

    rows = datasets.load_dataset("json", data_files=config.data, split="train")
    for field in (config.question_field, config.answer_field):
        if field not in rows.column_names:
            raise ValueError(f"config.{'question_field' if field == config.question_field else 'answer_field'}: "
                             f"column {field!r} not in {config.data} (columns {rows.column_names})")
    rows = rows.select(range(min(config.num_questions, len(rows))))
    model = _load_model(config.model, config.dtype)
    workdir = Path(_WORKDIR.value)
    workdir.mkdir(parents=True, exist_ok=True)
    summary = {"model": config.model, "dtype": config.dtype, "data": config.data}
    for mode in config.modes:
        records = elicitation.elicit(model, rows[config.question_field], rows[config.answer_field],
                                    task=config.task, mode=mode, max_new_tokens=config.max_new_tokens,
                                    followup_tokens=config.followup_tokens, batch_size=config.batch_size)
        write_atomic(workdir / f"{mode}.jsonl", "".join(json.dumps(r) + "\n" for r in records))
        summary[mode] = elicitation.summarize(records)
    write_atomic(workdir / "summary.json", json.dumps(summary, indent=2))

    print(f"\n{config.model} ({config.dtype}) on {config.data}, first {len(rows)} questions, greedy")
    print(f"{'mode':9} {'acc':>5} {'answer parsed':>13} " + " ".join(f"{s + ' (cov/AUROC/ECE)':>34}" for s in SOURCES))
    for mode in config.modes:
        s = summary[mode]
        cells = []
        for source in SOURCES:
            e = s[source]
            cells.append(f"{e['coverage']:.2f} / {e.get('auroc', float('nan')):.2f} / {e.get('ece', float('nan')):.2f}"
                         .rjust(34))
        print(f"{mode:9} {s['accuracy']:5.2f} {s['answer_parse_rate']:13.2f} " + " ".join(cells))


if __name__ == "__main__":
    app.run(main)
