"""`osiris backtest` on real prices nobody here made up: the monthly closes of five stocks,
2000-2010, shipped in the `vega_datasets` package. Live once through the reference sidecar,
then from the completion cache alone: the same summary byte for byte, no request to any LLM
server, figures that an independent replay of the fills confirms."""

from __future__ import annotations

import csv
import importlib.resources
import json
import math
from datetime import UTC, datetime
from pathlib import Path

import pytest
from conftest import wait_for

from osiris_tasks import app, configure
from osiris_tasks.domain import performance
from osiris_tasks.store.runstore import RunStore
from osiris_tasks.tools.backtest import BacktestOptions, run_backtest
from osiris_tasks.tools.cli import main

TICKS_PER_PROPOSAL = 3


@pytest.fixture(scope="module")
def stocks(tmp_path_factory) -> Path:
    """vega_datasets' stocks.csv (symbol, 'Jan 1 2000', price) as the replay format."""
    source = importlib.resources.files("vega_datasets") / "_data" / "stocks.csv"
    path = tmp_path_factory.mktemp("prices") / "stocks.csv"
    with source.open() as data, path.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["symbol", "timestamp", "close"])
        for row in csv.DictReader(data):
            day = datetime.strptime(row["date"], "%b %d %Y").replace(tzinfo=UTC)
            writer.writerow([row["symbol"], day.isoformat(), row["price"]])
    return path


def backtest(settings, out: Path, sources, **options):
    return run_backtest(
        settings,
        BacktestOptions(
            out=out,
            sources=tuple(str(s) for s in sources),
            ticks_per_proposal=TICKS_PER_PROPOSAL,
            progress=False,
            **options,
        ),
    )


def requests_made(server) -> int:
    return sum(server.requests.values())


def test_a_cached_backtest_is_byte_identical_and_asks_no_llm(
    settings, sidecar_server, stocks, tmp_path
):
    live = backtest(settings, tmp_path / "live", [stocks], llm="live")
    assert live["backtest"]["ticks"] == 560 and live["backtest"]["symbols"] == [
        "AAPL",
        "AMZN",
        "GOOG",
        "IBM",
        "MSFT",
    ]
    assert live["llm"]["calls"] > 0 and live["llm"]["cache_hits"] == 0
    assert live["performance"]["trades"] > 0
    before = requests_made(sidecar_server)
    cache = str(tmp_path / "live" / "lancedb")
    first = backtest(settings, tmp_path / "a", [stocks], llm="cache", cache_uri=cache)
    backtest(settings, tmp_path / "b", [stocks], llm="cache", cache_uri=cache)
    assert requests_made(sidecar_server) == before  # not one request to the LLM server
    assert (tmp_path / "a" / "summary.json").read_bytes() == (
        tmp_path / "b" / "summary.json"
    ).read_bytes()
    assert first["llm"]["cache_hits"] == first["llm"]["calls"] == live["llm"]["calls"]
    # the cached replay decided exactly what the live run decided
    assert first["performance"] == live["performance"] and first["runs"] == live["runs"]
    assert first["rejections_by_rule"] == live["rejections_by_rule"]
    # the live backtest's own runs, backtested again from the cache: the same decisions
    again = run_backtest(
        settings,
        BacktestOptions(
            out=tmp_path / "again", from_runs=cache, llm="cache", cache_uri=cache, progress=False
        ),
    )
    assert again["performance"] == live["performance"] and requests_made(sidecar_server) == before
    for name in ("summary.json", "equity.csv", "equity.png", "report.md"):
        assert (tmp_path / "a" / name).stat().st_size > 0
    report = (tmp_path / "a" / "report.md").read_text()
    assert "total return" in report and "![equity and drawdown](equity.png)" in report


