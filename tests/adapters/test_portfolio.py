"""The paper book and the kill switch on a real Redis: one order per run whatever is redelivered,
limits that hold when runs decide at once, a daily loss that halts, a halt that survives a
restart of Redis and of every process, and whole runs through the in-process graph."""

from __future__ import annotations

import threading

import pytest
import redis
from pipeline_helpers import ACCEPTED_BATCH, ticks

from osiris_tasks import InProcessRunner, Resources, RunStatus, initial_state
from osiris_tasks.adapters.portfolio import BookConfig, Portfolio
from osiris_tasks.domain import book as paper
from osiris_tasks.domain.book import Order
from osiris_tasks.domain.risk import Holdings, RiskLimits, Verdict, assess
from osiris_tasks.keys import BOOK_KEY, DAILY_PNL_KEY, HALT_KEY, NAV_KEY
from osiris_tasks.store.runstore import RunStore

NAV = 100_000.0
PROPOSAL = {
    "action": "adjust",
    "ticker": "AAPL",
    "side": "LONG",
    "quantity": 5,
    "price_estimate": 100.0,
    "confidence": 0.5,
}


def book_of(url: str, fill_at: str = "batch_close", **limits) -> Portfolio:
    return Portfolio(
        redis.Redis.from_url(url),
        default_nav=NAV,
        default_daily_pnl=0.0,
        mode="paper",
        config=BookConfig(fill_at=fill_at, slippage_bps=5.0, fee_bps=1.0, **limits),
    )


DEFAULT_LIMITS = RiskLimits()


def gate(limits: RiskLimits = DEFAULT_LIMITS, proposal=PROPOSAL):
    def decide(book) -> Verdict:
        if book.get("halted"):
            return Verdict(False, "halted", "halted")
        return assess(
            proposal,
            nav=book["nav"],
            daily_pnl=book["daily_pnl"],
            symbols=["AAPL"],
            limits=limits,
            holdings=Holdings(**book["holdings"]),
        )

    return decide


def order(run_id: str, quantity: float = 5, side: str = "LONG", at: float = 1000.0) -> Order:
    return Order(run_id, "AAPL", side, quantity, 100.0, at)


def test_an_accepted_order_is_taken_once_per_run_even_when_redelivered(redis_url):
    book = book_of(redis_url)
    first = book.decide("run_a", gate(), order("run_a"))
    again = book_of(redis_url).decide("run_a", gate(), order("run_a"))  # a redelivered task
    assert first.verdict.accepted and again.verdict == first.verdict
    assert [f["fill_id"] for f in first.fills] == ["run_a"] and again.fills == first.fills
    held = book.book()
    assert held.fills == 1 and held.positions["AAPL"].quantity == 5
    # executed against the batch's last price, 5 bps against the order, 1 bp fee
    (fill,) = first.fills
    assert fill["price"] == pytest.approx(100.05) and fill["fee"] == pytest.approx(5 * 100.05e-4)
    client = redis.Redis.from_url(redis_url)
    assert float(client.get(NAV_KEY)) == pytest.approx(paper.nav(held))
    assert float(client.get(DAILY_PNL_KEY)) == pytest.approx(paper.daily_pnl(held))
    # marked at the batch's price: the slippage and the fee are what the fill cost
    assert paper.nav(held) == pytest.approx(NAV - 5 * 0.05 - fill["fee"])


