"""COREA end to end on a CPU: task, tokenizer, SLM and LLM SFT, three RL runs, the cascade, the report.

  python -m launch.reproduce --workdir=/tmp/corea [--config=configs/reproduce.py]
  python -m launch.reproduce --workdir=/tmp/corea_quick --config=configs/reproduce.py:quick

Every stage is cached in --workdir and skipped on a rerun; a changed config rebuilds exactly
the stages that depend on the changed fields. The report is --workdir/report.md (with
report.json and the PNGs beside it).

  python -m launch.reproduce --workdir=DIR --config.from_scratch=True \
      --export_base_models=corea_jax/reproduction/base_models

trains the base models (SFT SLM and LLM) here instead of starting from the shipped ones, and
with --export_base_models writes them as the new shipped ones when the run has finished.
"""

import functools
from pathlib import Path

from absl import app, flags
from ml_collections import config_flags

from corea_jax.parallel import cpu_model
from corea_jax.reproduction import pipeline
from launch import quiet_logs, usage_errors

_CONFIG = config_flags.DEFINE_config_file("config", "configs/reproduce.py", "Reproduction config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (stages are cached here).")
_EXPORT = flags.DEFINE_string("export_base_models", None,
                              "After a from-scratch run, write its base models (with their manifest) here.")
flags.mark_flags_as_required(["workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    quiet_logs()
    with usage_errors():
        pipeline.run(_CONFIG.value, _WORKDIR.value, log=functools.partial(print, flush=True))
        if _EXPORT.value:
            manifest = pipeline.export_base_models(_CONFIG.value, _WORKDIR.value, Path(_EXPORT.value), cpu=cpu_model())
            print(f"base models written to {_EXPORT.value} (test accuracy {manifest['test_accuracy']})")


if __name__ == "__main__":
    app.run(main)
