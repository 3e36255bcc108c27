"""Re-fits the server's tau from its live log and writes DIR/threshold.json.

  python -m launch.refit --workdir=DIR --rule=usage --target_usage=0.3
  python -m launch.refit --workdir=DIR --rule=risk --epsilon=0.05 --delta=0.1 --pid=SERVER_PID

The running server picks the new tau up on SIGHUP (`--pid` sends it); a restarted one reads it
at start. Rules: usage, risk (agreement with the LLM on audited requests as the label), paper
(graded LLM answers), fixed.
"""

import os
import signal

from absl import app, flags

from corea_jax.serving import refit
from launch import quiet_logs, usage_errors

_WORKDIR = flags.DEFINE_string("workdir", None, "The server's workdir (records.jsonl).", required=True)
_RULE = flags.DEFINE_enum("rule", "usage", refit.RULES, "Threshold rule.")
_SOURCE = flags.DEFINE_string("confidence_source", None, "The confidence to fit on; unset: the one the "
                              "server defers on (its log says; another is refused).")
_TARGET = flags.DEFINE_float("target_usage", 0.3, "usage: the LLM's share of the requests.")
_EPSILON = flags.DEFINE_float("epsilon", 0.05, "risk: the allowed share of kept answers the LLM disagrees with.")
_DELTA = flags.DEFINE_float("delta", 0.1, "risk: the allowed failure probability.")
_TAU = flags.DEFINE_float("tau", 0.5, "fixed: the threshold.")
_MIN_ITEMS = flags.DEFINE_integer("min_items", 20, "Fewest logged requests a fit may use.")
_PID = flags.DEFINE_integer("pid", 0, "If set, send SIGHUP to this server process afterwards.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    quiet_logs()
    with usage_errors():
        result = refit.refit(_WORKDIR.value, _RULE.value, confidence_source=_SOURCE.value,
                             target_usage=_TARGET.value, epsilon=_EPSILON.value, delta=_DELTA.value,
                             tau=_TAU.value, min_items=_MIN_ITEMS.value)
    print(refit.describe(result))
    if _PID.value:
        with usage_errors():
            _check_server(_PID.value)
        os.kill(_PID.value, signal.SIGHUP)
        print(f"sent SIGHUP to {_PID.value}")


def _check_server(pid: int) -> None:
    """Refuses a pid that is not a `launch.serve` process (a stale pid would be killed by SIGHUP)."""
    cmdline = f"/proc/{pid}/cmdline"
    if not os.path.exists("/proc/self/cmdline"):
        return  # no /proc here: trust the caller
    try:
        with open(cmdline, "rb") as f:
            args = f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        raise ValueError(f"pid: no process {pid}; threshold.json is written, restart or signal the server") from None
    if "launch.serve" not in args:
        raise ValueError(f"pid: process {pid} is not a launch.serve server ({args[:80]!r}); no signal sent")


if __name__ == "__main__":
    app.run(main)
