"""The main job: COREA end to end on a synthetic task with from-scratch models (launch.reproduce)."""

from corea_jax.reproduction.pipeline import run

__all__ = ["run"]