def test_runs_deciding_at_once_cannot_pass_a_limit_only_one_fits(redis_url):
    """32 threads, each a run buying 40 AAPL at 100 (0.04 % of NAV... 4 % each) against a 5 %
    symbol limit: the gate runs inside each transaction, so exactly one order is taken."""
    limits = RiskLimits(max_position_size_pct=0.05, max_symbol_position_pct=0.05)
    proposal = {**PROPOSAL, "quantity": 40}
    verdicts: dict[str, Verdict] = {}

    def run(i: int) -> None:
        decision = book_of(redis_url).decide(
            f"run_{i}", gate(limits, proposal), order(f"run_{i}", 40)
        )
        verdicts[f"run_{i}"] = decision.verdict

    threads = [threading.Thread(target=run, args=(i,)) for i in range(32)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    accepted = [run_id for run_id, v in verdicts.items() if v.accepted]
    assert len(accepted) == 1, verdicts
    assert {v.rule for v in verdicts.values() if not v.accepted} == {"symbol_position_limit"}
    held = book_of(redis_url).book()
    assert held.positions["AAPL"].quantity == 40 and held.fills == 1


def test_next_tick_orders_wait_for_a_newer_tick_of_their_symbol(redis_url):
    book = book_of(redis_url, fill_at="next_tick")
    decision = book.decide("run_a", gate(), order("run_a", at=1000.0))
    assert decision.verdict.accepted and decision.fills == []
    assert list(book.book().pending) == ["run_a"]
    fills, after, _ = book.on_ticks(
        "run_b", {"AAPL": [(999.0, 90.0), (1001.0, 101.0), (1002.0, 102.0)]}
    )
    (fill,) = fills
    assert (fill["fill_id"], fill["reference_price"], fill["timestamp"]) == ("run_a", 101.0, 1001.0)
    assert after["positions"]["AAPL"]["mark"] == 102.0 and after["pending_orders"] == 0
    assert book.on_ticks("run_c", {"AAPL": [(1003.0, 103.0)]})[0] == []  # filled once


def test_a_daily_loss_at_the_limit_halts_until_resumed_or_the_next_session(redis_url):
    book = book_of(redis_url, fill_at="batch_close", max_daily_loss_pct=0.02)
    day = 1_767_225_600.0  # 2026-01-01T00:00:00Z
    book.on_ticks("run_0", {"AAPL": [(day + 10, 100.0)]})
    limits = RiskLimits(max_position_size_pct=0.5, max_symbol_position_pct=0.9)
    big = {**PROPOSAL, "quantity": 400}
    assert book.decide(
        "run_1", gate(limits, big), order("run_1", 400, at=day + 20)
    ).verdict.accepted
    # the price falls 6 %: 400 x 6 = 2400 > 2 % of NAV
    fills, after, halted = book.on_ticks("run_2", {"AAPL": [(day + 30, 94.0)]})
    assert halted is not None and halted["by"] == "daily_loss" and after["daily_pnl"] < -2000
    assert book.halted()["reason"] == halted["reason"]
    refused = book.decide("run_3", gate(limits, PROPOSAL), order("run_3", at=day + 40))
    assert (refused.verdict.accepted, refused.verdict.rule) == (False, "halted")
    # the next session lifts a loss halt; an operator's halt stays until resumed
    book.on_ticks("run_4", {"AAPL": [(day + 86_400 + 10, 94.0)]})
    assert book.halted() is None
    assert book.halt("manual check", by="operator")["by"] == "operator"
    assert book.halt("again") is None  # already halted
    assert book.resume()["reason"] == "manual check" and book.halted() is None


def test_the_halt_survives_a_restart_of_redis_and_of_every_process(persistent_redis):
    url = persistent_redis.url
    assert book_of(url).halt("desk closed")["reason"] == "desk closed"
    persistent_redis.stop()
    persistent_redis.start()
    reopened = book_of(url)  # a new process would build exactly this
    assert reopened.halted()["reason"] == "desk closed"
    assert reopened.snapshot()["halted"]["by"] == "operator"
    assert redis.Redis.from_url(url).get(HALT_KEY) is not None


@pytest.mark.parametrize("mode", ["static", "external"])
def test_other_books_read_the_keys_and_the_halt(redis_url, mode):
    client = redis.Redis.from_url(redis_url)
    portfolio = Portfolio(client, default_nav=NAV, default_daily_pnl=0.0, mode=mode)
    snapshot = portfolio.snapshot()
    assert snapshot["nav"] == (NAV if mode == "static" else None)  # external: no book, no NAV
    client.set(NAV_KEY, "50000")
    client.set(DAILY_PNL_KEY, "-10")
    assert (portfolio.snapshot()["nav"], portfolio.snapshot()["daily_pnl"]) == (50_000.0, -10.0)
    portfolio.halt("maintenance")
    assert portfolio.snapshot()["halted"]["reason"] == "maintenance"
    assert client.get(BOOK_KEY) is None  # only the paper book keeps one


def test_paper_runs_fill_and_mark_the_book_and_record_their_fills(settings):
    """Two accepted runs in-process with `OSIRIS_BOOK=paper` (fill at the next tick): the
    first's order fills at the second batch's first tick; the fill is in `fills` once, with
    `order.filled` and `portfolio.updated` among the second run's events."""
    paper_settings = settings.with_(book="paper", book_fill_at="next_tick")
    res = Resources.from_settings(paper_settings)
    try:
        first = InProcessRunner(res).run(initial_state(ACCEPTED_BATCH))
        later = ticks(
            [100, 101, 100, 101, 100, 101, 100, 101, 100, 100],
            start=ACCEPTED_BATCH[-1]["timestamp"] + 1,
        )
        second = InProcessRunner(res).run(initial_state(later))
        summary = res.portfolio.summary()
    finally:
        res.close()
    assert first["status"] == RunStatus.SUCCESS and first["verdict"]["accepted"]
    assert first["book"]["source"] == "paper" and first.get("fills", []) == []
    (fill,) = second["fills"]
    assert fill["fill_id"] == first["run_id"] and fill["reference_price"] == later[0]["close"]
    channels = [e["channel"] for e in second["events"]]
    assert "order.filled" in channels and "portfolio.updated" in channels
    assert summary["fills"] == 1 and summary["pending_orders"] == (
        1 if second["verdict"]["accepted"] else 0
    )
    store = RunStore(settings.lancedb_uri)
    try:
        (row,) = store.fills(first["run_id"])
    finally:
        store.close()
    assert row["filled_in_run_id"] == second["run_id"] and row["price"] == pytest.approx(
        fill["price"]
    )


def test_a_batch_applied_again_fills_nothing_new_and_returns_its_first_fills(redis_url):
    """`query_market` redelivered after its transaction committed: the book is not changed
    again, and the fills it made come back, so the run still records and announces them."""
    book = book_of(redis_url, fill_at="next_tick")
    book.decide("run_a", gate(), order("run_a", at=1000.0))
    batch = {"AAPL": [(1001.0, 101.0)]}
    first, _, _ = book.on_ticks("run_b", batch)
    again, _, _ = book_of(redis_url, fill_at="next_tick").on_ticks("run_b", batch)
    assert [f["fill_id"] for f in first] == ["run_a"] and again == first
    assert book.book().fills == 1
