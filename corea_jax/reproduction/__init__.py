"""The main job: COREA end to end on a synthetic task with from-scratch models (launch.reproduce)."""

from corea_jax.reproduction.pipeline import run
from corea_jax.reproduction.summary import plot_claim_margins, summarize_seeds
from corea_jax.reproduction import pipeline  # modules other packages use

__all__ = [
    "pipeline",
    "plot_claim_margins",
    "run",
    "summarize_seeds",
]
