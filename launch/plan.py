"""Will a config fit a mesh? Compile its programs ahead of time on fake CPU devices and report.

  python -m launch.plan --config=configs/paper/qwen25_7b_rlcc.py --mesh=data:2,fsdp:4,tensor:1 \
      --devices=8 --device_memory_gb=80

Compiles the train step and the rollout generation (training configs) or the generation
program (configs with a `generation` group) on abstract arrays of the full model shapes
(no weights allocated) and prints per-device memory, FLOPs per step and whether it fits;
the last line is one JSON object (bytes_per_device, device_memory_bytes, fits, ...).
--mesh defaults to the config's mesh. See corea_jax/planning.py.
"""

import os
import sys


def _request_fake_devices(argv):
    """The fake CPU devices must be asked for before jax is first imported, and loading the
    config file (a flag) imports it: read --devices from argv first."""
    count = "8"
    for i, arg in enumerate(argv):
        if arg.startswith("--devices="):
            count = arg.split("=", 1)[1]
        elif arg == "--devices" and i + 1 < len(argv):
            count = argv[i + 1]
    flags_now = [f for f in os.environ.get("XLA_FLAGS", "").split()
                 if not f.startswith("--xla_force_host_platform_device_count")]
    os.environ["XLA_FLAGS"] = " ".join(flags_now + [f"--xla_force_host_platform_device_count={count}"])
    os.environ["JAX_PLATFORMS"] = "cpu"


_request_fake_devices(sys.argv)

import json  # noqa: E402

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from launch import quiet_logs, usage_errors  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Training or generation config file.")
_MESH = flags.DEFINE_string("mesh", None, "Mesh as axis:size pairs, e.g. data:2,fsdp:4,tensor:1 "
                            "(default: the config's mesh).")
_DEVICES = flags.DEFINE_integer("devices", 8, "Devices of the target machine (faked on CPU).")
_MEMORY = flags.DEFINE_float("device_memory_gb", 80.0, "Memory of one device, GiB.")
flags.mark_flags_as_required(["config"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    quiet_logs()
    import jax

    from corea_jax import planning
    from corea_jax.parallel import sharding

    with usage_errors(ValueError):  # a bad mesh or config
        shape = sharding.parse_mesh(_MESH.value) if _MESH.value else dict(_CONFIG.value.mesh)
        if len(jax.devices()) != _DEVICES.value:
            raise ValueError(f"devices: expected {_DEVICES.value} fake CPU devices, found "
                             f"{len(jax.devices())} (XLA_FLAGS was set before launch.plan could)")
        mesh = sharding.make_mesh(shape, jax.devices())
        report = planning.plan(_CONFIG.value, mesh, int(_MEMORY.value * planning.GiB))
    print("\n".join(planning.report_lines(report)))
    print(json.dumps(report))


if __name__ == "__main__":
    app.run(main)
