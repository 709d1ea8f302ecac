"""(i) The paper book (issue 22): fills/s through its exactly-once path (`Portfolio.decide`: the
gate inside a WATCH/MULTI/EXEC transaction with the run's order marker), against a bare GET +
SET per fill on the same Redis; the gate's NAV read (`Portfolio.snapshot`) with a book of 20
positions, against the static book's read (one MGET); and in-process runs/s with
`OSIRIS_BOOK=paper` against `OSIRIS_BOOK=static` on the same batches, rounds alternating.
Targets: >= 1000 fills/s, NAV read <= 1 ms p50, runs/s with the book >= 0.9x static."""

from __future__ import annotations

import statistics
import tempfile
import time

import redis

from osiris_tasks.adapters.portfolio import BookConfig, Portfolio
from osiris_tasks.adapters.resources import Resources
from osiris_tasks.domain.book import Order
from osiris_tasks.domain.risk import Holdings, RiskLimits, Verdict, assess
from osiris_tasks.workflow.runner import InProcessRunner

from .batches import run_states
from .env import bench_settings
from .report import Report, timed

NAME = "book"
QUICK = {"fills": 2_000, "reads": 2_000, "runs": 30, "rounds": 3}
FULL = {"fills": 10_000, "reads": 10_000, "runs": 100, "rounds": 5}
TINY = {"fills": 20, "reads": 20, "runs": 2, "rounds": 1}
NAV = 100_000_000.0  # large enough that no limit binds over the fills
PROPOSAL = {
    "action": "adjust",
    "ticker": "SYM0",
    "side": "LONG",
    "quantity": 1,
    "price_estimate": 100.0,
    "confidence": 0.5,
}
LIMITS = RiskLimits(max_orders_per_minute=10**9)


def _decide(book) -> Verdict:
    return assess(
        PROPOSAL,
        nav=book["nav"],
        daily_pnl=book["daily_pnl"],
        symbols=["SYM0"],
        limits=LIMITS,
        holdings=Holdings(**book["holdings"]),
    )


def _p50_ms(fn, n: int) -> float:
    return statistics.median(timed(fn)[1] * 1000 for _ in range(n))


def fills(report: Report, client: redis.Redis, n: int) -> None:
    portfolio = Portfolio(
        client,
        default_nav=NAV,
        default_daily_pnl=0.0,
        mode="paper",
        config=BookConfig(fill_at="batch_close"),
    )
    portfolio.reset()
    started = time.perf_counter()
    for i in range(n):
        client.get(f"bench:get:{i % 100}")
        client.set(f"bench:set:{i % 100}", i)
    bare = report.add(NAME, "bare GET + SET per fill", n / (time.perf_counter() - started), "/s")
    orders = [Order(f"run_bench_{i}", "SYM0", "LONG", 1.0, 100.0, 1000.0 + i) for i in range(n)]
    started = time.perf_counter()
    for order in orders:
        decision = portfolio.decide(order.order_id, _decide, order)
        assert decision.fills, decision.verdict
    report.add(
        NAME,
        "fills through decide (gate in the transaction, order marker), 1 thread",
        n / (time.perf_counter() - started),
        "fills/s",
        baseline=bare,
        target=1000,
    )
    assert portfolio.book().fills == n


def nav_reads(report: Report, client: redis.Redis, n: int) -> None:
    static = Portfolio(client, default_nav=NAV, default_daily_pnl=0.0, mode="static")
    paper = Portfolio(
        client, default_nav=NAV, default_daily_pnl=0.0, mode="paper", config=BookConfig()
    )
    paper.reset()
    for s in range(20):  # a book of 20 positions, each marked
        symbol = f"SYM{s}"
        paper.on_ticks(f"run_mark_{s}", {symbol: [(1000.0 + s, 100.0 + s)]})
        order = Order(f"run_pos_{s}", symbol, "LONG", 10.0, 100.0 + s, 1000.0 + s)
        paper.decide(order.order_id, lambda book: Verdict(True, "bench", "within_limits"), order)
    baseline = report.add(NAME, "static book read (MGET), p50", _p50_ms(static.snapshot, n), "ms")
    report.add(
        NAME,
        "paper book read by the gate (20 positions), p50",
        _p50_ms(paper.snapshot, n),
        "ms",
        baseline=baseline,
        target=1.0,
    )


def runs(report: Report, redis_url: str, sidecar_url: str, n: int, rounds: int) -> None:
    """In-process runs/s, static and paper books alternating on the same batches."""
    rates: dict[str, list[float]] = {"static": [], "paper": []}
    with tempfile.TemporaryDirectory(prefix="osiris-bench-book-") as workdir:
        base = bench_settings(redis_url, sidecar_url, workdir)
        runners = {}
        for mode in rates:
            resources = Resources.from_settings(base.with_(book=mode))
            runners[mode] = (resources, InProcessRunner(resources))
            runners[mode][1].run(run_states(1, seed=98, accepted=True)[0])  # warm-up
        for r in range(rounds):
            for mode, (_, runner) in runners.items():
                states = run_states(n, seed=100 + r, accepted=True)
                _, spent = timed(
                    lambda runner=runner, states=states: [runner.run(s) for s in states]
                )
                rates[mode].append(n / spent)
        for resources, _ in runners.values():
            resources.close()
    static = report.add(
        NAME, "in-process runs, OSIRIS_BOOK=static", statistics.median(rates["static"]), "runs/s"
    )
    ratios = [p / s for p, s in zip(rates["paper"], rates["static"], strict=True)]
    report.add(
        NAME,
        "in-process runs, OSIRIS_BOOK=paper",
        statistics.median(rates["paper"]),
        "runs/s",
        baseline=static,
        median_round_ratio=round(statistics.median(ratios), 3),
        target=0.9,
    )


def run(report: Report, *, sizes: dict, redis_url: str, sidecar_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    fills(report, client, sizes["fills"])
    client.flushdb()
    nav_reads(report, client, sizes["reads"])
    client.flushdb()
    runs(report, redis_url, sidecar_url, sizes["runs"], sizes["rounds"])
    client.close()
