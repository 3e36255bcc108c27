"""COREA as an OpenAI-compatible server: the SLM answers, a confidence below tau goes to the LLM.

  COREA_API_KEYS=key1,key2 python -m launch.serve --config=configs/serve/qwen_coder_cpu.py \
      --workdir=DIR --host=0.0.0.0 --port=8000
  python -m launch.serve --config=configs/serve/tiny.py --workdir=DIR   # no keys: 127.0.0.1 only

COREA_METRICS_KEYS=... adds keys that may read /metrics and /health's details only (a scraper).
Models: corea, corea-slm, corea-llm. Logs every request to DIR/records.jsonl; SIGHUP reloads
DIR/threshold.json (`launch.refit`); SIGTERM drains the requests in flight and exits.
"""

import signal

# First, before the imports that take seconds: a SIGHUP while the server starts (what
# `refit --pid` sends a restarting server) is remembered and applied once it runs.
_EARLY_SIGHUPS: list = []
signal.signal(signal.SIGHUP, lambda *_: _EARLY_SIGHUPS.append(True))

import logging  # noqa: E402
import os  # noqa: E402

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from corea_jax.serving import app as serving_app  # noqa: E402
from corea_jax.serving import parse_keys  # noqa: E402
from launch import quiet_logs, usage_errors  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", "configs/serve/tiny.py", "Server config.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory of records.jsonl and threshold.json.", required=True)
_HOST = flags.DEFINE_string("host", "127.0.0.1", "Address to listen on (beyond loopback only with API keys).")
_PORT = flags.DEFINE_integer("port", 8000, "Port to listen on.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    quiet_logs()
    logging.getLogger("corea_jax.serving").setLevel(logging.INFO)  # one line per request, start-up, reloads
    keys = parse_keys(os.environ.get("COREA_API_KEYS"))
    metrics_keys = parse_keys(os.environ.get("COREA_METRICS_KEYS"))
    with usage_errors():
        serving_app.check_listen(_HOST.value, keys)
        serving_app.serve(_CONFIG.value, _WORKDIR.value, host=_HOST.value, port=_PORT.value, api_keys=keys,
                          metrics_keys=metrics_keys, early_sighups=_EARLY_SIGHUPS)


if __name__ == "__main__":
    app.run(main)
