"""Tests for corea_jax.grading.pool and .worker: threads, processes, deadlines, limits, no execution."""

import concurrent.futures
import multiprocessing
import os
import signal
import subprocess
import sys
import threading

import pytest

from corea_jax import grading
from corea_jax.grading import pool, worker

pytestmark = pytest.mark.slow  # servers, subprocesses, notebooks, training runs: `pytest -m slow`

_NEEDS_SYMPY = ("\\boxed{-6+3x+x^3}", "x^3+3x-6")


def test_grading_from_a_non_main_thread():
    results = []

    def run():
        results.append(grading.grade(*_NEEDS_SYMPY, "math"))
        results.append(grading.grade("\\boxed{x^3}", _NEEDS_SYMPY[1], "math"))

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(timeout=60)
    assert results == [True, False]


def test_grading_from_concurrent_threads():
    with concurrent.futures.ThreadPoolExecutor(4) as threads:
        results = list(threads.map(lambda i: grading.grade(f"\\boxed{{{i}+x}}", f"x+{i}", "math"), range(8)))
    assert results == [True] * 8


@pytest.mark.filterwarnings("ignore:os.fork:RuntimeWarning")
@pytest.mark.parametrize("method", ["spawn", "fork"])
def test_grading_from_worker_processes(method):
    # fork: a daemonic multiprocessing.Pool worker (may not start multiprocessing children).
    # spawn: a fresh interpreter that imports corea_jax.grading itself.
    grading.grade(*_NEEDS_SYMPY, "math")  # a warm parent pool must not leak into a fork
    with multiprocessing.get_context(method).Pool(1) as processes:
        results = processes.starmap(grading.grade, [(*_NEEDS_SYMPY, "math"), ("\\boxed{x}", "y", "math")])
    assert results == [True, False]

def _limits(pid: int) -> dict[str, tuple[str, str]]:
    """{"Max cpu time": (soft, hard), ...} from /proc/<pid>/limits."""
    with open(f"/proc/{pid}/limits") as f:
        rows = f.read().splitlines()[1:]
    return {row[:26].strip(): tuple(row[26:].split()[:2]) for row in rows}


