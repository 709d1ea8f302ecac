"""(a) The LanceDB record path: single-row appends vs batched and group-committed appends,
fragments / versions / disk after N rows, `recent_runs(20)` at N rows before and after
`maintain()`, against the query it replaced."""

from __future__ import annotations

import itertools
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass

import pyarrow as pa
import redis
from lancedb.query import ColumnOrdering

from osiris_tasks.store.runstore import RUNS_SCHEMA, RUNS_TABLE, RunStore

from .env import du_bytes
from .report import Report, timed
from .rows import run_rows

NAME = "store"
LATENCY_REPEATS = 5


@dataclass(frozen=True)
class Sizes:
    single_rows: int  # rows written one commit each (the baseline)
    batch_rows: int  # rows per record_runs call
    threads: int  # threads calling record_run at once (group commit)
    scale_rows: int  # rows of the big table
    scale_batch_rows: int


QUICK = Sizes(single_rows=150, batch_rows=100, threads=16, scale_rows=5_000, scale_batch_rows=100)
FULL = Sizes(
    single_rows=1_000, batch_rows=100, threads=16, scale_rows=100_000, scale_batch_rows=100
)
TINY = Sizes(single_rows=10, batch_rows=5, threads=4, scale_rows=40, scale_batch_rows=10)


def _latency_ms(fn) -> float:
    """Median wall time of `fn()` over LATENCY_REPEATS calls, in ms."""
    samples = [timed(fn)[1] * 1000 for _ in range(LATENCY_REPEATS)]
    return statistics.median(samples)


def legacy_recent_runs(store: RunStore, limit: int = 20) -> list[dict]:
    """The query `recent_runs` used to run: every column of every row sorted by timestamp."""
    newest_first = [ColumnOrdering(column_name="timestamp", ascending=False)]
    return store._table(RUNS_TABLE).search().order_by(newest_first).limit(limit).to_list()


def _write_single(store: RunStore, rows) -> float:
    """Seconds spent in record_run, one row at a time."""
    return sum(timed(store.record_run, row)[1] for row in rows)


def _write_batches(store: RunStore, rows, batch_rows: int) -> tuple[float, int]:
    """Seconds spent in record_runs, `batch_rows` at a time (rows made outside the clock);
    and the rows' Arrow bytes."""
    spent, arrow_bytes = 0.0, 0
    rows = iter(rows)
    while batch := list(itertools.islice(rows, batch_rows)):
        arrow_bytes += pa.Table.from_pylist(batch, schema=RUNS_SCHEMA).nbytes
        spent += timed(store.record_runs, batch)[1]
    return spent, arrow_bytes


def _write_threads(store: RunStore, rows: list[dict], threads: int) -> float:
    """Seconds for `threads` threads to record_run their share of `rows` one at a time."""
    shares = [rows[i::threads] for i in range(threads)]
    barrier = threading.Barrier(threads + 1)

    def work(share):
        barrier.wait()
        for row in share:
            store.record_run(row)

    pool = [threading.Thread(target=work, args=(share,)) for share in shares]
    for thread in pool:
        thread.start()
    barrier.wait()
    started = time.perf_counter()
    for thread in pool:
        thread.join()
    return time.perf_counter() - started


def _shape(report: Report, label: str, store: RunStore, uri: str, rows: int) -> None:
    stats = store.stats(RUNS_TABLE)
    report.add(NAME, f"{label}: fragments after {rows} rows", stats["fragments"], "fragments")
    report.add(NAME, f"{label}: versions after {rows} rows", stats["versions"], "versions")
    report.add(NAME, f"{label}: disk after {rows} rows", du_bytes(uri) / 1e6, "MB")


def _recent_before_after(report: Report, label: str, store: RunStore, rows: int) -> None:
    before = report.add(
        NAME,
        f"{label}: recent_runs(20) at {rows} rows, as written",
        _latency_ms(lambda: store.recent_runs(20)),
        "ms",
    )
    _, maintain_s = timed(store.maintain)
    report.add(NAME, f"{label}: maintain() at {rows} rows", maintain_s, "s")
    report.add(
        NAME,
        f"{label}: recent_runs(20) at {rows} rows, after maintain",
        _latency_ms(lambda: store.recent_runs(20)),
        "ms",
        baseline=before,
    )


