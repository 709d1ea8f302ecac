"""(c) The Celery pipeline end to end: a burst of K runs submitted with `submit_run` to real
`celery -A osiris_tasks worker` processes over a real Redis, against the reference sidecar with
no latency (its own process); done when all K rows are in LanceDB.

Baselines, measured in the same run: the in-process runner (b) doing the same I/O, and the
naive Celery chain (`naive_app.py`: the run's shape as no-op tasks, Celery defaults, prefork
x2), and the floor chain (`floor_app.py`: the same no-op tasks on this project's Celery
configuration, two threads x2 workers, the cheapest of the layouts tried), whose CPU per run
is what 7 tasks cost with no work in them: the pipeline's CPU per run is reported against it.
Worker layouts: one threads worker serving every queue; the production layout (the
`workers/osiris.default` and `workers/osiris.sidecar` pools, one process each); two threads
workers serving every queue (one per core); prefork x2. Each figure carries the CPU per run of
the workers, Redis, the sidecar and this process (which submits): where the two cores go.

Then a design the project does not ship, against the production layout: one task per run
(`runtask_app.py`, the in-process runner inside a task), what the fewest hops would give.

Last, large batches (`LARGE_BATCH_TICKS` ticks per run) on the production layout, with their
ticks by reference (`osiris_tasks/tickstash.py`, the default) against the same runs with the
ticks in every task message (`OSIRIS_TICKS_BY_REFERENCE_MIN=0`), the baseline.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time

import redis

from osiris_tasks import app, configure, submit_run
from osiris_tasks.keys import DEFAULT_QUEUE, SIDECAR_QUEUE, TTS_QUEUE
from osiris_tasks.settings import Settings
from osiris_tasks.store.runstore import RUNS_TABLE, RunStore
from osiris_tasks.transport import results

from . import floor_app, naive_app, runtask_app
from .batches import run_states
from .env import Worker, bench_settings, cpu_s, redis_pid, sidecar_process
from .report import Figure, Report

NAME = "celery"
POLL_S = 0.02
ALL_QUEUES = ",".join((DEFAULT_QUEUE, SIDECAR_QUEUE, TTS_QUEUE))
BENCH = "bench (submits)"


def _threads(queues: str, n: int) -> tuple[str, ...]:
    return ("-Q", queues, "--pool", "threads", "--concurrency", str(n))


PRODUCTION = "production: default threads x16 + sidecar threads x32"
# Worker layouts measured: label -> one argument tuple per worker process.
LAYOUTS = {
    "1 worker, threads x32, every queue": [_threads(ALL_QUEUES, 32)],
    PRODUCTION: [_threads(DEFAULT_QUEUE, 16), _threads(f"{SIDECAR_QUEUE},{TTS_QUEUE}", 32)],
    "2 workers, threads x16, every queue": [_threads(ALL_QUEUES, 16)] * 2,
    "1 worker, prefork x2, every queue": [
        ("-Q", ALL_QUEUES, "--pool", "prefork", "--concurrency", "2")
    ],
}
# Ticks per run of the large batches, and the two ways their ticks travel: label -> the
# setting `ticks_by_reference_min` (0: in every message; the baseline first).
LARGE_BATCH_TICKS = 500
TICKS_TRAVEL = {
    "ticks in every message": 0,
    "ticks by reference": Settings().ticks_by_reference_min,
}
# The design alternative (not shipped): one task per run, on the default queue.
ONE_TASK_PER_RUN = {
    "one task per run (not shipped), threads x16": [_threads(DEFAULT_QUEUE, 16)],
    "one task per run (not shipped), 2 workers threads x8": [_threads(DEFAULT_QUEUE, 8)] * 2,
}


def run(
    report: Report, *, runs: int, redis_url: str, baseline: Figure | None, timeout_s: float = 600.0
) -> None:
    client = redis.Redis.from_url(redis_url)
    server_pid = redis_pid(redis_url)
    (naive, _), (_, floor_cpu) = (
        _noop_chain(report, label, client, runs, redis_url, timeout_s, server_pid)
        for label in NOOP_CHAINS
    )
    with sidecar_process() as sidecar_url:
        pids = {"redis": server_pid, "sidecar": sidecar_url.pid}

        def layout(label: str, worker_args, states, *, min_ticks=None, **options) -> Figure:
            client.flushdb()
            with tempfile.TemporaryDirectory(prefix="osiris-bench-celery-") as workdir:
                settings = bench_settings(redis_url, sidecar_url, workdir)
                if min_ticks is not None:
                    settings = settings.with_(ticks_by_reference_min=min_ticks)
                return _layout(
                    report, settings, label, worker_args, states, timeout_s, pids=pids, **options
                )

        states = run_states(runs, seed=1, accepted=True)
        baselines = {"baselines": (baseline, naive, floor_cpu)}
        rates = {
            label: layout(label, worker_args, states, **baselines)[0]
            for label, worker_args in LAYOUTS.items()
        }
        for label, worker_args in ONE_TASK_PER_RUN.items():
            rate, _ = layout(
                label,
                worker_args,
                states,
                app_module=runtask_app.__name__,
                submit=runtask_app.submit,
                **baselines,
            )
            report.add(
                NAME,
                f"burst of {runs} runs, {label}, vs production",
                rate.value,
                "runs/s",
                baseline=rates[PRODUCTION],
                runs=runs,
            )
        large = run_states(runs // 2, seed=1, accepted=True, ticks_per_run=LARGE_BATCH_TICKS)
        travel = {
            label: layout(
                f"runs of {LARGE_BATCH_TICKS} ticks, {label}",
                LAYOUTS[PRODUCTION],
                large,
                min_ticks=min_ticks,
            )
            for label, min_ticks in TICKS_TRAVEL.items()
        }
        (inline_rate, inline_cpu), (ref_rate, ref_cpu) = travel.values()
        name = f"runs of {LARGE_BATCH_TICKS} ticks, production layout, ticks by reference"
        report.add(NAME, name, ref_rate.value, "runs/s", baseline=inline_rate)
        report.add(
            NAME, f"{name}: CPU per run, all processes", ref_cpu.value, "ms", baseline=inline_cpu
        )
    client.close()


# The no-op chains: label -> (app module, worker arguments per process).
NOOP_CHAINS = {
    "naive chain (no-op tasks, Celery defaults, prefork x2)": (
        naive_app,
        [("--pool", "prefork", "--concurrency", "2")],
    ),
    # Ad hoc, CPU per run in two rounds: 2 workers threads x2 10.9 / 13.5 ms; prefork x2 11.3 /
    # 14.2; 1 worker threads x16 12.0 / 15.0; 2 workers threads x8 15.8 / 19.2.
    "floor chain (no-op tasks, this project's Celery configuration, 2 workers threads x2)": (
        floor_app,
        [("-Q", DEFAULT_QUEUE, "--pool", "threads", "--concurrency", "2")] * 2,
    ),
}


def _noop_chain(
    report: Report,
    label: str,
    client: redis.Redis,
    runs: int,
    redis_url: str,
    timeout_s: float,
    server_pid: int,
) -> tuple[Figure, Figure]:
    """Runs/s of a no-op chain (`naive_app`: the issue's baseline; `floor_app`: the least
    7 tasks cost as this project runs Celery), and its CPU per run, all processes."""
    module, worker_args = NOOP_CHAINS[label]
    module.app.conf.update(
        broker_url=redis_url,
        result_backend=results.backend_url(redis_url) if module is floor_app else redis_url,
    )
    with contextlib.ExitStack() as stack:
        workdir = stack.enter_context(tempfile.TemporaryDirectory())
        settings = bench_settings(redis_url, "http://unused", workdir)
        workers = [
            stack.enter_context(Worker(settings, *args, app_module=module.__name__))
            for args in worker_args
        ]
        for worker in workers:
            worker.wait_ready(module.app)
        processes = {
            "redis": server_pid,
            BENCH: os.getpid(),
            **{f"worker {i + 1}": w.proc.pid for i, w in enumerate(workers)},
        }
        done = lambda: int(client.get(module.DONE_KEY) or 0)  # noqa: E731
        submit = lambda n: [module.submit() for _ in range(n)]  # noqa: E731
        _until(done, lambda: submit(2), 2, timeout_s)  # warm-up: connections, imports
        before = {name: _cpu_s(name, pid) for name, pid in processes.items()}
        spent = _until(done, lambda: submit(runs), runs, timeout_s)
        cpu_ms = {
            name: round((_cpu_s(name, pid) - before[name]) / runs * 1000, 2)
            for name, pid in processes.items()
        }
    module.app.backend.result_consumer.stop()  # closes its subscriptions to the runs' results
    rate = report.add(NAME, f"{label}, burst of {runs}", runs / spent, "runs/s", runs=runs)
    cpu = report.add(
        NAME,
        f"{label.split(' (')[0]}: CPU per run, all processes",
        round(sum(cpu_ms.values()), 2),
        "ms",
        **cpu_ms,
    )
    return rate, cpu


def _layout(
    report: Report,
    settings,
    label: str,
    worker_args,
    states: list[dict],
    timeout_s: float,
    *,
    pids: dict[str, int],
    baselines: tuple[Figure | None, Figure | None, Figure | None] = (None, None, None),
    app_module: str = "osiris_tasks",
    submit=None,
) -> tuple[Figure, Figure]:
    """Runs/s and CPU per run of a burst of `states` on `worker_args`' workers (of
    `app_module`), each run submitted with `submit(state)` (default: `submit_run`)."""
    configure(app, settings)
    store = RunStore(settings.lancedb_uri)
    submit = submit or (lambda state: submit_run(app, state))
    with contextlib.ExitStack() as stack:
        workers = [
            stack.enter_context(Worker(settings, *args, app_module=app_module))
            for args in worker_args
        ]
        for worker in workers:
            worker.wait_ready(app)
        processes = {
            **pids,
            **{f"worker {i + 1}": w.proc.pid for i, w in enumerate(workers)},
            BENCH: os.getpid(),
        }
        # warm-up: imports, tables, connections
        _burst(store, run_states(2, seed=0, accepted=True), timeout_s, submit)
        runs = len(states)
        before = {name: _cpu_s(name, pid) for name, pid in processes.items()}
        spent = _burst(store, states, timeout_s, submit)
        cpu_ms = {
            name: round((_cpu_s(name, pid) - before[name]) / runs * 1000, 2)
            for name, pid in processes.items()
        }
        fragments = store.stats(RUNS_TABLE)["fragments"]
    store.close()
    runner, naive, floor_cpu = baselines
    rate = runs / spent
    figure = report.add(
        NAME,
        f"burst of {runs} runs, {label}",
        rate,
        "runs/s",
        baseline=runner,
        runs=runs,
        layout=label,
        cpu_ms_per_run=cpu_ms,
        fragments_after=fragments,
    )
    if naive is not None:
        report.add(
            NAME,
            f"burst of {runs} runs, {label}, vs naive chain",
            rate,
            "runs/s",
            baseline=naive,
            runs=runs,
        )
    cpu = report.add(
        NAME,
        f"{label}: CPU per run, all processes",
        sum(cpu_ms.values()),
        "ms",
        baseline=floor_cpu,
        **cpu_ms,
    )
    return figure, cpu


def _cpu_s(name: str, pid: int) -> float:
    # Redis, the sidecar and the workers are this process's children: count it alone.
    return cpu_s(pid, children=name != BENCH)


def _burst(store: RunStore, states: list[dict], timeout_s: float, submit) -> float:
    """Seconds from the first of `states`' submissions until all of them are recorded."""
    already = store.count(RUNS_TABLE)
    return _until(
        lambda: store.count(RUNS_TABLE) - already,
        lambda: [submit(state) for state in states],
        len(states),
        timeout_s,
    )


def _until(done, submit, runs: int, timeout_s: float) -> float:
    """Seconds from `submit()` until `done()` reaches `runs`."""
    start_count = done()
    started = time.perf_counter()
    submit()
    deadline = time.monotonic() + timeout_s
    while done() - start_count < runs:
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"only {done() - start_count} of {runs} runs done after {timeout_s} s"
            )
        time.sleep(POLL_S)
    return time.perf_counter() - started
