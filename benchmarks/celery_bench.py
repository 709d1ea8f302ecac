"""(c) The Celery pipeline end to end: a burst of K runs submitted with `submit_run` to real
`celery -A osiris_tasks worker` processes over a real Redis, against the reference sidecar with
no latency (its own process); done when all K rows are in LanceDB.

Baselines, measured in the same run: the in-process runner (b) doing the same I/O, and the
naive Celery chain (`naive_app.py`: the run's shape as no-op tasks, Celery defaults, prefork
x2). Worker layouts: one threads worker serving every queue; the production layout (the
`workers/osiris.default` and `workers/osiris.sidecar` pools, one process each); two threads
workers serving every queue (one per core); prefork x2. Each figure carries the CPU per run of
the workers, Redis, the sidecar and this process (which submits): where the two cores go.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time

import redis

from osiris_tasks import app, configure, submit_run
from osiris_tasks.celery_app import DEFAULT_QUEUE, SIDECAR_QUEUE, TTS_QUEUE
from osiris_tasks.store import RUNS_TABLE, RunStore

from . import naive_app
from .batches import run_states
from .env import Worker, bench_settings, cpu_s, sidecar_process
from .report import Figure, Report

NAME = "celery"
POLL_S = 0.02
ALL_QUEUES = ",".join((DEFAULT_QUEUE, SIDECAR_QUEUE, TTS_QUEUE))
BENCH = "bench (submits)"


def _threads(queues: str, n: int) -> tuple[str, ...]:
    return ("-Q", queues, "--pool", "threads", "--concurrency", str(n))


# Worker layouts measured: label -> one argument tuple per worker process.
LAYOUTS = {
    "1 worker, threads x32, every queue": [_threads(ALL_QUEUES, 32)],
    "production: default threads x16 + sidecar threads x32": [
        _threads(DEFAULT_QUEUE, 16), _threads(f"{SIDECAR_QUEUE},{TTS_QUEUE}", 32)],
    "2 workers, threads x16, every queue": [_threads(ALL_QUEUES, 16)] * 2,
    "1 worker, prefork x2, every queue": [("-Q", ALL_QUEUES, "--pool", "prefork",
                                            "--concurrency", "2")],
}


def run(report: Report, *, runs: int, redis_url: str, baseline: Figure | None,
        timeout_s: float = 600.0) -> None:
    client = redis.Redis.from_url(redis_url)
    redis_pid = int(client.info("server")["process_id"])
    naive = _naive(report, client, runs, redis_url, timeout_s)
    with sidecar_process() as sidecar_url:
        for label, worker_args in LAYOUTS.items():
            client.flushdb()
            with tempfile.TemporaryDirectory(prefix="osiris-bench-celery-") as workdir:
                settings = bench_settings(redis_url, sidecar_url, workdir)
                _layout(report, settings, label, worker_args, runs, timeout_s,
                        baselines=(baseline, naive),
                        pids={"redis": redis_pid, "sidecar": sidecar_url.pid})
    client.close()


def _naive(report: Report, client: redis.Redis, runs: int, redis_url: str,
           timeout_s: float) -> Figure:
    """Runs/s of the naive chain (Celery defaults, prefork x2): the issue's baseline."""
    naive_app.app.conf.update(broker_url=redis_url, result_backend=redis_url)
    with tempfile.TemporaryDirectory() as workdir, \
            Worker(bench_settings(redis_url, "http://unused", workdir), "--pool", "prefork",
                   "--concurrency", "2", app_module="benchmarks.naive_app") as worker:
        worker.wait_ready(naive_app.app)
        spent = _until(lambda: int(client.get(naive_app.DONE_KEY) or 0),
                       lambda: [naive_app.naive_run().apply_async() for _ in range(runs)],
                       runs, timeout_s)
    return report.add(NAME, f"naive chain (no-op tasks, Celery defaults, prefork x2), burst "
                      f"of {runs}", runs / spent, "runs/s", runs=runs)


def _layout(report: Report, settings, label: str, worker_args, runs: int, timeout_s: float,
            *, baselines: tuple[Figure | None, Figure], pids: dict[str, int]) -> None:
    configure(app, settings)
    store = RunStore(settings.lancedb_uri)
    with contextlib.ExitStack() as stack:
        workers = [stack.enter_context(Worker(settings, *args)) for args in worker_args]
        for worker in workers:
            worker.wait_ready(app)
        processes = {**pids, **{f"worker {i + 1}": w.proc.pid for i, w in enumerate(workers)},
                     BENCH: os.getpid()}
        _burst(store, 2, timeout_s)  # warm-up: imports, tables, connections
        before = {name: _cpu_s(name, pid) for name, pid in processes.items()}
        spent = _burst(store, runs, timeout_s)
        cpu_ms = {name: round((_cpu_s(name, pid) - before[name]) / runs * 1000, 2)
                  for name, pid in processes.items()}
        fragments = store.stats(RUNS_TABLE)["fragments"]
    store.close()
    runner, naive = baselines
    rate = runs / spent
    report.add(NAME, f"burst of {runs} runs, {label}", rate, "runs/s", baseline=runner,
               runs=runs, layout=label, cpu_ms_per_run=cpu_ms,
               fragments_after=fragments)
    report.add(NAME, f"burst of {runs} runs, {label}, vs naive chain", rate, "runs/s",
               baseline=naive, runs=runs)
    report.add(NAME, f"{label}: CPU per run, all processes", sum(cpu_ms.values()), "ms",
               **cpu_ms)


def _cpu_s(name: str, pid: int) -> float:
    # Redis, the sidecar and the workers are this process's children: count it alone.
    return cpu_s(pid, children=name != BENCH)


def _burst(store: RunStore, runs: int, timeout_s: float) -> float:
    """Seconds from the first of `runs` submissions until all of them are recorded."""
    already = store.count(RUNS_TABLE)
    states = run_states(runs, seed=already + 1, accepted=True)
    return _until(lambda: store.count(RUNS_TABLE) - already,
                  lambda: [submit_run(app, state) for state in states], runs, timeout_s)


def _until(done, submit, runs: int, timeout_s: float) -> float:
    """Seconds from `submit()` until `done()` reaches `runs`."""
    start_count = done()
    started = time.perf_counter()
    submit()
    deadline = time.monotonic() + timeout_s
    while done() - start_count < runs:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {done() - start_count} of {runs} runs done after "
                               f"{timeout_s} s")
        time.sleep(POLL_S)
    return time.perf_counter() - started
