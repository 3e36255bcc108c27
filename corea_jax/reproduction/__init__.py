"""The main job: COREA end to end on a synthetic task with from-scratch models (launch.reproduce)."""

from corea_jax.reproduction.pipeline import run
from corea_jax.reproduction.report import summarize_seeds
from corea_jax.reproduction import pipeline  # modules other packages use

__all__ = [
    "pipeline",
    "run",
    "summarize_seeds",
]
