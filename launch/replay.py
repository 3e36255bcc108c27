"""Replays items at a COREA server as an OpenAI client would, grades each answer, posts the verdict
as feedback (POST /v1/corea/feedback) and scrapes the server's corea_* metrics as it goes.

  python -m launch.replay --base_url=http://127.0.0.1:8000/v1 --data=runs/corea/task/test.jsonl \
      --limit=2000 --rate=2 --shift_at=1000 --shift_to=chains:digits=3 --out=runs/replay

Writes OUT/replay.jsonl (a line a request), OUT/timeline.jsonl (a row of metrics every
--scrape_every requests) and OUT/summary.json, and prints the summary. --shift_to is a JSONL path
or a toy-chain spec (`chains:ops=3-4`, `chains:digits=3`; the grammar in corea_jax/serving/replay.py).
"""

import logging
import os

from absl import app, flags

from corea_jax.serving import replay, traffic
from launch import quiet_logs, usage_errors

_BASE_URL = flags.DEFINE_string("base_url", "http://127.0.0.1:8000/v1", "The server's OpenAI base URL.")
_DATA = flags.DEFINE_string("data", None, "JSONL of {question, answer} items, or a chains: spec.", required=True)
_LIMIT = flags.DEFINE_integer("limit", 100, "Requests to send (items are cycled).")
_RATE = flags.DEFINE_float("rate", 2.0, "Requests a second, open loop (0: as fast as --concurrency allows).")
_CONCURRENCY = flags.DEFINE_integer("concurrency", 8, "Requests in flight at most.")
_SHIFT_AT = flags.DEFINE_integer("shift_at", None, "From this request number on, items come from --shift_to.")
_SHIFT_TO = flags.DEFINE_string("shift_to", None, "JSONL path or chains: spec of the items after the shift.")
_API_KEY_ENV = flags.DEFINE_string("api_key_env", "COREA_API_KEY", "Environment variable holding the API key "
                                   "(unset: the key 'none', for a keyless server on loopback).")
_OUT = flags.DEFINE_string("out", "runs/replay", "Output directory (must not hold a replay.jsonl yet).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the item order and of generated items.")
_SCRAPE_EVERY = flags.DEFINE_integer("scrape_every", 100, "Requests between /metrics scrapes (0: only at the end).")
_TIMEOUT = flags.DEFINE_float("timeout_s", 120.0, "Seconds one try of a request may take.")
_RETRIES = flags.DEFINE_integer("retries", 3, "Further tries of a request refused with 429 / 503.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    quiet_logs()
    for name in ("httpx", "openai"):  # a line per request otherwise
        logging.getLogger(name).setLevel(logging.WARNING)
    with usage_errors():
        settings = replay.Settings(
            base_url=_BASE_URL.value, api_key=os.environ.get(_API_KEY_ENV.value) or "none", rate=_RATE.value,
            concurrency=_CONCURRENCY.value, timeout_s=_TIMEOUT.value, retries=_RETRIES.value,
            scrape_every=_SCRAPE_EVERY.value)
        planned = traffic.plan(_DATA.value, _LIMIT.value, seed=_SEED.value, shift_at=_SHIFT_AT.value,
                              shift_to=_SHIFT_TO.value)
        summary = replay.replay(settings, planned, _OUT.value)
    print(replay.describe(summary))
    print(f"wrote {_OUT.value}/replay.jsonl, timeline.jsonl, summary.json")


if __name__ == "__main__":
    app.run(main)
