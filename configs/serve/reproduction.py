"""COREA served from what the main job trained: the RLCC SLM and the LLM of a `launch.reproduce`
workdir, with the toy task's prompt and the SLM's verbal confidence.

  python -m launch.reproduce --workdir=runs/corea
  python -m launch.serve --config=configs/serve/reproduction.py --workdir=runs/serve
  python -m launch.serve --config=configs/serve/reproduction.py:DIR ...   # another reproduce workdir

The SLM is the RLCC-L1 run (`DIR/slm_rlcc/hf`), the LLM the base LLM (`DIR/llm_sft/hf`, the shipped
one unless the run was from scratch); questions are the toy's chains (`a=3;b=a+4;b?`), answered
with the restated solution and a `Confidence:` line, graded as numbers (task "gsm8k"). tau starts
at the paper's rule as the reproduction fitted it (the LLM's calibration pass@1, COREA's tau in
`DIR/report.json`), until DIR/threshold.json (`launch.refit` or the automatic re-fit) replaces it.
"""

import json
from pathlib import Path

from corea_jax.serving.config import defaults

DEFAULT_WORKDIR = "runs/corea"
# The paper's rule on the shipped LLM (its pass@1 on the 300 calibration questions) when the
# workdir has no report yet
PAPER_TAU = 0.9367


def reproduction_tau(workdir: Path) -> float:
    """COREA's tau in the reproduction's report.json (the protocol it reports), else PAPER_TAU."""
    report = Path(workdir) / "report.json"
    if report.is_file():
        tau = json.loads(report.read_text()).get("systems", {}).get("COREA", {}).get("tau")
        if isinstance(tau, (int, float)):
            return float(tau)
    return PAPER_TAU


def get_config(workdir: str = ""):
    workdir = Path(workdir or DEFAULT_WORKDIR)
    config = defaults()
    for role, stage in (("slm", "slm_rlcc"), ("llm", "llm_sft")):
        spec = config[role]
        spec.name = str(workdir / stage / "hf")
        spec.prompt = "question"  # the question alone as the user turn, as the toy was trained
        spec.slots = 32
        # the toy's positions are 128: a prompt of at most 48 tokens and 72 new ones (its answers
        # take about 30)
        spec.max_prompt_tokens = 48
        spec.max_new_tokens = 72
    config.task = "gsm8k"  # numeric answers
    config.confidence_source = "verbal"
    config.threshold.tau = reproduction_tau(workdir)
    config.limits.default_max_tokens = 72
    config.limits.max_question_chars = 200
    config.limits.requests_per_minute = 0.0  # a replay drives it faster than a person
    return config
