"""The cascade: the SLM answers with a confidence; below a threshold tau the LLM answers.

Modules, one job each:
  datasets    evaluation items from any data set (Item, load_items)
  backends    answering with the JAX engine (LocalBackend); http: OpenAI-compatible servers
  records     records.jsonl, append-only and resumable (RecordStore, collect)
  costs       FLOPs / price / wall-time cost of a record (CostModel)
  thresholds  fixed, paper, target-usage, sweep and risk-controlled taus
  probe       the linear-probe confidence on the SLM's last hidden state
  report      systems, metrics, intervals, report.json / report.md / PNGs from records alone
  evaluate    run(config, workdir): the whole job behind `launch.cascade`
"""

from corea_jax.cascade.thresholds import risk_controlled_threshold

__all__ = ["risk_controlled_threshold"]
