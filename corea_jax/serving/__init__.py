"""COREA as an OpenAI-compatible service: the SLM answers, low confidence goes to the LLM.

Modules, one job each (vLLM's split: wire format, logic, routes):
  protocol   pydantic request / response models and OpenAI's error schema
  chat       the logic, free of HTTP: cascade routing, usage, costs, the request log, shadowing
  answerers  a local model behind the batcher, or the cascade's HTTP backend
  batcher    an async queue feeding the continuous-batching scheduler (shared decode steps)
  auth       API keys and the per-key rate limit
  metrics    Prometheus metrics (GET /metrics, the dashboard)
  log        DIR/records.jsonl, one fsynced line per request (cascade record schema)
  refit      tau re-fitted from the live log (DIR/threshold.json, read again on SIGHUP)
  routes     the HTTP routes;  app  the app factory and `serve` (uvicorn)
"""

from corea_jax.serving.app import create_app, serve

__all__ = ["create_app", "serve"]
