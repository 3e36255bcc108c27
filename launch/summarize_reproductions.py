"""Mean and range over several reproduction runs (e.g. seeds 0, 1, 2), and which of COREA's
claims held in each.

  python -m launch.summarize_reproductions --workdirs=/tmp/corea,/tmp/corea_s1,/tmp/corea_s2 \
      [--labels=seed0,seed1,seed2] [--out=summary.md] [--figure=margins.png]

The markdown gives each system's mean and range, which claims held in which run, each claim's
smallest margin, and RL's mean pass@1 gain over SFT with its 95% interval; --figure plots
each claim's margin per run.
"""

import json
from pathlib import Path

from absl import app, flags

from corea_jax.reproduction import plot_claim_margins, summarize_seeds

_WORKDIRS = flags.DEFINE_list("workdirs", None, "Reproduction workdirs (each with report.json).")
_LABELS = flags.DEFINE_list("labels", None, "A label per workdir (default: the workdir names).")
_OUT = flags.DEFINE_string("out", None, "Write the markdown here too.")
_FIGURE = flags.DEFINE_string("figure", None, "Write the per-run claim margins as a PNG here.")
flags.mark_flags_as_required(["workdirs"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    labels = _LABELS.value or [Path(w).name for w in _WORKDIRS.value]
    if len(labels) != len(_WORKDIRS.value):
        raise app.UsageError(f"--labels: expected {len(_WORKDIRS.value)} labels (one per workdir), found {len(labels)}")
    reports = {}
    for label, workdir in zip(labels, _WORKDIRS.value):
        path = Path(workdir) / "report.json"
        if not path.exists():
            raise app.UsageError(f"--workdirs: {path} does not exist (run launch.reproduce there first)")
        reports[label] = json.loads(path.read_text())
    text = summarize_seeds(reports)
    print(text)
    if _OUT.value:
        Path(_OUT.value).write_text(text)
    if _FIGURE.value:
        plot_claim_margins(reports, Path(_FIGURE.value))


if __name__ == "__main__":
    app.run(main)
