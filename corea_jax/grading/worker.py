"""The math-verify worker process: symbolic equivalence behind a line protocol on stdin/stdout.

`corea_jax.grading.pool` starts `python -c BOOT <this file>`, which loads this file by
path and calls `serve()`: this module imports only the standard library (and math-verify
inside `serve`), never `corea_jax` or jax, so it can be loaded standalone.

Bounds, each for a different way model text can hang a worker:
  - wall time: a repeating timer raises math-verify's TimeoutException after the request's
    `budget_s` (math-verify's own `signal.alarm` only works in a main thread, hence
    `parsing_timeout=None`);
  - memory: the address space is capped at `ADDRESS_SPACE_BYTES`, so a huge integer or a
    deep parse raises MemoryError (graded "not equal") instead of swapping the machine;
  - CPU time: a request may use `budget_s + CPU_GRACE_S` CPU seconds; past it the kernel
    ends the worker (SIGXCPU). Stuck in C code (`9^{99999999}`) the timer cannot act, and
    the parent normally kills the worker at its deadline; this limit ends one whose parent
    is gone or not waiting.
"""

from __future__ import annotations

import json
import math
import os
import resource
import signal
import sys

# Measured: an idle worker with math-verify and sympy loaded maps about 0.1 GiB. 2 GiB holds
# any real MATH answer's sympy work many times over, and the pool's default 8 workers stay
# within 16 GiB together.
ADDRESS_SPACE_BYTES = 2 << 30
# RLIMIT_CPU counts whole seconds; one second past the budget lets the timer (or the parent's
# kill at its deadline) act first whenever it can.
CPU_GRACE_S = 1


def _set_soft_limit(which: int, soft: int) -> None:
    """Set the soft limit `which` to `soft` (never above the hard limit)."""
    _, hard = resource.getrlimit(which)
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    resource.setrlimit(which, (soft, hard))


def cpu_seconds_used() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def limit_cpu(budget_s: float) -> None:
    """Allow this process `budget_s + CPU_GRACE_S` more CPU seconds (the limit is cumulative)."""
    _set_soft_limit(resource.RLIMIT_CPU, math.ceil(cpu_seconds_used() + budget_s) + CPU_GRACE_S)


def limit_process() -> None:
    """The limits that hold for the worker's whole life: address space, and no core files
    (SIGXCPU's default action dumps core, and a worker's image may be gigabytes)."""
    _set_soft_limit(resource.RLIMIT_AS, ADDRESS_SPACE_BYTES)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def serve() -> None:
    """Worker loop: one JSON request per stdin line, one JSON reply per stdout line.

    Request {"gold", "pred", "budget_s"} -> reply {"equal": bool}. The first line out is
    {"ready": true, "pid": int} or {"ready": false, "error": ...}.
    """
    import logging

    channel = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # stray prints from libraries must not corrupt the protocol
    logging.disable(logging.CRITICAL)
    try:
        limit_process()
        from math_verify import LatexExtractionConfig, parse, verify
        from math_verify.errors import TimeoutException
    except BaseException as e:  # noqa: BLE001 -- reported to the parent, which raises
        channel.write(json.dumps({"ready": False, "error": repr(e)}) + "\n")
        return
    config = [LatexExtractionConfig()]

    armed = [False]

    def on_alarm(signum, frame):
        if armed[0]:
            raise TimeoutException("grading budget spent")

    signal.signal(signal.SIGALRM, on_alarm)

    gold_cache: dict[str, list] = {}  # the G completions of a question share one gold

    def parse_gold(gold: str) -> list:
        if gold not in gold_cache:
            parsed = parse("\\boxed{" + gold + "}", extraction_config=config, parsing_timeout=None)
            if not parsed:  # maybe a timeout that parse swallowed: do not remember it
                return parsed
            if len(gold_cache) >= 1024:
                gold_cache.clear()
            gold_cache[gold] = parsed
        return gold_cache[gold]

    def equal(gold: str, pred: str) -> bool:
        gold_parsed = parse_gold(gold)
        pred_parsed = parse("\\boxed{" + pred + "}", extraction_config=config, parsing_timeout=None)
        return bool(gold_parsed and pred_parsed and verify(gold_parsed, pred_parsed, timeout_seconds=None))

    channel.write(json.dumps({"ready": True, "pid": os.getpid()}) + "\n")
    for line in sys.stdin:
        result = False
        try:
            request = json.loads(line)
            budget_s = float(request["budget_s"])
            limit_cpu(budget_s)
            # The timer repeats after the budget so that a TimeoutException swallowed by
            # a library's `except` is raised again until control returns here.
            armed[0] = True
            signal.setitimer(signal.ITIMER_REAL, budget_s, 0.05)
            try:
                result = equal(request["gold"], request["pred"])
            finally:
                armed[0] = False
                signal.setitimer(signal.ITIMER_REAL, 0)
        except BaseException:  # noqa: BLE001 -- any failure, timeout and MemoryError included, is "not equal"
            armed[0] = False
            result = False
        channel.write(json.dumps({"equal": result}) + "\n")
