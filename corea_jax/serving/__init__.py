"""COREA as an OpenAI-compatible service: the SLM answers, low confidence goes to the LLM.

Modules, one job each (vLLM's split: wire format, logic, routes):
  protocol   pydantic request / response models and OpenAI's error schema
  chat       the logic, free of HTTP: cascade routing, usage, costs, the request log, shadowing
  answerers  a local model behind the batcher, or the cascade's HTTP backend
  batcher    an async queue feeding the continuous-batching scheduler (shared decode steps)
  auth       API keys (and metrics keys), the per-key rate limit, the keyless loopback guard
  metrics    Prometheus metrics (GET /metrics, the dashboard)
  log        DIR/records.jsonl (mode 0600), one fsynced line per request (cascade record schema)
  refit      tau re-fitted from the live log (DIR/threshold.json, read again on SIGHUP)
  replay     traffic replayed at a server as a client sends it, graded, fed back (launch.replay)
  traffic    what the replay sends: items with gold answers, toy chains, a shift part way
  routes     the HTTP routes;  app  the app factory and `serve` (uvicorn)
"""

from corea_jax.serving.app import create_app, serve
from corea_jax.serving.auth import parse_keys
from corea_jax.serving import app, refit, replay, traffic  # modules other packages use

__all__ = [
    "app",
    "create_app",
    "parse_keys",
    "refit",
    "replay",
    "traffic",
    "serve",
]
