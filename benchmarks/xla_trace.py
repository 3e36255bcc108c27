"""XLA's own per-op trace of a jitted CPU program, summed by what each op computes.

`--xla_cpu_enable_xprof_traceme=true` must be in XLA_FLAGS before jax loads (`enable()`), so
the CPU thunks appear in the trace. Times are summed over XLA's worker threads: independent
ops that ran side by side add up to more than the program's wall time.
"""

from __future__ import annotations

import collections
import os
import re
import tempfile
from pathlib import Path


def enable() -> None:
    """Adds the trace flag to XLA_FLAGS; call before jax is imported."""
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_enable_xprof_traceme=true").strip()


def op_kinds(hlo_text: str) -> dict[str, str]:
    """HLO instruction name -> a readable kind: 'matmul -> f32[32,4864]', 'copy', ..."""
    bodies, current = {}, None
    for line in hlo_text.splitlines():
        header = re.match(r"%?(\S+) \(.*\) -> .* \{$", line.strip())
        if header:
            current = bodies.setdefault(header.group(1), [])
        elif current is not None:
            current.append(line)
    kinds = {}
    for line in hlo_text.splitlines():
        m = re.match(r"\s*(?:ROOT )?%(\S+) = (\S+) (\w[\w-]*)\((.*)", line)
        if not m:
            continue
        name, shape, op, rest = m.groups()
        shape = re.sub(r"\{[^}]*\}", "", shape)
        called = re.search(r"calls=%(\S+?)[,\s]", rest)
        body = "\n".join(bodies.get(called.group(1), [])) if called else ""
        if op == "dot" or " dot(" in body:
            kinds[name] = f"matmul -> {shape}"
        elif op == "copy" or name.startswith("copy"):
            kinds[name] = f"copy -> {shape}"
        else:
            kinds[name] = re.sub(r"\.\d+$", "", name)
    return kinds


def traced_times(run, kinds: dict[str, str], repeats: int) -> tuple[collections.Counter, collections.Counter]:
    """Runs `run()` (which must block until done) `repeats` times under `jax.profiler`:
    (nanoseconds per kind, op count per kind), summed over the runs."""
    import jax
    from jax._src.lib import _profile_data

    trace_dir = tempfile.mkdtemp(prefix="xla_trace_")
    jax.profiler.start_trace(trace_dir)
    for _ in range(repeats):
        run()
    jax.profiler.stop_trace()
    [trace] = sorted(Path(trace_dir).rglob("*.xplane.pb"))[-1:]
    total, count = collections.Counter(), collections.Counter()
    for plane in _profile_data.ProfileData.from_file(str(trace)).planes:
        for line in plane.lines:
            for event in line.events:
                if event.name in kinds:
                    total[kinds[event.name]] += event.duration_ns
                    count[kinds[event.name]] += 1
    return total, count


def print_table(total: collections.Counter, count: collections.Counter, repeats: int, top: int,
                unit: str = "step") -> None:
    """The `top` kinds by time, per run, then the rest."""
    print(f"{'ms/' + unit:>9} {'ops/' + unit:>9}  kind")
    for kind, ns in total.most_common(top):
        print(f"{ns / repeats / 1e6:9.1f} {count[kind] // repeats:9d}  {kind}")
    rest = sum(total.values()) - sum(ns for _, ns in total.most_common(top))
    print(f"{rest / repeats / 1e6:9.1f} {'':9}  (everything else)")
    print(f"{sum(total.values()) / repeats / 1e6:9.1f} {'':9}  (all traced ops, summed over threads)")