def single_vs_batched(report: Report, sizes: Sizes, redis_url: str, workdir: str) -> None:
    """Runs/s one commit per row vs batches vs threads sharing commits; table shape after."""
    client = redis.Redis.from_url(redis_url)
    stores = {}
    for label in ("single", "batched", "group"):
        stores[label] = RunStore(f"{workdir}/{label}", redis=client, maintain_every_commits=0)
    make = run_rows(seed=1)
    n = sizes.single_rows
    rows = list(itertools.islice(make, n))
    single = report.add(
        NAME,
        "record_run, 1 row per commit, 1 thread",
        n / _write_single(stores["single"], rows),
        "runs/s",
        rows=n,
    )
    _shape(report, "1 row per commit", stores["single"], f"{workdir}/single", n)
    _recent_before_after(report, "1 row per commit", stores["single"], n)

    rows = list(itertools.islice(make, n))
    spent, _ = _write_batches(stores["batched"], rows, sizes.batch_rows)
    report.add(
        NAME,
        f"record_runs, {sizes.batch_rows} rows per call",
        n / spent,
        "runs/s",
        baseline=single,
        rows=n,
    )
    _shape(report, f"{sizes.batch_rows} rows per call", stores["batched"], f"{workdir}/batched", n)

    rows = list(itertools.islice(make, n))
    spent = _write_threads(stores["group"], rows, sizes.threads)
    report.add(
        NAME,
        f"record_run from {sizes.threads} threads (group commit)",
        n / spent,
        "runs/s",
        baseline=single,
        rows=n,
    )
    _shape(report, f"{sizes.threads} threads", stores["group"], f"{workdir}/group", n)
    for store in stores.values():
        store.close()
    client.close()


def at_scale(report: Report, sizes: Sizes, redis_url: str, workdir: str) -> None:
    """N rows through record_runs with automatic maintenance: rate, disk, read latencies."""
    client = redis.Redis.from_url(redis_url)
    uri = f"{workdir}/scale"
    store = RunStore(uri, redis=client)
    n = sizes.scale_rows
    spent, arrow_bytes = _write_batches(
        store, itertools.islice(run_rows(seed=2), n), sizes.scale_batch_rows
    )
    report.add(
        NAME,
        f"record_runs x{sizes.scale_batch_rows} with auto-maintenance, {n} rows",
        n / spent,
        "runs/s",
        rows=n,
    )
    store.close()  # waits for the maintenance run the last commits started
    arrow = report.add(NAME, f"rows' own size (Arrow), {n} rows", arrow_bytes / 1e6, "MB")
    _shape(report, "auto-maintained", store, uri, n)
    legacy = report.add(
        NAME,
        f"old recent_runs query at {n} rows, as written",
        _latency_ms(lambda: legacy_recent_runs(store)),
        "ms",
    )
    report.add(
        NAME,
        f"recent_runs(20) at {n} rows, as written",
        _latency_ms(lambda: store.recent_runs(20)),
        "ms",
        baseline=legacy,
    )
    # Steady state: versions older than the cut-off are gone (the default keeps 120 s of them,
    # all of this benchmark's): clean up everything but the latest, as a quiet moment would.
    RunStore(uri, redis=client, cleanup_older_than_s=0).maintain()
    report.add(
        NAME,
        f"disk after maintain(cleanup_older_than_s=0), {n} rows",
        du_bytes(uri) / 1e6,
        "MB",
        baseline=arrow,
    )
    newest = store.recent_runs(1)[0]["run_id"]
    report.add(
        NAME,
        f"recent_runs(20) at {n} rows, after maintain",
        _latency_ms(lambda: store.recent_runs(20)),
        "ms",
        baseline=legacy,
    )
    report.add(
        NAME,
        f"get_run at {n} rows, after maintain",
        _latency_ms(lambda: store.get_run(newest)),
        "ms",
    )
    store.close()
    client.close()


def run(report: Report, *, sizes: Sizes, redis_url: str) -> None:
    with tempfile.TemporaryDirectory(prefix="osiris-bench-store-") as workdir:
        single_vs_batched(report, sizes, redis_url, workdir)
        at_scale(report, sizes, redis_url, workdir)