def _live(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _one_worker() -> int:
    """A fresh pool holding one warm worker; its pid."""
    grading.shutdown()
    assert grading.grade(*_NEEDS_SYMPY, "math") is True
    (pid,) = pool.worker_pids()
    return pid


def test_a_worker_past_its_deadline_is_killed_and_replaced():
    # A stopped worker never replies: the caller must give up at its deadline, kill it, say
    # "wrong" and start a replacement. (SIGKILL ends a stopped process.)
    pid = _one_worker()
    os.kill(pid, signal.SIGSTOP)
    try:
        assert grading.grade("\\boxed{\\sin^2 y + \\cos^2 y}", "1", "math", timeout_s=0.5) is False
    finally:
        if _live(pid):
            os.kill(pid, signal.SIGCONT)
    assert not _live(pid)  # killed and reaped
    assert pid not in pool.worker_pids() and len(pool.worker_pids()) == 1
    assert grading.grade("\\boxed{\\sin^2 y + \\cos^2 y}", "1", "math") is True


def test_worker_runs_under_memory_cpu_and_core_limits():
    pid = _one_worker()
    limits = _limits(pid)
    assert limits["Max address space"] == (str(worker.ADDRESS_SPACE_BYTES), "unlimited")
    assert limits["Max core file size"] == ("0", "0")
    # After a request the CPU limit sits a little past the CPU it has used plus that budget.
    with open(f"/proc/{pid}/stat") as f:
        used_s = sum(int(x) for x in f.read().rsplit(")", 1)[1].split()[11:13]) / os.sysconf("SC_CLK_TCK")
    soft = int(limits["Max cpu time"][0])
    budget_s = grading.DEFAULT_TIMEOUT_S - 0.25
    assert used_s + budget_s <= soft <= used_s + budget_s + worker.CPU_GRACE_S + 1.5
    assert limits["Max cpu time"][1] == "unlimited"


def _run_with_worker_module(code: str) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter where `w` is worker.py loaded by path, as the pool does."""
    boot = (f"import importlib.util as u; s = u.spec_from_file_location('w', {worker.__file__!r}); "
            "w = u.module_from_spec(s); s.loader.exec_module(w)\n")
    return subprocess.run([sys.executable, "-c", boot + code], capture_output=True, text=True, timeout=120)


def test_worker_module_loads_standalone_without_the_package():
    done = _run_with_worker_module("import sys; print(sorted(m for m in sys.modules if m.split('.')[0] in ('corea_jax', 'jax')))")
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stderr


def test_the_cpu_limit_ends_a_spinning_worker():
    # A worker stuck in C code never returns to the interpreter, so its timer cannot stop it;
    # spinning past its CPU allowance, the kernel ends it (SIGXCPU) without help from a parent.
    done = _run_with_worker_module("w.limit_process(); w.limit_cpu(0.0)\nwhile True: pass")
    assert done.returncode == -signal.SIGXCPU, (done.returncode, done.stderr)


def test_the_address_space_limit_turns_a_huge_allocation_into_memory_error():
    done = _run_with_worker_module(
        f"w.limit_process()\ntry:\n    b = bytearray({2 * worker.ADDRESS_SPACE_BYTES})\n"
        "except MemoryError:\n    print('MemoryError')")
    assert done.returncode == 0 and done.stdout.strip() == "MemoryError", done.stderr


@pytest.mark.parametrize(
    "pred, gold",
    [
        ("9^{9^{9^{9}}}", "9^{9^{9^{8}}}"),  # both towers: past the fast path, into sympy
        ("2^{2^{2^{2^{2^{2}}}}}", "2^{2^{2^{2^{3}}}}"),
        ("1" * 1_000_000, "3"),  # 1 MB
        ("{" * 5_000 + "1" + "}" * 5_000, "1"),
        ("\\sqrt{" * 500 + "2" + "}" * 500, "2"),
    ],
)
def test_adversarial_answers_reach_the_worker_and_leave_it_working(pred, gold):
    # Straight to math-verify (grade's own guards would refuse most of these before it).
    assert pool.verify(gold, pred, timeout_s=1.5) is False
    assert grading.grade(*_NEEDS_SYMPY, "math") is True
    assert len(pool.worker_pids()) >= 1


@pytest.mark.parametrize(
    "pred",
    [
        "(10^{10})!",  # sympy expands it exactly; the worker's timer stops it
        "9^{99999999}",
        "10^{10^{10}}",
        "2^{2^{2^{2^{2^{2}}}}}",
        "\\sqrt{" * 60 + "2" + "}" * 60,
        "{" * 10_000 + "1" + "}" * 10_000,
        "1" * 100_000,
        "1" * 1_000_000,
        "9" * 50 + "." + "9" * 50,
    ],
)
def test_adversarial_answers_are_false(pred):
    assert grading.grade(f"\\boxed{{{pred}}}", "3", "math", timeout_s=1.5) is False
    assert grading.grade(*_NEEDS_SYMPY, "math") is True  # and the pool still works


def test_model_text_is_never_executed(tmp_path):
    marker = tmp_path / "pwned"
    payloads = [
        f"__import__('os').system('touch {marker}')",
        f"open('{marker}', 'w').write('x')",
        f"exec(\"open('{marker}','w')\")",
    ]
    for payload in payloads:
        for task in ("math", "gsm8k"):
            grading.grade(f"\\boxed{{{payload}}}", "3", task)
            grading.grade(f"{payload}\nThe answer is {payload}", "3", task)
    assert not marker.exists()


def test_a_worker_that_cannot_start_is_reported(monkeypatch):
    grading.shutdown()
    failing_boot = "import json; print(json.dumps({'ready': False, 'error': 'no math_verify here'}))"
    monkeypatch.setattr(grading.pool, "WORKER_BOOT", failing_boot)
    with pytest.raises(RuntimeError, match="no math_verify here"):
        grading.grade(*_NEEDS_SYMPY, "math")
    monkeypatch.undo()
    grading.shutdown()
    assert grading.grade(*_NEEDS_SYMPY, "math") is True
