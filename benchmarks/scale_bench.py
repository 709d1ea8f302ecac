"""(k) A million runs: the tables grown through the real record path, with maintenance on, and
what maintenance, writes, reads and disk cost at 10k, 100k and 1M rows (100k at most quick).

Rows: `orchestrator_runs` rows as the pipeline writes them (`rows.run_rows`: a pool of 2,000
distinct rows, each written again under a new run_id and timestamp, so making rows costs no
time inside the clock), one `advice` row per run, one `fills` row per three runs, one
`completions` row per run. Written with `record_runs` / `record_advice_many` / `record_fills`
/ `record_completions`, 200 rows per call (what group commit makes of a busy worker's writes),
with the store's own automatic maintenance (every 100 commits a table, in its maintenance
process) and the shortest cleanup window `Settings` allows (60 s).

At each checkpoint: the write rate over the segment before it (maintenance running behind it);
one maintenance pass per table, timed (`maintain()`); `osiris runs list`'s query
(`recent_runs(20)`) and `get_run` of a random earlier run, medians of 5; the table's disk
against the rows' own Arrow size; fragments and versions.

Targets (issue 26): a pass flat within +-25 % from 10k to 1M; the write rate at 1M >= 0.8x the
rate at 10k; `recent_runs` <= 100 ms and `get_run` <= 20 ms at 1M; disk <= 2x the rows' size.

Alone: `python -m benchmarks.scale_bench [--quick]`.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import random
import statistics
import tempfile
import time
from dataclasses import dataclass

import pyarrow as pa
import redis

from osiris_tasks.domain.ids import utc_iso
from osiris_tasks.store.runstore import RunStore
from osiris_tasks.store.schema import TABLES

from .env import du_bytes, embedded_redis
from .report import Report, timed
from .rows import run_rows

__all__ = ["FULL", "QUICK", "TINY", "Sizes", "run"]

NAME = "scale"
POOL_ROWS = 2_000
BATCH_ROWS = 200
LATENCY_REPEATS = 5
CLEANUP_S = 60.0  # the shortest window Settings allows


@dataclass(frozen=True)
class Sizes:
    checkpoints: tuple[int, ...]  # runs at which everything is measured


QUICK = Sizes(checkpoints=(10_000, 100_000))
FULL = Sizes(checkpoints=(10_000, 100_000, 1_000_000))
TINY = Sizes(checkpoints=(400, 1_000))


def run_id(i: int) -> str:
    return f"run_{i:012d}"


class Rows:
    """The rows of run i and its side tables, from a pool (made once, outside the clock)."""

    def __init__(self, pool_rows: int):
        self.pool = list(itertools.islice(run_rows(seed=3), pool_rows))

    def runs(self, first: int, count: int) -> list[dict]:
        """Runs first..first+count, stamped now (as `record_run` stamps them): `recent_runs`
        looks for the newest rows in the last minute first, as it would in production."""
        stamp = utc_iso(time.time())
        return [
            {**self.pool[i % len(self.pool)], "run_id": run_id(i), "timestamp": stamp}
            for i in range(first, first + count)
        ]

    @staticmethod
    def side(runs: list[dict]) -> dict[str, list[dict]]:
        advice = [
            {
                "advice_id": f"a-{r['run_id']}",
                "run_id": r["run_id"],
                "timestamp": r["timestamp"],
                "proposal": r["proposal"],
                "accepted": r["verdict"] == "accepted",
                "reason": "within limits",
                "rule": r["rule"],
                "nav_before_trade": 100_000.0,
                "daily_pnl_before_trade": 0.0,
            }
            for r in runs
        ]
        fills = [
            {
                "fill_id": r["run_id"],
                "run_id": r["run_id"],
                "filled_in_run_id": r["run_id"],
                "timestamp": r["timestamp"],
                "symbol": "AAPL",
                "side": "LONG",
                "quantity": 3.0,
                "price": 101.5,
                "reference_price": 101.4,
                "fee": 0.03,
                "realised_pnl": 0.0,
                "cash_after": 99_000.0,
                "position_after": 3.0,
                "nav_after": 100_000.0,
            }
            for r in runs[::3]
        ]
        completions = [
            {
                "completion_key": f"c_{r['run_id']}",
                "run_id": r["run_id"],
                "timestamp": r["timestamp"],
                "backend": "openai",
                "model": "tiny",
                "role": "proposal",
                "request": r["prompt"],
                "completion": r["raw_completion"],
                "prompt_tokens": 180,
                "completion_tokens": 60,
                "latency_ms": 120.0,
            }
            for r in runs
        ]
        return {"advice": advice, "fills": fills, "completions": completions}


class Passes(logging.Handler):
    """The store's automatic maintenance passes, as `log_optimized` logs them: (table, s)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.seen: list[tuple[str, float]] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.msg.startswith("optimized %s") and "maintenance process" in record.args[1]:
            self.seen.append((record.args[0], record.args[2]))

    def take(self) -> dict[str, list[float]]:
        taken, self.seen = self.seen, []
        out: dict[str, list[float]] = {}
        for table, seconds in taken:
            out.setdefault(table, []).append(seconds)
        return out


