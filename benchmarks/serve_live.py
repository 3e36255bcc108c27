"""COREA served live from what the main job trained: replayed traffic with feedback, the automatic
re-fit of tau, a shift to questions the SLM never trained on, and what the server saw.

  python -m launch.reproduce --workdir=runs/corea
  python -m benchmarks.serve_live --reproduce_workdir=runs/corea --out=docs/serving/live_run

Starts `launch.serve --config=configs/serve/reproduction.py:DIR` (the RLCC SLM and the LLM of the
reproduction; tau starts at the paper's rule from its report) with `shadow_rate`, automatic
re-fit (`refit.every_labels`, the risk rule at epsilon / delta) and the drift policy; replays
`--requests` questions of the toy's held-out test split (`DIR/task/test.jsonl`, cycled) with
`launch.replay`'s library, each followed by its feedback (graded against the gold answer), and
from request `--shift_at` on questions of `--shift_to` (default: one-digit chains of three
operations; the SLM trained on one or two); scrapes /metrics every `--scrape_every` requests.

Writes to OUT: server/ (records.jsonl, feedback.jsonl, threshold_history.jsonl, threshold.json,
the server's log), replay/ (replay.jsonl, timeline.jsonl, summary.json), timeline.png (tau and
the LLM share, live ECE / AUROC, the kept error against epsilon, the drift statistics),
timeline.md (the same by block of requests) and checks.json (the live numbers against the
offline report; each fit's observed error among kept requests, from gold labels, against its
epsilon; measured savings against the report's cost saving).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from absl import app, flags

_WORKDIR = flags.DEFINE_string("reproduce_workdir", "runs/corea", "A finished launch.reproduce workdir.")
_OUT = flags.DEFINE_string("out", "docs/serving/live_run", "Where the run's files go (must not exist).")
_REQUESTS = flags.DEFINE_integer("requests", 2400, "Requests in all.")
_SHIFT_AT = flags.DEFINE_integer("shift_at", 1600, "The first request of the shifted traffic.")
_SHIFT_TO = flags.DEFINE_string("shift_to", "chains:ops=3,digits=1", "The shifted traffic (launch.replay).")
_CONCURRENCY = flags.DEFINE_integer("concurrency", 8, "Requests in flight.")
_SCRAPE = flags.DEFINE_integer("scrape_every", 50, "Requests between /metrics scrapes.")
_EVERY = flags.DEFINE_integer("every_labels", 250, "refit.every_labels.")
_MIN_ITEMS = flags.DEFINE_integer("min_items", 200, "refit.min_items.")
_EPSILON = flags.DEFINE_float("epsilon", 0.05, "refit.epsilon.")
_DELTA = flags.DEFINE_float("delta", 0.1, "refit.delta.")
_POLICY = flags.DEFINE_string("drift_policy", "refit", "drift.policy.")
_SHADOW = flags.DEFINE_float("shadow_rate", 0.1, "shadow_rate.")
_BLOCK = flags.DEFINE_integer("block", 200, "Requests per row of timeline.md.")
_SEED = flags.DEFINE_integer("seed", 0, "The replay's order of questions (and the server's seed).")
_ANALYZE = flags.DEFINE_bool("analyze_only", False, "Only (re)write checks.json / timeline.* from OUT's files.")
_SHOTS = flags.DEFINE_list("screenshots_at", ["1500", "1750", "2400"],
                           "Requests done at which headless Chromium photographs the dashboard "
                           "(OUT/dashboard_<n>.png; none without chromium).")

REPO = Path(__file__).resolve().parents[1]


def start_server(workdir: Path, out: Path, port: int) -> subprocess.Popen:
    flags_ = [f"--config=configs/serve/reproduction.py:{workdir}", f"--workdir={out}", f"--port={port}",
              f"--config.shadow_rate={_SHADOW.value}", f"--config.refit.every_labels={_EVERY.value}",
              f"--config.refit.min_items={_MIN_ITEMS.value}", f"--config.refit.epsilon={_EPSILON.value}",
              f"--config.refit.delta={_DELTA.value}", f"--config.drift.policy={_POLICY.value}",
              f"--config.monitor.epsilon={_EPSILON.value}", f"--config.seed={_SEED.value}"]
    out.mkdir(parents=True)
    log = open(out / "server.log", "w")
    return subprocess.Popen([sys.executable, "-m", "launch.serve", *flags_], cwd=REPO, stdout=log,
                            stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": str(REPO)})


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def slm_outcomes(server: Path, replayed: list[dict]) -> dict[str, dict]:
    """{response id: {confidence, kept, slm_correct, index, phase, cost, llm_only_cost, version}}: the
    SLM's own answer graded against the item's gold (deferred requests included: exact labels,
    not the monitor's feedback-or-agreement ones)."""
    from corea_jax import grading

    by_id = {line["response_id"]: line for line in replayed if line.get("response_id")}
    out = {}
    for record in _jsonl(server / "records.jsonl"):
        line = by_id.get(record.get("request_id"))
        if line is None or record.get("served_model") != "corea" or record.get("deferred") is None:
            continue
        try:
            right = bool(grading.grade(record["response"], line["gold"], "gsm8k"))
        except ValueError:
            right = False
        out[line["response_id"]] = dict(
            confidence=(record.get("confidence") or {}).get("verbal"), kept=not record["deferred"],
            slm_correct=right, index=line["index"], phase=line["phase"], correct=line["correct"],
            version=record.get("threshold_version", 0), tau=record.get("tau"),
            cost=record.get("request_cost"), llm_only_cost=record.get("llm_only_cost"),
            shadow_cost=(record["llm"] or {}).get("cost") or 0.0 if record.get("shadow") else 0.0)
    return out


def bootstrap(values: list[tuple[float, bool]], statistic, n: int = 1000, seed: int = 0) -> list[float]:
    rng = np.random.default_rng(seed)
    conf = np.asarray([v[0] for v in values], float)
    right = np.asarray([v[1] for v in values], bool)
    stats = []
    for _ in range(n):
        pick = rng.integers(0, len(values), len(values))
        value = statistic(conf[pick], right[pick])
        if value is not None and np.isfinite(value):
            stats.append(value)
    return [float(np.quantile(stats, 0.025)), float(np.quantile(stats, 0.975))]


def checks(workdir: Path, outcomes: dict[str, dict], timeline: list[dict], shift_at: int, epsilon: float) -> dict:
    from corea_jax import calibration
    from corea_jax.serving.monitor import binomial_interval

    offline = json.loads((workdir / "cascade_rlcc" / "report.json").read_text())
    before = sorted((o for o in outcomes.values() if o["phase"] == "before"), key=lambda o: o["index"])
    last_window = [(o["confidence"], o["slm_correct"]) for o in before[-500:] if o["confidence"] is not None]
    scrape = max((row for row in timeline if row["requests_done"] <= shift_at), key=lambda r: r["requests_done"])
    live = scrape["samples"]
    result = {"calibration": {
        "offline": {k: offline["systems"]["COREA"][k] for k in ("ece", "auroc")},
        "live_at_request": scrape["requests_done"],
        "live": {"ece": live.get("corea_live_ece"), "auroc": live.get("corea_live_auroc"),
                 "labels": live.get("corea_live_labels{source=feedback}")},
        "exact_labels_last_500_before_shift": {
            "ece": calibration.ece([c for c, _ in last_window], [r for _, r in last_window]),
            "ece_interval": bootstrap(last_window, lambda c, r: calibration.ece(c, r)),
            "auroc": calibration.auroc([c for c, _ in last_window], [r for _, r in last_window]),
            "auroc_interval": bootstrap(last_window, lambda c, r: calibration.auroc(c, r))}}}
    exact = result["calibration"]["exact_labels_last_500_before_shift"]
    for key in ("ece", "auroc"):
        low, high = exact[f"{key}_interval"]
        result["calibration"][f"offline_{key}_within_live_interval"] = bool(low <= offline["systems"]["COREA"][key] <= high)
    fits = {}
    for version in sorted({o["version"] for o in before}):
        under = [o for o in before if o["version"] == version]
        wrong = sum(o["kept"] and not o["slm_correct"] for o in under)
        low, high = binomial_interval(wrong, len(under))
        fits[str(version)] = dict(requests=len(under), kept=sum(o["kept"] for o in under), kept_wrong=wrong,
                                  kept_error_share=wrong / len(under), interval=[low, high], epsilon=epsilon,
                                  within_epsilon=bool(wrong / len(under) <= epsilon),
                                  llm_share=1 - sum(o["kept"] for o in under) / len(under))
    result["fits_before_shift"] = fits
    alarmed = [row["requests_done"] for row in timeline if row["samples"].get("corea_drift_alarm") == 1]
    result["drift"] = dict(first_alarm_at_request=min(alarmed) if alarmed else None,
                           alarm_before_shift=any(n <= shift_at for n in alarmed),
                           max_statistic={stream: max((row["samples"].get(f"corea_drift_statistic{{stream={stream}}}", 0.0)
                                                       for row in timeline if row["requests_done"] <= shift_at), default=None)
                                          for stream in ("confidence", "loss")})
    result["savings_before_shift"] = dict(
        offline=offline["cost_saving"]["COREA"], offline_interval=offline["intervals"]["COREA"]["cost_saving"],
        live_gauge_at_request=live.get("corea_live_saved_fraction{kind=measured}"),
        live_gauge_interval=[live.get("corea_live_saved_fraction{kind=lower}"),
                             live.get("corea_live_saved_fraction{kind=upper}")])
    # under the paper's tau (version 0) and under every pre-shift tau (the fits keep the same
    # questions: RLCC states 1.0 or 0.0); with the shadow calls (the audit's price) and without
    for name, part in (("papers_tau", [o for o in before if o["version"] == 0]), ("all_taus", before)):
        part = [o for o in part if o["cost"] is not None and o["llm_only_cost"]]
        spent, alone = sum(o["cost"] for o in part), sum(o["llm_only_cost"] for o in part)
        shadow = sum(o["shadow_cost"] for o in part)
        result["savings_before_shift"][name] = dict(requests=len(part), measured=1 - spent / alone,
                                                    without_shadow_calls=1 - (spent - shadow) / alone)
    return result


def blocks(outcomes: dict[str, dict], timeline: list[dict], size: int) -> list[dict]:
    rows = []
    items = sorted(outcomes.values(), key=lambda o: o["index"])
    for start in range(0, len(items), size):
        part = items[start:start + size]
        end = part[-1]["index"] + 1
        scrape = max((r for r in timeline if r["requests_done"] <= end), key=lambda r: r["requests_done"], default=None)
        s = scrape["samples"] if scrape else {}
        rows.append(dict(
            requests=f"{part[0]['index']}-{part[-1]['index']}", phase="/".join(sorted({o["phase"] for o in part})),
            versions="/".join(str(v) for v in sorted({o["version"] for o in part})),
            taus="/".join(sorted({"defer all" if o["tau"] is None else f"{o['tau']:.3f}" for o in part})),
            llm_share=1 - sum(o["kept"] for o in part) / len(part),
            accuracy=sum(bool(o["correct"]) for o in part) / len(part),
            kept_wrong_share=sum(o["kept"] and not o["slm_correct"] for o in part) / len(part),
            live_ece=s.get("corea_live_ece"), live_auroc=s.get("corea_live_auroc"),
            live_kept_error=s.get("corea_live_kept_error_share"), live_kept_error_upper=s.get("corea_live_kept_error_upper"),
            drift_confidence=s.get("corea_drift_statistic{stream=confidence}"),
            drift_loss=s.get("corea_drift_statistic{stream=loss}"), drift_alarm=s.get("corea_drift_alarm")))
    return rows


def _cell(value, fmt="{:.3f}") -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "–"
    return fmt.format(value) if isinstance(value, (int, float)) else str(value)


def table(rows: list[dict]) -> str:
    head = ["requests", "phase", "tau version", "tau", "LLM share", "accuracy", "kept & SLM wrong (gold)",
            "live ECE", "live AUROC", "live kept error [upper]", "drift log10 M (conf / loss)", "alarm"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append("| " + " | ".join([
            r["requests"], r["phase"], r["versions"], r["taus"], _cell(r["llm_share"], "{:.1%}"),
            _cell(r["accuracy"], "{:.1%}"), _cell(r["kept_wrong_share"], "{:.1%}"), _cell(r["live_ece"]),
            _cell(r["live_auroc"]), f"{_cell(r['live_kept_error'])} [{_cell(r['live_kept_error_upper'])}]",
            f"{_cell(r['drift_confidence'], '{:.2f}')} / {_cell(r['drift_loss'], '{:.2f}')}",
            "yes" if r["drift_alarm"] == 1 else "no"]) + " |")
    return "\n".join(lines) + "\n"


def plot(outcomes: dict[str, dict], timeline: list[dict], shift_at: int, epsilon: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from corea_jax.files import save_figure

    rows = sorted(timeline, key=lambda r: r["requests_done"])
    x = [r["requests_done"] for r in rows]

    def series(key):
        return [r["samples"].get(key, np.nan) for r in rows]

    items = sorted(outcomes.values(), key=lambda o: o["index"])
    step = 100
    bx = [items[min(i + step, len(items)) - 1]["index"] + 1 for i in range(0, len(items), step)]
    block = [items[i:i + step] for i in range(0, len(items), step)]
    fig, axes = plt.subplots(4, 1, figsize=(10, 11), sharex=True)
    tau = [min(t, 1.05) if np.isfinite(t) else 1.05 for t in series("corea_tau")]
    axes[0].step(x, tau, where="post", label="tau (1.05: defer everything)")
    axes[0].plot(bx, [1 - sum(o["kept"] for o in b) / len(b) for b in block], "o-", ms=3,
                 label="LLM share (per 100 requests)")
    axes[0].plot(bx, [sum(bool(o["correct"]) for o in b) / len(b) for b in block], "s-", ms=3,
                 label="accuracy (gold, per 100)")
    axes[0].set_ylabel("tau / share")
    axes[1].plot(x, series("corea_live_ece"), label="live ECE")
    axes[1].plot(x, series("corea_live_auroc"), label="live AUROC")
    axes[1].set_ylabel("calibration (window)")
    axes[2].plot(bx, [sum(o["kept"] and not o["slm_correct"] for o in b) / len(b) for b in block], "o-", ms=3,
                 label="kept & SLM wrong (gold, per 100)")
    axes[2].plot(x, series("corea_live_kept_error_share"), label="live kept error share (window, under current tau)")
    axes[2].fill_between(x, series("corea_live_kept_error_lower"), series("corea_live_kept_error_upper"), alpha=0.2,
                         label="its 95% interval")
    axes[2].axhline(epsilon, color="red", ls=":", label=f"epsilon = {epsilon:g}")
    axes[2].set_ylabel("risk")
    for stream, color in (("confidence", "C0"), ("loss", "C1")):
        axes[3].plot(x, series(f"corea_drift_statistic{{stream={stream}}}"), color=color, label=f"drift: {stream}")
    axes[3].plot(x, series("corea_drift_alarm_level{stream=confidence}"), "r:", label="alarm level (alpha/2 each)")
    axes[3].set_ylabel("log10 martingale")
    axes[3].set_xlabel("requests")
    for ax in axes:
        ax.axvline(shift_at, color="gray", ls="--", lw=1)
        ax.legend(fontsize=7, loc="upper left")
        ax.grid(alpha=0.3)
    axes[0].set_title(f"COREA served live: held-out toy questions, then a shift at request {shift_at}", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


class Photographer(threading.Thread):
    """Takes a headless-Chromium screenshot of the dashboard as the replay passes each count of
    requests done (the lines of replay.jsonl)."""

    def __init__(self, url: str, replay_file: Path, counts: list[int], out: Path):
        super().__init__(daemon=True)
        self.url, self.replay_file, self.counts, self.out = url, replay_file, sorted(counts), out
        self.browser = shutil.which("chromium") or shutil.which("chromium-browser")
        self.stop = threading.Event()
        self.taken: list[str] = []

    def shoot(self, count: int) -> None:
        path = self.out / f"dashboard_{count}.png"
        with tempfile.TemporaryDirectory() as profile:
            subprocess.run([self.browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                            f"--user-data-dir={profile}", "--virtual-time-budget=8000", "--window-size=1280,2300",
                            f"--screenshot={path}", self.url], capture_output=True, timeout=120)
        if path.exists():
            self.taken.append(path.name)

    def run(self) -> None:
        pending = list(self.counts)
        while pending and self.browser and not self.stop.is_set():
            done = sum(1 for _ in self.replay_file.open()) if self.replay_file.exists() else 0
            if done >= pending[0]:
                self.shoot(pending.pop(0))
            else:
                time.sleep(0.2)


def main(argv):
    del argv
    import logging

    for name in ("httpx", "openai"):  # a line per request otherwise
        logging.getLogger(name).setLevel(logging.WARNING)
    from corea_jax.serving import replay, traffic
    from tests.serving_helpers import free_port, wait_until_healthy

    workdir, out = Path(_WORKDIR.value).resolve(), Path(_OUT.value)
    if _ANALYZE.value:
        return analyze(workdir, out, {}, [])
    if out.exists():
        raise app.UsageError(f"out: {out} exists; choose a new directory")
    if not (workdir / "slm_rlcc" / "hf").is_dir():
        raise app.UsageError(f"reproduce_workdir: {workdir} has no slm_rlcc/hf; run launch.reproduce first")
    port = free_port()
    server = start_server(workdir, (out / "server").resolve(), port)
    started = time.time()
    try:
        wait_until_healthy(f"http://127.0.0.1:{port}", server, 600, out / "server" / "server.log")
        photographer = Photographer(f"http://127.0.0.1:{port}/", out / "replay" / "replay.jsonl",
                                    [int(n) for n in _SHOTS.value if int(n) < _REQUESTS.value], out)
        photographer.start()
        settings = replay.Settings(base_url=f"http://127.0.0.1:{port}/v1", rate=0.0,
                                   concurrency=_CONCURRENCY.value, scrape_every=_SCRAPE.value)
        planned = traffic.plan(str(workdir / "task" / "test.jsonl"), _REQUESTS.value, seed=_SEED.value,
                              shift_at=_SHIFT_AT.value, shift_to=_SHIFT_TO.value)
        summary = replay.replay(settings, planned, out / "replay")
        photographer.stop.set()
        photographer.join(180)
        if _REQUESTS.value in [int(n) for n in _SHOTS.value]:
            time.sleep(2)  # the last feedback counted
            photographer.shoot(_REQUESTS.value)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(180)
    print(replay.describe(summary))
    analyze(workdir, out, dict(seconds=round(time.time() - started, 1), cpu=_cpu(), date=time.strftime("%Y-%m-%d")),
            photographer.taken)


def analyze(workdir: Path, out: Path, run: dict, screenshots: list[str]) -> None:
    """checks.json, timeline.md and timeline.png from OUT's server/ and replay/ files."""
    from corea_jax.files import write_atomic

    if not run and (out / "checks.json").exists():  # re-analysis keeps the run's own facts
        old = json.loads((out / "checks.json").read_text())
        run = {k: old[k] for k in ("seconds", "cpu", "date") if k in old}
        screenshots = old.get("screenshots", [])
    replayed = _jsonl(out / "replay" / "replay.jsonl")
    timeline = _jsonl(out / "replay" / "timeline.jsonl")
    outcomes = slm_outcomes(out / "server", replayed)
    result = checks(workdir, outcomes, timeline, _SHIFT_AT.value, _EPSILON.value)
    result.update(requests=len(replayed), **run, flags={f.name: f.value for f in (
                      _REQUESTS, _SHIFT_AT, _SHIFT_TO, _SEED, _CONCURRENCY, _EVERY, _MIN_ITEMS, _EPSILON, _DELTA,
                      _POLICY, _SHADOW)},
                  history=_jsonl(out / "server" / "threshold_history.jsonl"), screenshots=screenshots)
    write_atomic(out / "checks.json", json.dumps(result, indent=2) + "\n")
    write_atomic(out / "timeline.md", table(blocks(outcomes, timeline, _BLOCK.value)))
    plot(outcomes, timeline, _SHIFT_AT.value, _EPSILON.value, out / "timeline.png")
    print(json.dumps({k: result[k] for k in ("calibration", "fits_before_shift", "savings_before_shift")},
                     indent=1))
    print(f"wrote {out}/checks.json, timeline.md, timeline.png")


def _cpu() -> str:
    try:
        return next(line.split(":", 1)[1].strip() for line in subprocess.run(
            ["lscpu"], capture_output=True, text=True).stdout.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration):
        return "unknown"


if __name__ == "__main__":
    app.run(main)
