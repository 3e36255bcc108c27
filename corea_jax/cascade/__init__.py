"""The cascade: the SLM answers with a confidence; below a threshold tau the LLM answers.

Modules, one job each:
  datasets    evaluation items from any data set (Item, load_items)
  backends    answering with the JAX engine (LocalBackend); http: OpenAI-compatible servers
  records     records.jsonl, append-only and resumable (RecordStore, collect)
  costs       FLOPs / price / wall-time cost of a record (CostModel)
  thresholds  fixed, paper, target-usage, sweep and risk-controlled taus
  probe       the linear-probe confidence on the SLM's last hidden state
  report      systems, metrics, intervals, report.json / report.md / PNGs from records alone
  config      the job's settings: defaults(), model_spec / data_spec, resolve, validate
  loading     a model entry's model, backend and cost model (the cascade job and the server)
  evaluate    run(config, workdir): the whole job behind `launch.cascade`
"""

from corea_jax.cascade.thresholds import risk_controlled_threshold
from corea_jax.cascade.backends import (Answer, LocalBackend, MODES, failed_answer, messages_for,
                                        non_embedding_params)
from corea_jax.cascade.costs import CostModel, lm_head_params
from corea_jax.cascade.datasets import Item
from corea_jax.cascade.records import make_record
from corea_jax.cascade.thresholds import check_tau, keeps, tau_from_json, tau_to_json
from corea_jax.cascade import config, evaluate, loading, records, report, thresholds  # modules other packages use

__all__ = [
    "Answer",
    "CostModel",
    "Item",
    "LocalBackend",
    "MODES",
    "check_tau",
    "config",
    "evaluate",
    "failed_answer",
    "keeps",
    "lm_head_params",
    "loading",
    "make_record",
    "messages_for",
    "non_embedding_params",
    "records",
    "report",
    "risk_controlled_threshold",
    "tau_from_json",
    "tau_to_json",
    "thresholds",
]
