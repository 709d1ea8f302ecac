"""(h) The completion cache: lookups at N cached completions, against LanceDB's own point
query (`RunStore.get_completion`, the BTREE-indexed key) in the same run; the load of the
cache's in-memory copy and what it costs in RSS; a miss (which asks LanceDB before the server).
Target (issue 21): a lookup <= 1 ms p50 at 100k cached completions."""

from __future__ import annotations

import random
import resource
import statistics
import tempfile
import time

from osiris_tasks.adapters.completions import CompletionCache
from osiris_tasks.domain.completions import completion_key
from osiris_tasks.store.runstore import RunStore
from osiris_tasks.store.schema import COMPLETIONS_TABLE

from .report import Report, timed

NAME = "cache"
QUICK_ROWS = 100_000
FULL_ROWS = 100_000
TINY_ROWS = 200
BATCH_ROWS = 500
LOOKUPS = 2_000
STORE_LOOKUPS = 300
# A proposal's completion from the reference policy is ~600 bytes.
COMPLETION = '{"action": "adjust", "ticker": "AAPL", "side": "LONG", "rationale": "' + "x" * 500


def completion_row(index: int) -> dict:
    request = {"messages": [{"role": "user", "content": f"prompt {index}"}], "temperature": 0.0}
    return {
        "completion_key": completion_key("openai", "phi3", "proposal", request),
        "run_id": f"run_bench_{index}",
        "backend": "openai",
        "model": "phi3",
        "role": "proposal",
        "request": str(request),
        "completion": f"{COMPLETION}{index}" + '"}',
        "prompt_tokens": 120,
        "completion_tokens": 80,
        "latency_ms": 100.0,
    }


def _p50_ms(fn, keys: list[str]) -> float:
    return statistics.median(timed(fn, key)[1] * 1000 for key in keys)


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run(report: Report, *, rows: int) -> None:
    with tempfile.TemporaryDirectory(prefix="osiris-bench-cache-") as workdir:
        store = RunStore(f"{workdir}/lancedb", maintain_every_commits=0)
        keys = []
        started = time.perf_counter()
        for start in range(0, rows, BATCH_ROWS):
            batch = [completion_row(i) for i in range(start, min(rows, start + BATCH_ROWS))]
            keys += [row["completion_key"] for row in batch]
            store.record_completions(batch)
        spent = time.perf_counter() - started
        report.add(NAME, f"record_completions x{BATCH_ROWS}", rows / spent, "rows/s")
        store.maintain(COMPLETIONS_TABLE)
        assert store.count(COMPLETIONS_TABLE) == rows

        rng = random.Random(7)
        sample = [rng.choice(keys) for _ in range(STORE_LOOKUPS)]
        lance = report.add(
            NAME,
            f"LanceDB point query (get_completion) at {rows} rows, p50",
            _p50_ms(store.get_completion, sample),
            "ms",
        )
        cache = CompletionCache("read", memory_rows=rows)
        cache.use_store(lambda: store)
        rss_before = _rss_mb()
        _, load_s = timed(cache.lookup, keys[0])
        report.add(NAME, f"cache's in-memory copy loaded, {rows} rows", load_s, "s")
        report.add(NAME, f"peak RSS added by the copy, {rows} rows", _rss_mb() - rss_before, "MB")
        sample = [rng.choice(keys) for _ in range(LOOKUPS)]
        assert all(cache.lookup(key) is not None for key in sample[:50])
        report.add(
            NAME,
            f"cache lookup (hit) at {rows} rows, p50",
            _p50_ms(cache.lookup, sample),
            "ms",
            baseline=lance,
        )
        missing = [completion_key("openai", "phi3", "proposal", {"n": i}) for i in range(100)]
        report.add(
            NAME,
            f"cache lookup (miss: asks LanceDB) at {rows} rows, p50",
            _p50_ms(cache.lookup, missing),
            "ms",
            baseline=lance,
        )
        store.close()
