"""Run the benchmark suite and write its report: `python -m benchmarks.run [--quick]`.

Every figure is measured in this run, most as a ratio against a baseline measured in the same
run (absolute numbers on a shared machine are noise). The report goes to
`benchmarks/results/<stamp>[-quick].{json,md}` and `latest.{json,md}`.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
import warnings

import redis

from . import (
    backtest_bench,
    book_bench,
    bridge_bench,
    cache_bench,
    celery_bench,
    hotpaths_bench,
    latency_bench,
    runner_bench,
    scale_bench,
    sidecar_bench,
    store_bench,
    stream_bench,
)
from .env import bench_settings, embedded_redis, sidecar_process
from .report import Report

BENCHMARKS = (
    "store",
    "runner",
    "celery",
    "sidecar",
    "bridge",
    "latency",
    "hotpaths",
    "cache",
    "book",
    "backtest",
    "stream",
    "scale",
)
# Not in the default run (minutes at 100k rows, most of an hour at 1M): `--only scale`.
OPT_IN = ("scale",)
# Sizes per mode: quick finishes in about five minutes on two cores.
SIZES = {
    True: {
        "store": store_bench.QUICK,
        "runs": 30,
        "burst": 40,
        "slots": (1, 8, 32),
        "backends": sidecar_bench.QUICK_BACKENDS,
        "bridge": bridge_bench.QUICK,
        "latency": latency_bench.QUICK,
        "hotpaths": {"messages": 300, "runs": 128, "tick_count": 30_000},
        "cache": cache_bench.QUICK_ROWS,
        "book": book_bench.QUICK,
        "backtest": backtest_bench.QUICK,
        "stream": stream_bench.QUICK,
        "scale": scale_bench.QUICK,
    },
    False: {
        "store": store_bench.FULL,
        "runs": 200,
        "burst": 300,
        "slots": (1, 8, 32, 64),
        "backends": sidecar_bench.FULL_BACKENDS,
        "bridge": bridge_bench.FULL,
        "latency": latency_bench.FULL,
        "hotpaths": {"messages": 1000, "runs": 512, "tick_count": 100_000},
        "cache": cache_bench.FULL_ROWS,
        "book": book_bench.FULL,
        "backtest": backtest_bench.FULL,
        "stream": stream_bench.FULL,
        "scale": scale_bench.FULL,
    },
}


def run_suite(report: Report, only: tuple[str, ...]) -> None:
    """Run the benchmarks named in `only` against a fresh Redis and reference sidecar."""
    sizes = SIZES[report.quick]
    with embedded_redis() as redis_url, sidecar_process() as sidecar_url:
        client = redis.Redis.from_url(redis_url)
        baseline = None
        for name in only:
            client.flushdb()
            started = time.perf_counter()
            if name == "store":
                store_bench.run(report, sizes=sizes["store"], redis_url=redis_url)
            elif name == "runner":
                baseline = runner_bench.run(
                    report, runs=sizes["runs"], redis_url=redis_url, sidecar_url=sidecar_url
                )
            elif name == "celery":
                celery_bench.run(
                    report, runs=sizes["burst"], redis_url=redis_url, baseline=baseline
                )
            elif name == "sidecar":
                sidecar_bench.run(
                    report,
                    slot_counts=sizes["slots"],
                    backend_sizes=sizes["backends"],
                    redis_url=redis_url,
                )
            elif name == "bridge":
                bridge_bench.run(report, sizes=sizes["bridge"], redis_url=redis_url)
            elif name == "latency":
                latency_bench.run(
                    report, sizes=sizes["latency"], redis_url=redis_url, sidecar_url=sidecar_url
                )
            elif name == "hotpaths":
                hotpaths_bench.run(report, **sizes["hotpaths"], redis_url=redis_url)
            elif name == "cache":
                cache_bench.run(report, rows=sizes["cache"])
            elif name == "backtest":
                with tempfile.TemporaryDirectory(prefix="osiris-bench-") as workdir:
                    settings = bench_settings(redis_url, sidecar_url, workdir)
                    backtest_bench.run(report, sizes=sizes["backtest"], settings=settings)
            elif name == "scale":
                scale_bench.run(report, sizes=sizes["scale"], redis_url=redis_url)
            elif name == "stream":
                stream_bench.run(report, sizes=sizes["stream"], redis_url=redis_url)
            elif name == "book":
                book_bench.run(
                    report, sizes=sizes["book"], redis_url=redis_url, sidecar_url=sidecar_url
                )
            report.note(f"{name}: {time.perf_counter() - started:.0f} s")
        client.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, about five minutes")
    parser.add_argument(
        "--only",
        default=",".join(b for b in BENCHMARKS if b not in OPT_IN),
        help=f"comma-separated subset of {','.join(BENCHMARKS)} (default: all but "
        f"{','.join(OPT_IN)})",
    )
    args = parser.parse_args(argv)
    only = tuple(name.strip() for name in args.only.split(",") if name.strip())
    unknown = sorted(set(only) - set(BENCHMARKS))
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)}")
    if "celery" in only and "runner" not in only:
        only = ("runner", *only)  # the celery figures are ratios against the runner's
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")
    warnings.filterwarnings("ignore", message="optimize.cleanup_older_than=0")
    report = Report(quick=args.quick)
    started = time.perf_counter()
    try:
        run_suite(report, only)
    finally:
        report.note(f"total: {time.perf_counter() - started:.0f} s")
        json_path, md_path = report.write()
        print(f"\nreport: {md_path}\n        {json_path}\n")
        print(report.markdown())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
