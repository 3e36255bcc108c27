"""Cascade evaluation: the SLM answers with a confidence, low confidence goes to the LLM.

  python -m launch.cascade --config=configs/cascade/qwen_coder_gsm8k_cpu.py --workdir=DIR
  python -m launch.cascade --config=... --workdir=DIR --config.rescore_only=True

Writes DIR/records.jsonl (resumable: a restarted run answers only what is missing),
DIR/report.json, DIR/report.md and DIR/*.png, and prints the table.
"""

from pathlib import Path

from absl import app, flags
from ml_collections import config_flags

from corea_jax.cascade import evaluate
from launch import quiet_logs, usage_errors

_CONFIG = config_flags.DEFINE_config_file("config", "configs/cascade/qwen_coder_gsm8k_cpu.py",
                                          "Cascade config.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory.", required=True)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    quiet_logs()
    with usage_errors():
        evaluate.run(_CONFIG.value, _WORKDIR.value)
    report_md = Path(_WORKDIR.value) / "report.md"
    if report_md.exists():
        print(report_md.read_text())


if __name__ == "__main__":
    app.run(main)
