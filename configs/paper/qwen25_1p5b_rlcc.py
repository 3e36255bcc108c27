"""COREA's SLM training at paper scale: Qwen2.5-1.5B-Instruct, GRPO + RLCC on DeepMath16K.

  python -m launch.train --config=configs/paper/qwen25_1p5b_rlcc.py --workdir=DIR

The recipe of qwen25_7b_rlcc.py (see there) for the smaller model: a larger learning rate,
bigger micro-batches, and a mesh of 8 GPUs as 2 data-parallel replicas of 4-way FSDP.
"""

import importlib.util
from pathlib import Path


def _recipe_7b():
    path = Path(__file__).with_name("qwen25_7b_rlcc.py")
    spec = importlib.util.spec_from_file_location("qwen25_7b_rlcc", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def get_config():
    config = _recipe_7b()
    config.model.name = "Qwen/Qwen2.5-1.5B-Instruct"
    config.rollout.batch_size = 512
    config.grpo.micro_batch_size = 16
    config.optim.learning_rate = 2e-6
    config.mesh.data = 2
    config.mesh.fsdp = 4
    return config
