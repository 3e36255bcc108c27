"""Per-step metrics as JSONL (`workdir/metrics.jsonl`) and TensorBoard events (tensorboardX).

On resume from step s, rows past s (written after the checkpoint the run resumed from)
are dropped from the JSONL, with a last line a kill cut short, and TensorBoard's
`purge_step` hides their events, so the files read as if the run had never stopped.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from corea_jax.files import write_atomic


def _plain(value: Any):
    value = value.item() if isinstance(value, (np.generic, np.ndarray)) else value
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN; a missing value reads as null
    return value


class MetricsWriter:
    """Appends one JSON object per step; mirrors scalars to TensorBoard."""

    def __init__(self, workdir: str | Path, *, resume_step: int = 0, tensorboard: bool = True):
        self.path = Path(workdir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._truncate(resume_step)
        self._file = open(self.path, "a")
        self._tb = None
        if tensorboard:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(str(Path(workdir) / "tensorboard"),
                                     purge_step=resume_step + 1 if resume_step else None)

    def _truncate(self, resume_step: int) -> None:
        if not self.path.exists():
            return
        keep = [row for row in _rows(self.path) if row.get("step", 0) <= resume_step]
        write_atomic(self.path, "".join(json.dumps(row) + "\n" for row in keep))

    def write(self, step: int, metrics: dict[str, Any]) -> None:
        row = {"step": int(step), **{k: _plain(v) for k, v in metrics.items()}}
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        if self._tb is not None:
            for name, value in row.items():
                if name != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                    self._tb.add_scalar(name, value, step)
            self._tb.flush()

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()


def _rows(path: Path) -> list[dict]:
    """The JSON rows of a JSONL file. A last line cut short (the run was killed while writing
    it) is dropped; an unreadable line before it is an error naming it."""
    lines = [(n, line) for n, line in enumerate(path.read_text().splitlines(), 1) if line.strip()]
    rows = []
    for i, (n, line) in enumerate(lines):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as err:
            if i == len(lines) - 1:
                break
            raise ValueError(f"{path}:{n}: not a JSON object ({err}); only the last line may be "
                             "cut short") from err
    return rows


def read_metrics(workdir: str | Path) -> list[dict]:
    """The rows of `workdir/metrics.jsonl` (a half-written last line is left out)."""
    return _rows(Path(workdir) / "metrics.jsonl")
