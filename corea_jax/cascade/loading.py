"""Building what a cascade model entry (`cascade.config.model_spec`) describes, for the cascade
job and the server alike.

  load_model(spec)                   the JAX model spec.name names (registry name or path)
  make_backend(spec, role)           its backend: LocalBackend (the engine) or HTTPBackend
  LazyBackend(spec, role)            the same, built on first use and droppable
  cost_model_from_config(config)     the CostModel config.cost_model names, with its prices
"""

from __future__ import annotations

import gc
from typing import Any

from corea_jax.cascade.backends import LocalBackend
from corea_jax.cascade.config import BACKENDS
from corea_jax.cascade.costs import CostModel


def load_model(spec) -> Any:
    """A `corea_jax.Model` from spec.name: a `models.fetch` registry name (fetched on first use)
    or a path (an HF directory, e.g. one exported by `launch.train`, or a .gguf file)."""
    import corea_jax
    from corea_jax.models import fetch

    name = spec.name
    if name in fetch.REGISTRY:
        path = fetch.fetch_model(name, fetch.default_model_dir(name))
    else:
        path = name
    mesh = None
    if spec.mesh:
        from corea_jax.parallel import make_mesh, parse_mesh

        mesh = make_mesh(parse_mesh(spec.mesh))
    return corea_jax.load_model(path, dtype=spec.dtype, mesh=mesh)


def make_backend(spec, role: str, progress: bool = True):
    """The backend config.<role> names: "local" (the JAX engine) or "http" (OpenAI-compatible)."""
    common = dict(name=f"{role}:{spec.name}", mode=spec.mode, prompt=spec.prompt,
                  max_new_tokens=spec.max_new_tokens, followup_tokens=spec.followup_tokens,
                  batch_size=spec.batch_size, temperature=spec.temperature,
                  system_prompt=spec.system_prompt or None, worked_example=spec.worked_example)
    if spec.backend == "local":
        return LocalBackend(load_model(spec), **common, probe_hidden=bool(spec.probe_hidden),
                            probe_window=int(spec.probe_window), schedule=spec.schedule, progress=progress)
    if spec.backend == "http":
        from corea_jax.cascade.http import HTTPBackend

        return HTTPBackend.from_config(spec.http, field=f"{role}.http", **common)
    raise ValueError(f"{role}.backend: expected one of {BACKENDS}, found {spec.backend!r}")


class LazyBackend:
    """Builds (loads) the backend on first use: a resumed run that has every record of a model
    never loads it."""

    def __init__(self, spec, role: str, progress: bool):
        self.spec, self.role, self.progress, self._backend = spec, role, progress, None

    def get(self):
        if self._backend is None:
            self._backend = make_backend(self.spec, self.role, self.progress)
        return self._backend

    def release(self) -> None:
        """Drops the model (its memory returns once nothing else holds it)."""
        if self._backend is not None:
            self._backend = None
            gc.collect()


def cost_model_from_config(config, slm_params: int | None = None, llm_params: int | None = None) -> CostModel:
    """The CostModel config.cost_model names, with parameter counts and prices per model."""
    params, prices = {}, {}
    for role, counted in (("slm", slm_params), ("llm", llm_params)):
        spec = config[role]
        params[role] = spec.non_embedding_params or counted
        price = spec.price_per_million
        prices[role] = tuple(price) if price else None
    return CostModel(config.cost_model, params=params, prices=prices)
