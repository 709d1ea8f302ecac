"""(c) The Celery pipeline end to end: a burst of K runs submitted with `submit_run` to a real
`celery -A osiris_tasks worker` over a real Redis, against the reference sidecar; done when all
K rows are in LanceDB. Reported as a ratio against the in-process runner (b)."""

from __future__ import annotations

import tempfile
import time

from osiris_tasks import app, configure, submit_run
from osiris_tasks.store import RUNS_TABLE, RunStore

from .batches import run_states
from .env import Worker, bench_settings
from .report import Figure, Report

NAME = "celery"
POLL_S = 0.05
# Worker set-ups measured: label -> extra `celery worker` arguments.
POOLS = {
    "prefork x2 (default)": ("--pool", "prefork", "--concurrency", "2"),
    "threads x32": ("--pool", "threads", "--concurrency", "32"),
}


def run(report: Report, *, runs: int, redis_url: str, sidecar_url: str,
        baseline: Figure | None, timeout_s: float = 600.0) -> None:
    for label, args in POOLS.items():
        with tempfile.TemporaryDirectory(prefix="osiris-bench-celery-") as workdir:
            settings = bench_settings(redis_url, sidecar_url, workdir)
            configure(app, settings)
            with Worker(settings, *args) as worker:
                worker.wait_ready(app)
                store = RunStore(settings.lancedb_uri)
                _burst(store, 1, timeout_s)  # warm-up: the worker's imports and tables
                spent = _burst(store, runs, timeout_s)
                fragments = store.stats(RUNS_TABLE)["fragments"]
                store.close()
        report.add(NAME, f"burst of {runs} runs, worker {label}", runs / spent, "runs/s",
                   baseline=baseline, runs=runs, pool=label)
        report.add(NAME, f"worker {label}: fragments of orchestrator_runs after the burst",
                   fragments, "fragments")


def _burst(store: RunStore, runs: int, timeout_s: float) -> float:
    """Seconds from the first of `runs` submissions until all of them are recorded."""
    already = store.count(RUNS_TABLE)
    states = run_states(runs, seed=already + 1)
    started = time.perf_counter()
    for state in states:
        submit_run(app, state)
    deadline = time.monotonic() + timeout_s
    while store.count(RUNS_TABLE) < already + runs:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {store.count(RUNS_TABLE) - already} of {runs} runs "
                               f"recorded after {timeout_s} s")
        time.sleep(POLL_S)
    return time.perf_counter() - started
