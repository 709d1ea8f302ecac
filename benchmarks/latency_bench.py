"""(f) Latency at light load, tick to `advice.generated`, and a worker's memory over many runs.

Latency (target: p50 <= 50 ms, p99 <= 250 ms at light load with an instant sidecar). The real
`Bridge` runs in this process on a bench channel (`group_by="none"`, 10 ticks per run) and
submits with the real `submit_run`; real `celery -A osiris_tasks worker` processes run the
canvas over a real Redis against the reference sidecar (no latency). Ticks of `run_states`
batches (accepted and rejected runs, as they come) are PUBLISHed one by one at a steady pace,
one batch per `run_interval_s`, so the pipeline is far under capacity. A run's latency is from
just before the PUBLISH of the tick that completes its batch to the arrival of its
`advice.generated` on a subscriber of this process. The clock starts at the tick, not at
`submit_run`, because the target is about the tick: the bridge's read, batching and hand-off to
its submitter thread are part of what a trader waits for. The submit callback maps each batch to
its run_id, so each run's time splits into bridge (tick -> submit called), submit
(`submit_run`), and the workers' part, which the recorded `timings_ms` split into node time on
the critical path and Celery's hops between the tasks.

Baselines, in the same run: the same batches through `InProcessRunner` (same Redis, sidecar and
a LanceDB of its own), from `runner.run(state)` to the arrival of its `advice.generated` on the
same subscriber, p50 and p99 (the whole run, `record_run` included, is in the params).

Memory (target: worker RSS flat over 10k runs). One threads worker serving every queue; runs
submitted with `submit_run`, at most `memory_inflight` without their `advice.generated`; the
worker's RSS (`/proc/<pid>/status`) is sampled after each tenth of the runs, once that tenth's
events have all arrived; growth = the largest later sample - the sample after the first tenth.
Twice: with glibc malloc (`MALLOC_ARENA_MAX=2`), the baseline, then with the worker profiles'
allocator (`workers/memory.sh`: jemalloc when installed).

`python -m benchmarks.latency_bench [--quick]` runs it alone (its report goes to
`benchmarks/results/latency/`).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import statistics
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import redis

from osiris_tasks import app, configure, submit_run
from osiris_tasks.adapters.resources import Resources
from osiris_tasks.bridge.service import ADVICE_CHANNEL, Bridge, BridgeConfig
from osiris_tasks.keys import DEFAULT_QUEUE, SIDECAR_QUEUE, TTS_QUEUE
from osiris_tasks.store.runstore import RUNS_TABLE, RunStore
from osiris_tasks.workflow.runner import InProcessRunner

from .batches import TICKS_PER_RUN, run_states
from .env import (
    Worker,
    bench_settings,
    children_rss_mb,
    embedded_redis,
    memory_env,
    rss_mb,
    sidecar_process,
)
from .report import RESULTS_DIR, Figure, Report

__all__ = ["FULL", "QUICK", "AdviceListener", "Sizes", "main", "run"]

NAME = "latency"
CHANNEL = "bench.latency.ticks"
# The targets' fixed bounds.
P50_TARGET_MS, P99_TARGET_MS = 50.0, 250.0
# Longest wait for one run's advice.generated, and for every row to be recorded.
ADVICE_TIMEOUT_S = 60.0
RECORD_TIMEOUT_S = 60.0
POLL_S = 0.05
BRIDGE_START_TIMEOUT_S = 10.0
# Seeds of the batches: warm-up, measured runs, memory runs (one tenth each: seed + step).
WARMUP_SEED, LATENCY_SEED, MEMORY_SEED = 3, 17, 1_000
MEMORY_STEPS = 10
# Nodes on a run's critical path up to advice.generated (the evaluators run in parallel).
SERIAL_NODES = ("query_market", "generate_proposal", "risk_management", "publish_events")
EVALUATORS = ("evaluate_proposal", "score_proposal")


@dataclass(frozen=True)
class Sizes:
    """How much each part measures."""

    warmup_runs: int  # runs before measuring: imports, tables, connections
    latency_runs: int  # measured runs per worker layout (and in-process)
    run_interval_s: float  # one batch completes every this many seconds
    memory_runs: int  # runs through the worker whose RSS is sampled
    memory_inflight: int  # most runs submitted without their advice.generated yet


QUICK = Sizes(
    warmup_runs=5, latency_runs=60, run_interval_s=0.15, memory_runs=1_000, memory_inflight=50
)
FULL = Sizes(
    warmup_runs=10, latency_runs=500, run_interval_s=0.15, memory_runs=10_000, memory_inflight=50
)


def _threads(queues: Sequence[str], concurrency: int) -> tuple[str, ...]:
    """A threads worker's arguments, with the `workers/osiris.*` profiles' prefetch."""
    return (
        "-Q",
        ",".join(queues),
        "--pool",
        "threads",
        "--concurrency",
        str(concurrency),
        "--prefetch-multiplier",
        "1",
    )


SINGLE = "1 worker, threads x32, every queue"
# Worker layouts measured: label -> one argument tuple per worker process.
LAYOUTS = {
    "production: default threads x16 + sidecar threads x32": [
        _threads([DEFAULT_QUEUE], 16),
        _threads([SIDECAR_QUEUE], 32),
    ],
    SINGLE: [_threads([DEFAULT_QUEUE, SIDECAR_QUEUE, TTS_QUEUE], 32)],
}


# -- what the bench sees ----------------------------------------------------------------------


class AdviceListener:
    """Subscribed to `advice.generated` on its own connection and thread: when
    (`perf_counter()`) each run's event arrived, and the run's status."""

    def __init__(self, redis_url: str):
        self._client = redis.Redis.from_url(redis_url)
        self._pubsub = self._client.pubsub(ignore_subscribe_messages=True)
        self._pubsub.subscribe(ADVICE_CHANNEL)
        self._pubsub.get_message(timeout=1.0)  # the confirmation: subscribed from here on
        self._arrived: dict[str, tuple[float, str]] = {}
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._listen, name="bench-advice", daemon=True)
        self._thread.start()

    def _listen(self) -> None:
        while not self._stop.is_set():
            message = self._pubsub.get_message(timeout=POLL_S)
            if message is None:
                continue
            arrived = time.perf_counter()
            event = orjson.loads(message["data"])
            with self._cond:
                self._arrived[event["run_id"]] = (arrived, event.get("status", ""))
                self._cond.notify_all()

    def count(self) -> int:
        """Events received so far (callable from a `wait` predicate: the lock is an RLock)."""
        with self._cond:
            return len(self._arrived)

    def wait(self, ready: Callable[[], bool], timeout_s: float = ADVICE_TIMEOUT_S) -> None:
        """Until `ready()` (called holding the listener's lock) is true; RuntimeError after
        `timeout_s`."""
        with self._cond:
            if not self._cond.wait_for(ready, timeout_s):
                raise RuntimeError(
                    f"no advice.generated within {timeout_s} s "
                    f"({len(self._arrived)} received so far)"
                )

    def arrival(self, run_id: str, timeout_s: float = ADVICE_TIMEOUT_S) -> tuple[float, str]:
        """`(perf_counter() at arrival, status)` of `run_id`'s event, waiting for it."""
        self.wait(lambda: run_id in self._arrived, timeout_s)
        return self._arrived[run_id]

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._pubsub.close()
        self._client.close()

    def __enter__(self) -> AdviceListener:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass(frozen=True)
class Submission:
    """A run the bridge submitted: its id, and when `submit` was called and returned."""

    run_id: str
    called: float
    returned: float


def batch_key(ticks: Sequence[dict[str, Any]]) -> float:
    """What identifies a batch before and after the bridge: its last tick's timestamp."""
    return ticks[-1]["timestamp"]


@contextlib.contextmanager
def running_bridge(redis_url: str) -> Iterator[dict[float, Submission]]:
    """The real `Bridge` on CHANNEL in a thread of this process, submitting with `submit_run`
    to `app`; yields the submissions it has made so far, by `batch_key`."""
    submitted: dict[float, Submission] = {}

    def submit(state: dict[str, Any]) -> None:
        called = time.perf_counter()
        submit_run(app, state)
        submitted[batch_key(state["ticks"])] = Submission(
            state["run_id"], called, time.perf_counter()
        )

    config = BridgeConfig(
        redis_url, market_channel=CHANNEL, ticks_per_proposal=TICKS_PER_RUN, group_by="none"
    )
    bridge = Bridge(config, submit)
    thread = threading.Thread(target=bridge.run, name="bench-bridge", daemon=True)
    thread.start()
    try:
        _wait_subscribed(redis_url)
        yield submitted
    finally:
        bridge.stop()
        thread.join()


def _wait_subscribed(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    deadline = time.monotonic() + BRIDGE_START_TIMEOUT_S
    try:
        while not dict(client.pubsub_numsub(CHANNEL)).get(CHANNEL.encode()):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the bridge did not subscribe to {CHANNEL}")
            time.sleep(0.01)
    finally:
        client.close()


def publish_batches(client: redis.Redis, states: Sequence[dict], interval_s: float) -> list[float]:
    """PUBLISH every batch's ticks on CHANNEL, evenly spaced, one batch per `interval_s`; the
    `perf_counter()` just before the PUBLISH of each batch's last tick."""
    tick_interval_s = interval_s / TICKS_PER_RUN
    started, sent, completes = time.perf_counter(), 0, []
    for state in states:
        ticks = state["ticks"]
        for index, tick in enumerate(ticks):
            payload = orjson.dumps(tick)
            _sleep_until(started + sent * tick_interval_s)
            if index == len(ticks) - 1:
                completes.append(time.perf_counter())
            client.publish(CHANNEL, payload)
            sent += 1
    return completes


def _sleep_until(deadline: float) -> None:
    if (left := deadline - time.perf_counter()) > 0:
        time.sleep(left)


def percentiles_ms(samples_s: Sequence[float]) -> dict[str, float]:
    """p50, p90, p99 and max of `samples_s`, in ms."""
    cuts = statistics.quantiles(samples_s, n=100, method="inclusive")
    return {
        name: round(value * 1000, 2)
        for name, value in (
            ("p50", statistics.median(samples_s)),
            ("p90", cuts[89]),
            ("p99", cuts[98]),
            ("max", max(samples_s)),
        )
    }


def _median_ms(samples_s: Sequence[float]) -> float:
    return round(statistics.median(samples_s) * 1000, 2)


# -- latency ----------------------------------------------------------------------------------


def in_process(
    report: Report, sizes: Sizes, redis_url: str, sidecar_url: str, listener: AdviceListener
) -> tuple[Figure, Figure]:
    """The baselines, p50 and p99: batches through InProcessRunner, one after another, from
    `run()` to their advice.generated."""
    to_advice, whole = [], []
    with tempfile.TemporaryDirectory(prefix="osiris-bench-latency-") as workdir:
        resources = Resources.from_settings(bench_settings(redis_url, sidecar_url, workdir))
        try:
            runner = InProcessRunner(resources)
            for state in run_states(sizes.warmup_runs, seed=WARMUP_SEED):
                runner.run(state)
            for state in run_states(sizes.latency_runs, seed=LATENCY_SEED):
                started = time.perf_counter()
                runner.run(state)
                whole.append(time.perf_counter() - started)
                to_advice.append(listener.arrival(state["run_id"])[0] - started)
        finally:
            resources.close()
    stats = percentiles_ms(to_advice)
    name = "in-process runner: batch -> advice.generated"
    return (
        report.add(
            NAME,
            f"{name}, p50",
            stats["p50"],
            "ms",
            runs=len(to_advice),
            **stats,
            whole_run_p50_ms=_median_ms(whole),
        ),
        report.add(NAME, f"{name}, p99", stats["p99"], "ms", runs=len(to_advice)),
    )


def through_workers(
    report: Report,
    sizes: Sizes,
    label: str,
    worker_args,
    *,
    redis_url: str,
    sidecar_url: str,
    listener: AdviceListener,
    baselines: tuple[Figure, Figure],
) -> None:
    """Latency figures of one worker layout (p50 and p99, against the in-process ones), with
    where the time goes."""
    with tempfile.TemporaryDirectory(prefix="osiris-bench-latency-") as workdir:
        settings = bench_settings(redis_url, sidecar_url, workdir)
        configure(app, settings)
        with contextlib.ExitStack() as stack:
            workers = [stack.enter_context(Worker(settings, *args)) for args in worker_args]
            for worker in workers:
                worker.wait_ready(app)
            runs = _stream_runs(sizes, redis_url, listener)
            # With the workers still up: a run's record_run is queued after its advice.generated,
            # and a worker shutting down leaves it in the queue (2026-12-05: 509 of 510 recorded).
            timings = _recorded_timings(settings.lancedb_uri, redis_url, len(runs))
    measured = runs[sizes.warmup_runs :]
    latencies = [run["latency_s"] for run in measured]
    stats = percentiles_ms(latencies)
    report.add(
        NAME,
        f"{label}: tick -> advice.generated, p50 (target <= {P50_TARGET_MS:g} ms)",
        stats["p50"],
        "ms",
        baseline=baselines[0],
        layout=label,
        runs=len(measured),
        run_interval_s=sizes.run_interval_s,
        targets_ms={"p50": P50_TARGET_MS, "p99": P99_TARGET_MS},
        **stats,
        outcomes=_outcomes(measured),
    )
    report.add(
        NAME,
        f"{label}: tick -> advice.generated, p99 (target <= {P99_TARGET_MS:g} ms)",
        stats["p99"],
        "ms",
        baseline=baselines[1],
        runs=len(measured),
    )
    report.add(
        NAME,
        f"{label}: Celery overhead per hop, p50",
        _per_hop_ms(measured, timings),
        "ms",
        **_breakdown(measured, timings),
    )


def _stream_runs(sizes: Sizes, redis_url: str, listener: AdviceListener) -> list[dict]:
    """Warm-up and measured batches through the bridge and the workers: per run, its run_id,
    status and the times of its tick, submission and advice."""
    states = run_states(sizes.warmup_runs, seed=WARMUP_SEED) + run_states(
        sizes.latency_runs, seed=LATENCY_SEED
    )
    client = redis.Redis.from_url(redis_url)
    try:
        with running_bridge(redis_url) as submitted:
            completes = publish_batches(client, states, sizes.run_interval_s)
            runs = []
            for state, tick_at in zip(states, completes, strict=True):
                submission = _wait_submitted(submitted, batch_key(state["ticks"]))
                advice_at, status = listener.arrival(submission.run_id)
                runs.append(
                    {
                        "run_id": submission.run_id,
                        "status": status,
                        "latency_s": advice_at - tick_at,
                        "bridge_s": submission.called - tick_at,
                        "submit_s": submission.returned - submission.called,
                        "workers_s": advice_at - submission.returned,
                    }
                )
    finally:
        client.close()
    return runs


def _wait_submitted(submitted: dict[float, Submission], key: float) -> Submission:
    deadline = time.monotonic() + ADVICE_TIMEOUT_S
    while (submission := submitted.get(key)) is None:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the bridge never submitted the batch ending at {key}")
        time.sleep(0.001)
    return submission


def _recorded_timings(uri: str, redis_url: str, runs: int) -> dict[str, dict[str, float]]:
    """Every recorded run's `timings_ms` by run_id, once all `runs` are recorded."""
    client = redis.Redis.from_url(redis_url)
    store = RunStore(uri, redis=client)
    try:
        _wait_recorded(store, runs)
        return {row["run_id"]: orjson.loads(row["timings_ms"]) for row in store.iter_runs()}
    finally:
        store.close()
        client.close()


def _wait_recorded(store: RunStore, runs: int) -> None:
    """Until `runs` rows are in the runs table (record_run follows advice.generated)."""
    deadline = time.monotonic() + RECORD_TIMEOUT_S
    while store.count(RUNS_TABLE) < runs:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {store.count(RUNS_TABLE)} of {runs} runs recorded")
        time.sleep(POLL_S)


def _critical_ms(timings: dict[str, float]) -> float:
    """Node time on the run's path to advice.generated (the evaluators overlap)."""
    parallel = max((timings.get(node, 0.0) for node in EVALUATORS), default=0.0)
    return sum(timings.get(node, 0.0) for node in SERIAL_NODES) + parallel


def _hop_count(timings: dict[str, float]) -> int:
    """Broker hops to publish_events: submit -> query_market -> generate -> risk, then
    -> publish_events, or -> evaluators -> (chord join) publish_events."""
    return 5 if any(node in timings for node in EVALUATORS) else 4


def _per_hop_ms(runs: list[dict], timings: dict[str, dict]) -> float:
    """The median over runs of (the workers' time - node time) / hops, in ms."""
    per_hop = [
        (run["workers_s"] * 1000 - _critical_ms(timings[run["run_id"]]))
        / _hop_count(timings[run["run_id"]])
        for run in runs
    ]
    return round(statistics.median(per_hop), 2)


def _breakdown(runs: list[dict], timings: dict[str, dict]) -> dict[str, Any]:
    """Medians (ms) of each part of the runs' latency: bridge, submit, workers, and of the
    workers' part, node time per node and the Celery overhead (workers - critical node time)."""
    rows = [timings[run["run_id"]] for run in runs]
    nodes = {
        node: _median_ms([row[node] / 1000 for row in rows if node in row])
        for node in (*SERIAL_NODES[:3], *EVALUATORS, SERIAL_NODES[3])
    }
    overhead = [
        run["workers_s"] - _critical_ms(row) / 1000 for run, row in zip(runs, rows, strict=True)
    ]
    return {
        "bridge_ms": _median_ms([run["bridge_s"] for run in runs]),
        "submit_run_ms": _median_ms([run["submit_s"] for run in runs]),
        "workers_ms": _median_ms([run["workers_s"] for run in runs]),
        "node_ms": nodes,
        "critical_node_ms": _median_ms([_critical_ms(row) / 1000 for row in rows]),
        "celery_overhead_ms": _median_ms(overhead),
        "celery_overhead_p99_ms": percentiles_ms(overhead)["p99"],
    }


def _outcomes(runs: list[dict]) -> dict[str, dict[str, Any]]:
    """Per status: how many runs, and their p50 and max latency in ms."""
    by_status: dict[str, list[float]] = {}
    for run in runs:
        by_status.setdefault(run["status"], []).append(run["latency_s"])
    return {
        status: {
            "runs": len(samples),
            "p50_ms": _median_ms(samples),
            "max_ms": round(max(samples) * 1000, 2),
        }
        for status, samples in sorted(by_status.items())
    }


# -- memory -----------------------------------------------------------------------------------


def worker_memory(
    report: Report, sizes: Sizes, *, redis_url: str, sidecar_url: str, listener: AdviceListener
) -> None:
    """RSS of one threads worker serving every queue after each tenth of `memory_runs`: with
    glibc malloc (2 arenas), then as the worker profiles run it (jemalloc, when installed)."""
    glibc = _memory_figures(report, sizes, redis_url, sidecar_url, listener, jemalloc=False)
    if "LD_PRELOAD" not in memory_env(jemalloc=True):
        report.note(f"{NAME}: no libjemalloc.so.2 here, worker memory measured with glibc only")
        return
    _memory_figures(report, sizes, redis_url, sidecar_url, listener, jemalloc=True, baseline=glibc)


def _memory_figures(
    report: Report,
    sizes: Sizes,
    redis_url: str,
    sidecar_url: str,
    listener: AdviceListener,
    *,
    jemalloc: bool,
    baseline: Figure | None = None,
) -> Figure:
    """The RSS after the first tenth and the growth after it, for one allocator."""
    label = "jemalloc" if jemalloc else "glibc"
    samples, params = _worker_rss(sizes, redis_url, sidecar_url, listener, jemalloc)
    warm = report.add(
        NAME,
        f"worker RSS after the first {params['step']} runs, {SINGLE}, {label}",
        samples[0],
        "MB",
        idle_mb=params["idle_mb"],
    )
    return report.add(
        NAME,
        f"worker RSS growth over {params['runs']} runs (after the first 10%), {SINGLE}, {label}",
        round(max(samples[1:]) - samples[0], 1),
        "MB",
        baseline=baseline or warm,
        allocator=memory_env(jemalloc).get("LD_PRELOAD", "glibc, 2 arenas"),
        rss_mb=samples,
        **params,
    )


def _worker_rss(
    sizes: Sizes, redis_url: str, sidecar_url: str, listener: AdviceListener, jemalloc: bool
) -> tuple[list[float], dict[str, Any]]:
    step = sizes.memory_runs // MEMORY_STEPS
    samples, maintenance = [], []
    with tempfile.TemporaryDirectory(prefix="osiris-bench-memory-") as workdir:
        settings = bench_settings(redis_url, sidecar_url, workdir)
        configure(app, settings)
        with Worker(settings, *LAYOUTS[SINGLE][0], jemalloc=jemalloc) as worker:
            worker.wait_ready(app)
            idle_mb = rss_mb(worker.proc.pid)
            started = time.perf_counter()
            for index in range(MEMORY_STEPS):
                states = run_states(step, seed=MEMORY_SEED + index)
                _submit_paced(states, listener, sizes.memory_inflight)
                samples.append(round(rss_mb(worker.proc.pid), 1))
                maintenance.append(children_rss_mb(worker.proc.pid))
            spent_s = time.perf_counter() - started
            table = _table_stats(workdir, step * MEMORY_STEPS)
    runs, half = step * MEMORY_STEPS, MEMORY_STEPS // 2
    # Over the second half only: the first tenths still include warm-up.
    slope = (samples[-1] - samples[half - 1]) / (step * half) * 1000
    return samples, {
        "step": step,
        "runs": runs,
        "idle_mb": round(idle_mb, 1),
        "mb_per_1k_runs": round(slope, 2),
        "runs_per_s": round(runs / spent_s, 1),
        "max_inflight": sizes.memory_inflight,
        "runs_table": table,
        # the store's maintenance process, at each sample (0: none running)
        "maintenance_process_rss_mb": maintenance,
    }


def _table_stats(uri: str, runs: int) -> dict[str, Any]:
    """Rows, fragments and versions of the runs table at `uri` once `runs` are recorded
    (LanceDB caches metadata per version, so these explain part of a writer's RSS)."""
    store = RunStore(uri)
    try:
        _wait_recorded(store, runs)
        stats = store.stats(RUNS_TABLE)
    finally:
        store.close()
    return {key: stats[key] for key in ("rows", "fragments", "versions")}


def _submit_paced(states: Sequence[dict], listener: AdviceListener, inflight: int) -> None:
    """Submit `states`, never more than `inflight` without their advice.generated; return when
    every one's event has arrived."""
    already = listener.count()
    for submitted, state in enumerate(states):
        listener.wait(lambda n=submitted: n - (listener.count() - already) < inflight)
        submit_run(app, state)
    listener.wait(lambda: listener.count() - already >= len(states))


# -- entry points -----------------------------------------------------------------------------


def run(report: Report, *, sizes: Sizes, redis_url: str, sidecar_url: str) -> None:
    """Every latency and memory figure, against the Redis and sidecar at these URLs."""
    with AdviceListener(redis_url) as listener:
        baselines = in_process(report, sizes, redis_url, sidecar_url, listener)
        for label, worker_args in LAYOUTS.items():
            through_workers(
                report,
                sizes,
                label,
                worker_args,
                redis_url=redis_url,
                sidecar_url=sidecar_url,
                listener=listener,
                baselines=baselines,
            )
        worker_memory(
            report, sizes, redis_url=redis_url, sidecar_url=sidecar_url, listener=listener
        )
    report.note(
        "latency: bridge in the bench process on a bench channel, ticks PUBLISHed one "
        "by one, one batch per run_interval_s; clock from the PUBLISH of a batch's "
        "last tick to its advice.generated on a subscriber of the bench process"
    )


def main(argv: list[str] | None = None) -> int:
    """`python -m benchmarks.latency_bench [--quick]`: against a fresh Redis and reference
    sidecar (its own process, no latency); the report goes to `benchmarks/results/latency/`."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.latency_bench", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, about 90 s")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")
    warnings.filterwarnings("ignore", message="optimize.cleanup_older_than=0")
    report = Report(quick=args.quick)
    started = time.perf_counter()
    try:
        with embedded_redis() as redis_url, sidecar_process() as sidecar_url:
            run(
                report,
                sizes=QUICK if args.quick else FULL,
                redis_url=redis_url,
                sidecar_url=sidecar_url,
            )
    finally:
        report.note(f"total: {time.perf_counter() - started:.0f} s")
        _, md_path = report.write(RESULTS_DIR / NAME)
        print(f"\nreport: {md_path}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