def test_the_summary_agrees_with_an_independent_replay_of_the_fills(
    settings, sidecar_server, stocks, tmp_path
):
    """Cash, positions and NAV rebuilt from the `fills` table and the prices alone, and the
    return and drawdown recomputed from `equity.csv`, match the summary."""
    summary = backtest(settings, tmp_path / "bt", [stocks], llm="live")
    store = RunStore(str(tmp_path / "bt" / "lancedb"))
    fills = store.fills()
    store.close()
    cash, positions = settings.nav, {}
    for fill in fills:
        signed = fill["quantity"] if fill["side"] == "LONG" else -fill["quantity"]
        cash -= signed * fill["price"] + fill["fee"]
        positions[fill["symbol"]] = positions.get(fill["symbol"], 0.0) + signed
    last = {}
    with stocks.open() as data:
        for row in sorted(csv.DictReader(data), key=lambda r: r["timestamp"]):
            last[row["symbol"]] = float(row["close"])
    nav = cash + sum(q * last[s] for s, q in positions.items())
    p = summary["performance"]
    assert p["end_nav"] == pytest.approx(nav, rel=1e-9)
    assert p["trades"] == len(fills)
    assert p["fees"] == pytest.approx(sum(f["fee"] for f in fills))
    navs = [
        float(line.split(",")[1])
        for line in (tmp_path / "bt" / "equity.csv").read_text().split()[1:]
    ]
    assert navs[-1] == pytest.approx(nav, rel=1e-9)
    assert p["total_return"] == pytest.approx(nav / settings.nav - 1)
    peak, worst = settings.nav, 0.0
    for value in navs:
        peak = max(peak, value)
        worst = min(worst, value / peak - 1)
    assert p["max_drawdown"] == pytest.approx(worst)
    assert len(navs) == summary["backtest"]["batches"]
    assert performance.max_drawdown([100.0, 120.0, 60.0, 130.0]) == pytest.approx(-0.5)

    # the recorded runs as a fine-tuning set: chat rows labelled with their outcome and fill
    out = tmp_path / "chat.jsonl"
    lancedb = ["--lancedb_uri", str(tmp_path / "bt" / "lancedb")]
    assert main(["runs", "export", "--format", "chat", "--output", str(out), *lancedb]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == sum(summary["runs"].values())  # every run was asked
    by_run = {f["run_id"]: f for f in fills}
    for row in rows:
        user, assistant = row["messages"][-2:]
        assert (user["role"], assistant["role"]) == ("user", "assistant")
        assert user["content"].startswith("You are the Osiris trading policy")
        fill = by_run.get(row["run_id"])
        assert (row["labels"]["fill"] is None) == (fill is None)
        assert row["labels"]["realised_pnl"] == (fill["realised_pnl"] if fill else None)
    accepted = tmp_path / "accepted.jsonl"
    main(["runs", "export", "--format", "chat", "--accepted", "--output", str(accepted), *lancedb])
    assert all(json.loads(r)["labels"]["accepted"] for r in accepted.read_text().splitlines())
    winners = tmp_path / "winners.jsonl"
    main(
        [
            "runs",
            "export",
            "--format",
            "chat",
            "--min_pnl",
            "0.01",
            "--output",
            str(winners),
            *lancedb,
        ]
    )
    won = [json.loads(r)["labels"]["realised_pnl"] for r in winners.read_text().splitlines()]
    assert won and all(pnl >= 0.01 for pnl in won)
    assert len(won) == sum(1 for f in fills if f["realised_pnl"] >= 0.01)


def test_a_cache_miss_is_a_recorded_error_and_no_request(
    settings, sidecar_server, stocks, tmp_path
):
    empty = tmp_path / "empty-cache"
    RunStore(str(empty)).count("completions")  # an empty cache
    before = requests_made(sidecar_server)
    summary = backtest(settings, tmp_path / "miss", [stocks], llm="cache", cache_uri=str(empty))
    assert requests_made(sidecar_server) == before
    assert summary["errors_by_type"] == {"LLMCacheMiss": summary["backtest"]["batches"]}
    assert summary["performance"]["trades"] == 0
    assert summary["rejections_by_rule"] == {"upstream_error": summary["backtest"]["batches"]}
    assert math.isclose(summary["performance"]["end_nav"], settings.nav)


@pytest.mark.integration
def test_celery_and_in_process_give_the_same_fills(
    settings, sidecar_server, stocks, tmp_path, worker_factory
):
    """The first 90 ticks through real workers and in-process, both from the cache of a live
    in-process backtest: the same fills, price for price."""
    subset = tmp_path / "subset.csv"
    subset.write_text("".join(stocks.read_text().splitlines(keepends=True)[:91]))
    backtest(settings, tmp_path / "live", [subset], llm="live")
    cache = str(tmp_path / "live" / "lancedb")
    local = backtest(settings, tmp_path / "local", [subset], llm="cache", cache_uri=cache)
    out = tmp_path / "celery"
    env = {
        "OSIRIS_LANCEDB_URI": str(out / "lancedb"),
        "OSIRIS_BOOK": "paper",
        "OSIRIS_LLM_CACHE": "read",
        "OSIRIS_LLM_CACHE_URI": cache,
    }
    configure(app, settings)
    worker_factory(settings, env_extra=env)
    through = backtest(settings, out, [subset], llm="cache", cache_uri=cache, celery=True)
    assert through["backtest"]["through"] == "celery"
    assert through["performance"] == local["performance"]
    assert through["runs"] == local["runs"]

    def fills(path: Path) -> list[tuple]:
        store = RunStore(str(path / "lancedb"))
        rows = store.fills()
        store.close()
        return [(f["fill_id"], f["symbol"], f["side"], f["quantity"], f["price"]) for f in rows]

    wait_for(lambda: fills(out) == fills(tmp_path / "local"), timeout_s=10)
    assert json.loads((out / "summary.json").read_text())["llm"]["cache_hits"] > 0


def test_parquet_and_jsonl_ticks_backtest_like_the_csv(settings, sidecar_server, stocks, tmp_path):
    """The same ticks as CSV, JSONL and Parquet: the same batches, the same summary."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = list(csv.DictReader(stocks.open()))[:60]
    ticks = [
        {"symbol": r["symbol"], "timestamp": r["timestamp"], "close": float(r["close"])}
        for r in rows
    ]
    as_csv = tmp_path / "t.csv"
    as_csv.write_text("".join(stocks.read_text().splitlines(keepends=True)[:61]))
    as_jsonl = tmp_path / "t.jsonl"
    as_jsonl.write_text("".join(json.dumps(t) + "\n" for t in ticks))
    as_parquet = tmp_path / "t.parquet"
    pq.write_table(pa.Table.from_pylist(ticks), as_parquet)
    summaries = [
        backtest(settings, tmp_path / name, [source], llm="live")
        for name, source in (("csv", as_csv), ("jsonl", as_jsonl), ("parquet", as_parquet))
    ]
    assert summaries[0]["backtest"]["ticks"] == 60
    assert summaries[0] == summaries[1] == summaries[2]
