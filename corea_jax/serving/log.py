"""DIR/records.jsonl of a server: one line per request, appended and fsynced before it counts.

Each line is a cascade record (`cascade.records`: id, model, split "live", task, gold null,
response, answer, correct null, confidence, tokens, seconds, cost, failed, error) of the first
model the request called, plus what the server decided: request_id, served_model, client (the
API key's index, never the key), created, question (unless config.log_questions is False),
tau, deferred, answered_by, degraded, audit, shadow, agree, finish_reason, latency_s, and
`llm`: the LLM's record when it answered (deferred or shadowed), else null.

Lines are written whole under a lock, one `write` and an fsync each, so a stopped server leaves
no half line (a SIGKILL mid-write can; `cascade.records.RecordStore` drops such a line on open).
The file holds users' questions: it is created readable by its owner only (mode 0600). The
server writes through `append_async`, on the log's own thread, so a slow disk or a slow LLM
never waits on the other.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import threading
from pathlib import Path


class RequestLog:
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.is_symlink():
            raise ValueError(f"{self.path}: a symbolic link; the request log must be a file of its own")
        if self.path.exists():
            os.chmod(self.path, 0o600)  # an older file keeps no wider mode than a new one gets
        self._lock = threading.Lock()
        self._writer = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="records")
        self.written = 0

    def append(self, record: dict) -> None:
        with self._lock:
            append_line(self.path, record)
            self.written += 1

    async def append_async(self, record: dict) -> None:
        """`append` on the log's own writer thread (in order, never on a shared pool)."""
        await asyncio.get_running_loop().run_in_executor(self._writer, self.append, record)

    def close(self) -> None:
        self._writer.shutdown(wait=True)


def append_line(path: str | os.PathLike, record: dict, mode: int = 0o600, *, sync: bool = True,
                allow_nan: bool = False) -> None:
    """`record` as one JSON line appended to `path` in one write (O_APPEND: a reader never sees
    part of it; a symlink is refused), fsynced unless `sync` is False. A new file gets `mode`;
    NaN is refused unless `allow_nan` (Python's JSON reads it back, strict readers do not)."""
    line = (json.dumps(record, allow_nan=allow_nan) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, mode)
    try:
        view = memoryview(line)
        while view:
            view = view[os.write(fd, view):]
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)


def read_lines(path: str | os.PathLike) -> list[dict]:
    """Every complete line of a server's records.jsonl (a torn last line is skipped)."""
    path = Path(path)
    if not path.exists():
        return []
    data = path.read_bytes()
    return [json.loads(line) for line in data.split(b"\n")[:-1] if line.strip()]
