"""Keeps the benchmark suite from rotting: its cheapest benchmark at tiny sizes (not timed)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

# benchmarks/ is a top-level package of the repository, not of the installed distribution.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import store_bench  # noqa: E402
from benchmarks.report import Report  # noqa: E402

pytestmark = pytest.mark.integration


@pytest.mark.filterwarnings("ignore:optimize.cleanup_older_than=0")
def test_store_benchmark_at_tiny_sizes_writes_a_report(redis_url, tmp_path):
    report = Report(quick=True)

    store_bench.run(report, sizes=store_bench.TINY, redis_url=redis_url)

    figures = {figure.name: figure for figure in report.figures}
    single = figures["record_run, 1 row per commit, 1 thread"]
    batched = figures[f"record_runs, {store_bench.TINY.batch_rows} rows per call"]
    assert single.value > 0 and batched.baseline == single.name and batched.ratio > 0
    assert figures["1 row per commit: fragments after 10 rows"].value == 10
    assert figures[f"{store_bench.TINY.batch_rows} rows per call: fragments after 10 rows"
                   ].value == 2
    json_path, md_path = report.write(tmp_path)
    assert json.loads(json_path.read_text())["figures"][0]["name"] == single.name
    assert "| store | record_run, 1 row per commit, 1 thread |" in md_path.read_text()
