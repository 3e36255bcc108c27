"""The pool of math-verify worker processes (see `corea_jax.grading.worker`), on the caller's side.

Workers are started with `subprocess`, so grading works from any thread, from daemonic
worker processes and under any multiprocessing start method. A call is bounded by
`timeout_s`: the worker stops itself with a timer, and if it is stuck in C code (a huge
integer power) the caller kills it after `timeout_s`, answers False and starts a
replacement. The protocol waits on pipes with `select`, so grading is POSIX-only.

  verify(gold, pred, timeout_s) -> bool   math-verify's verdict, False past the deadline
  shutdown()                              stop every worker; the next call starts one
  worker_pids() -> list[int]              the live workers' process ids
"""

from __future__ import annotations

import atexit
import json
import os
import select
import subprocess
import sys
import threading
import time

# A cold worker imports sympy and the LaTeX parser once (about a second); this bound is
# for that start only and is kept apart from the per-call `timeout_s`.
WORKER_START_TIMEOUT_S = 60.0
# Loads the worker module by path, not `corea_jax.grading.worker`, so the worker never imports
# the package (and jax with it). The empty-string path entry (cwd) goes first, so a stray
# `sympy.py` in the caller's directory cannot shadow the real one.
WORKER_BOOT = (
    "import sys; del sys.path[0]; import importlib.util as u; "
    "s = u.spec_from_file_location('_corea_grading_worker', sys.argv[1]); "
    "m = u.module_from_spec(s); s.loader.exec_module(m); m.serve()"
)
_WORKER_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "worker.py")


class WorkerDied(Exception):
    pass


class Worker:
    """One math-verify subprocess, used by one thread at a time."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", WORKER_BOOT, _WORKER_FILE],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            close_fds=True,
        )
        self._buffer = bytearray()
        self._ready = False

    def _readline(self, deadline: float) -> bytes | None:
        """The next line from the worker, or None at the deadline or if it died."""
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                return None
            chunk = os.read(fd, 65536)
            if not chunk:
                return None
            self._buffer += chunk
        line, _, rest = bytes(self._buffer).partition(b"\n")
        self._buffer = bytearray(rest)
        return line

    def _wait_ready(self) -> None:
        line = self._readline(time.monotonic() + WORKER_START_TIMEOUT_S)
        reply = json.loads(line) if line else {"ready": False, "error": "no reply"}
        if not reply.get("ready"):
            raise RuntimeError(f"math-verify grading worker failed to start: {reply.get('error')}")
        self._ready = True

    def equal(self, gold: str, pred: str, timeout_s: float) -> bool:
        """math-verify's verdict; raises WorkerDied on timeout or death."""
        if not self._ready:
            self._wait_ready()
        # The worker stops itself a little early so a reply arrives inside timeout_s.
        request = {"gold": gold, "pred": pred, "budget_s": max(0.05, timeout_s - 0.25)}
        try:
            self.proc.stdin.write(json.dumps(request).encode() + b"\n")
            self.proc.stdin.flush()
        except OSError as e:
            raise WorkerDied from e
        line = self._readline(time.monotonic() + timeout_s)
        if line is None:
            raise WorkerDied
        return bool(json.loads(line)["equal"])

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                stream.close()
            except OSError:
                pass


class WorkerPool:
    """Idle workers shared by all threads; created lazily, replaced when killed."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle: list[Worker] = []
        self._live: set[Worker] = set()

    def _take(self) -> Worker:
        with self._lock:
            if self._idle:
                return self._idle.pop()
        worker = Worker()
        with self._lock:
            self._live.add(worker)
        return worker

    def _give(self, worker: Worker) -> None:
        with self._lock:
            if worker in self._live:
                self._idle.append(worker)
                return
        worker.kill()  # shut down while busy

    def _discard(self, worker: Worker) -> None:
        with self._lock:
            self._live.discard(worker)
        worker.kill()

    def equal(self, gold: str, pred: str, timeout_s: float) -> bool:
        worker = self._take()
        try:
            result = worker.equal(gold, pred, timeout_s)
        except WorkerDied:
            self._discard(worker)
            # Start the replacement now so its import overlaps the caller's other work.
            self._give(self._take())
            return False
        except BaseException:
            self._discard(worker)
            raise
        self._give(worker)
        return result

    def pids(self) -> list[int]:
        with self._lock:
            return sorted(worker.proc.pid for worker in self._live)

    def shutdown(self) -> None:
        with self._lock:
            workers, self._live, self._idle = list(self._live), set(), []
        for worker in workers:
            worker.kill()

    def forget_after_fork(self) -> None:
        """In a forked child: drop the parent's workers (they are the parent's to stop).

        Closing our copies of their pipes lets a worker see EOF when the parent exits.
        """
        for worker in self._live:
            for stream in (worker.proc.stdin, worker.proc.stdout):
                try:
                    stream.close()
                except OSError:
                    pass
            # Popen would otherwise try to reap a process that is not our child.
            worker.proc.returncode = -1
        self._lock = threading.Lock()
        self._idle, self._live = [], set()


_POOL = WorkerPool()


def verify(gold: str, pred: str, timeout_s: float) -> bool:
    """math-verify's verdict on two answer strings; False if it takes over `timeout_s`."""
    return _POOL.equal(gold, pred, timeout_s)


def shutdown() -> None:
    """Stop every math-verify worker process; the next call starts a fresh one."""
    _POOL.shutdown()


def worker_pids() -> list[int]:
    """Process ids of the live workers, idle or busy (for tests and monitoring)."""
    return _POOL.pids()
atexit.register(_POOL.shutdown)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_POOL.forget_after_fork)