def _write(store: RunStore, rows: Rows, first: int, count: int) -> tuple[float, dict[str, int]]:
    """Seconds in the record calls for runs first..first+count (and their side rows); the
    rows' Arrow bytes per table."""
    spent, sizes = 0.0, dict.fromkeys(TABLES, 0)
    writers = {
        "orchestrator_runs": store.record_runs,
        "advice": store.record_advice_many,
        "fills": store.record_fills,
        "completions": store.record_completions,
    }
    for start in range(first, first + count, BATCH_ROWS):
        runs = rows.runs(start, min(BATCH_ROWS, first + count - start))
        for table, batch in {"orchestrator_runs": runs, **Rows.side(runs)}.items():
            sizes[table] += pa.Table.from_pylist(batch, schema=TABLES[table].schema).nbytes
            spent += timed(writers[table], batch)[1]
    return spent, sizes


def _latency_ms(fn) -> float:
    return statistics.median(timed(fn)[1] * 1000 for _ in range(LATENCY_REPEATS))


def _checkpoint(report: Report, store: RunStore, uri: str, n: int, arrow: dict[str, int]) -> dict:
    passes: dict[str, float] = {}
    while len(passes) < len(TABLES):  # a table the background maintenance holds is skipped
        for table in TABLES:
            if table not in passes:
                passes.update({d["table"]: d["seconds"] for d in store.maintain(table)})
        time.sleep(0.05)
    probe = run_id(random.Random(n).randrange(n))
    assert store.get_run(probe) is not None, probe
    figures = {
        "maintenance_s": passes,
        "recent_runs_ms": _latency_ms(lambda: store.recent_runs(20)),
        "get_run_ms": _latency_ms(lambda: store.get_run(probe)),
        "disk_mb": {t: du_bytes(f"{uri}/{t}.lance") / 1e6 for t in TABLES},
        "arrow_mb": {t: arrow[t] / 1e6 for t in TABLES},
        "shape": {t: store.stats(t) for t in TABLES},
    }
    return figures


def run(report: Report, *, sizes: Sizes, redis_url: str) -> None:
    """Grow the tables to each checkpoint and measure there."""
    client = redis.Redis.from_url(redis_url)
    rows = Rows(POOL_ROWS)
    with tempfile.TemporaryDirectory(prefix="osiris-bench-scale-") as workdir:
        uri = f"{workdir}/lancedb"
        store = RunStore(uri, redis=client, cleanup_older_than_s=CLEANUP_S)
        written, arrow, first = 0, dict.fromkeys(TABLES, 0), {}
        passes, maintenance_log = Passes(), logging.getLogger("osiris_tasks.store.maintenance")
        maintenance_log.addHandler(passes)
        maintenance_log.setLevel(logging.INFO)
        try:
            for n in sizes.checkpoints:
                spent, added = _write(store, rows, written, n - written)
                rate = (n - written) / spent
                arrow = {t: arrow[t] + added[t] for t in TABLES}
                written = n
                store.close()  # waits for the automatic pass the last commits started
                auto = passes.take()
                at = _checkpoint(report, store, uri, n, arrow)
                at["auto_passes_s"] = auto
                first.setdefault("rate", rate)
                first.setdefault("maintenance_s", at["maintenance_s"])
                _report(report, n, rate, at, first)
        finally:
            maintenance_log.removeHandler(passes)
            store.close()
    client.close()


def _report(report: Report, n: int, rate: float, at: dict, first: dict) -> None:
    base_rate = first["rate"]
    report.add(
        NAME,
        f"runs recorded/s (with their side rows) up to {n:,} runs",
        rate,
        "runs/s",
        ratio_to_first=round(rate / base_rate, 2),
    )
    for table, seconds in at["maintenance_s"].items():
        auto = at["auto_passes_s"].get(table, [])
        if auto:
            median = statistics.median(auto)
            first.setdefault("auto", {}).setdefault(table, median)
            report.add(
                NAME,
                f"{table}: automatic maintenance passes up to {n:,} runs, median",
                median,
                "s",
                ratio_to_first=round(median / first["auto"][table], 2),
                passes=len(auto),
                max_s=round(max(auto), 3),
            )
        report.add(
            NAME,
            f"{table}: one maintenance pass at {n:,} runs",
            seconds,
            "s",
            ratio_to_first=round(seconds / first["maintenance_s"][table], 2),
            **at["shape"][table],
        )
        report.add(
            NAME,
            f"{table}: disk at {n:,} runs",
            at["disk_mb"][table],
            "MB",
            arrow_mb=round(at["arrow_mb"][table], 1),
            ratio_to_rows=round(at["disk_mb"][table] / max(at["arrow_mb"][table], 1e-9), 2),
        )
    report.add(
        NAME, f"recent_runs(20) (osiris runs list) at {n:,} runs", at["recent_runs_ms"], "ms"
    )
    report.add(NAME, f"get_run at {n:,} runs", at["get_run_ms"], "ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    report = Report(quick=args.quick)
    with embedded_redis() as url:
        run(report, sizes=QUICK if args.quick else FULL, redis_url=url)
    print(report.markdown())


if __name__ == "__main__":
    main()
