"""(j) `osiris backtest` (issue 23): batches/s of an in-process backtest whose every completion
comes from the cache (filled by a live backtest of the same ticks first, against the reference
sidecar in its own process), against the bare LangGraph `invoke` rate of the same graph with
instant nodes and no I/O, both in this one process; and what that makes of a year of 1-minute
bars for 5 symbols (~490k ticks, batches of 10). Target: >= 0.5x the bare graph."""

from __future__ import annotations

import csv
import random
import tempfile
from pathlib import Path

from osiris_tasks.settings import Settings
from osiris_tasks.tools.backtest import BacktestOptions, run_backtest
from osiris_tasks.workflow.graph import build_graph
from osiris_tasks.workflow.registry import NODE_NAMES
from osiris_tasks.workflow.state import initial_state

from .report import Report, timed

NAME = "backtest"
QUICK = {"ticks_per_symbol": 600, "invokes": 2_000}
FULL = {"ticks_per_symbol": 4_000, "invokes": 10_000}
TINY = {"ticks_per_symbol": 20, "invokes": 20}
SYMBOLS = ("AAA", "BBB", "CCC", "DDD", "EEE")
BATCH = 10
YEAR_OF_MINUTES_TICKS = 5 * 252 * 390  # 5 symbols, 252 sessions of 390 one-minute bars


def minute_bars(path: Path, per_symbol: int, seed: int = 11) -> None:
    """A random walk of 1-minute closes per symbol, as the simulator's replay CSV."""
    rng = random.Random(seed)
    start = 1_767_258_000.0  # 2026-01-01T09:00:00Z
    with path.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["symbol", "timestamp", "close", "volume"])
        for symbol in SYMBOLS:
            price = 100.0
            for i in range(per_symbol):
                price *= 1 + rng.gauss(0, 0.002)
                writer.writerow([symbol, start + 60 * i, round(price, 4), 100])


def bare_graph_rate(invokes: int) -> float:
    """Invokes/s of the workflow graph with every node instant (the gate accepting)."""

    def instant(name: str):
        def node(state):
            return {"verdict": {"accepted": True}} if name == "risk_management" else {}

        return node

    graph = build_graph({name: instant(name) for name in NODE_NAMES}).compile()
    states = [initial_state([{"symbol": "AAA", "close": 100.0, "timestamp": 1.0}])] * invokes
    graph.invoke(states[0])
    _, spent = timed(lambda: [graph.invoke(state) for state in states])
    return invokes / spent


def run(report: Report, *, sizes: dict, settings: Settings) -> None:
    with tempfile.TemporaryDirectory(prefix="osiris-bench-backtest-") as workdir:
        ticks = Path(workdir) / "bars.csv"
        minute_bars(ticks, sizes["ticks_per_symbol"])

        def backtest(out: str, llm: str) -> tuple[dict, dict]:
            options = BacktestOptions(
                out=Path(workdir) / out,
                sources=(str(ticks),),
                ticks_per_proposal=BATCH,
                llm=llm,
                cache_uri=str(Path(workdir) / "live" / "lancedb"),
                progress=False,
            )
            timings: dict[str, float] = {}
            return run_backtest(settings, options, timings=timings), timings

        live, live_s = backtest("live", "live")
        cached, cached_s = backtest("cached", "cache")
        assert cached["llm"]["cache_hits"] == cached["llm"]["calls"] == live["llm"]["calls"]
        assert cached["performance"] == live["performance"]
        batches = cached["backtest"]["batches"]
        bare = report.add(
            NAME,
            "bare LangGraph invoke, instant nodes, no I/O",
            bare_graph_rate(sizes["invokes"]),
            "runs/s",
        )
        rate = batches / cached_s["runs_s"]
        report.add(
            NAME,
            f"backtest's runs, every completion from the cache, {batches} batches of {BATCH}",
            rate,
            "batches/s",
            baseline=bare,
            target=0.5,
            whole_command_s=round(cached_s["total_s"], 2),
            live_batches_per_s=round(batches / live_s["runs_s"], 1),
        )
        report.add(
            NAME,
            "a year of 1-minute bars for 5 symbols (~490k ticks), from the cache",
            YEAR_OF_MINUTES_TICKS / BATCH / rate / 60,
            "min",
        )
