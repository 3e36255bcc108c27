"""Train a policy with GRPO + RLCC (or SFT) from a config file.

  python -m launch.train --config=configs/tiny.py --workdir=/tmp/tiny [--config.total_steps=3]

A --workdir that holds checkpoints resumes. The run writes workdir/config.json,
workdir/versions.json, workdir/metrics.jsonl (one JSON object per step), TensorBoard
events under workdir/tensorboard and orbax checkpoints under workdir/checkpoints.

Several hosts: run the same command on every host with --coordinator_address=HOST:PORT
(process 0's), --num_processes and --process_id (or COREA_COORDINATOR_ADDRESS,
COREA_NUM_PROCESSES, COREA_PROCESS_ID); the config's mesh spans all hosts' devices and
only process 0 writes the workdir's logs and metrics.
"""

import functools

from absl import app, flags
from ml_collections import config_flags

from corea_jax.parallel import multihost
from corea_jax.rl import trainer
from launch import quiet_logs, usage_errors

_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config file (get_config()).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (resumes if it holds checkpoints).")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (several hosts).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes (hosts) in the run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index in [0, num_processes).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    quiet_logs()  # orbax logs every save at INFO; -v 0 shows it
    with usage_errors():
        multihost.initialize(multihost.cluster_from(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value))
        trainer.train(_CONFIG.value, _WORKDIR.value, log=functools.partial(print, flush=True))


if __name__ == "__main__":
    app.run(main)
