"""Writing a file so that a reader never sees half of it: the data goes to a temporary file in the
same directory, which then replaces the target in one rename (os.replace is atomic on POSIX).
`write_atomic` for text and bytes, `save_figure` for a matplotlib figure (every PNG the
project writes)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def _replace_from_temp(path: Path, write) -> Path:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.chmod(tmp, 0o644)  # mkstemp's 0600 is for the temporary, not the result
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def write_atomic(path: str | os.PathLike, data: str | bytes) -> Path:
    """Writes `data` (str as UTF-8) to `path` all at once."""
    payload = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    return _replace_from_temp(Path(path), lambda f: f.write(payload))


def save_figure(fig, path: str | os.PathLike, dpi: int = 120) -> Path:
    """A matplotlib figure as a PNG at `path`, all at once."""
    return _replace_from_temp(Path(path), lambda f: fig.savefig(f, format="png", dpi=dpi))
