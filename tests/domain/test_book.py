"""The paper book's arithmetic: the NAV identities after any fills and marks, fills of pending
orders, session rolls and the JSON round trip. Expected values are computed here from the
inputs (a plain ledger of the fills and marks), not read back from the functions under test."""

from __future__ import annotations

import math
from datetime import UTC, date, datetime

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from osiris_tasks.domain import book as paper
from osiris_tasks.domain.book import Book, Order, Position

CAPITAL = 100_000.0
DAY_S = 86_400
T0 = 1_767_225_600  # 2026-01-01T00:00:00Z
SYMBOLS = ("AAA", "BBB", "CCC")
SIGN = {"LONG": 1.0, "SHORT": -1.0}
NO_COSTS = {"session_start_hour": 0, "slippage_bps": 0.0, "fee_bps": 0.0}
# Floating error of a few dozen operations is ~1e-14 of the magnitudes; a real slip is larger.
REL_TOL = 1e-9

quantities = st.floats(min_value=0.001, max_value=10_000)
prices = st.floats(min_value=0.01, max_value=10_000)
bad_prices = st.sampled_from([math.nan, math.inf, -math.inf, 0.0, -5.0])
bps = st.floats(min_value=0, max_value=100)
times = st.integers(min_value=T0, max_value=T0 + 3 * DAY_S).map(float)
sides = st.sampled_from(["LONG", "SHORT"])
symbols = st.sampled_from(SYMBOLS)
fill_events = st.tuples(st.just("fill"), symbols, sides, quantities, prices, times)
mark_events = st.tuples(st.just("mark"), symbols, st.one_of(prices, bad_prices), times)
events = st.lists(st.one_of(fill_events, mark_events), max_size=25)


def order(order_id, symbol="AAA", side="LONG", quantity=1.0, price=100.0, at=float(T0)):
    return Order(order_id, symbol, side, quantity, price, at)


def fill(book, side, quantity, reference, *, symbol="AAA", ts=float(T0), slip=0.0, fee=0.0):
    """`book` after one order filled at once, as `apply_fill` does it."""
    placed = order(f"o{book.fills}", symbol, side, quantity, reference, ts)
    return paper.apply_fill(book, placed, reference, ts, slippage_bps=slip, fee_bps=fee)


def close(actual, expected, scale):
    return math.isclose(actual, expected, rel_tol=0, abs_tol=REL_TOL * max(scale, 1.0))


class Ledger:
    """What the book must hold, kept the simple way: signed quantities, cash flows and the
    newest valid mark of each symbol."""

    def __init__(self, capital):
        self.capital = self.cash = capital
        self.quantity = dict.fromkeys(SYMBOLS, 0.0)
        self.marks: dict[str, tuple[float, float]] = {}
        self.fees = self.turnover = self.volume = 0.0

    def mark(self, symbol, price, ts):
        if math.isfinite(price) and price > 0 and ts >= self.marks.get(symbol, (0, -1.0))[1]:
            self.marks[symbol] = (price, ts)

    def fill(self, symbol, side, quantity, reference, ts, slip, fee_bps):
        price = reference * (1 + SIGN[side] * slip / 10_000)
        fee = quantity * price * fee_bps / 10_000
        self.cash -= SIGN[side] * quantity * price + fee
        self.quantity[symbol] += SIGN[side] * quantity
        self.fees += fee
        self.turnover += quantity * price
        self.volume += quantity
        self.mark(symbol, reference, ts)
        return price, fee

    def price(self, symbol, position):
        return self.marks[symbol][0] if symbol in self.marks else position.avg_price


# -- fills, marks and the NAV -----------------------------------------------------------------


@settings(max_examples=250, deadline=None)
@given(capital=st.floats(1_000, 10_000_000), run=events, slip=bps, fee_bps=bps)
def test_nav_identities_hold_after_any_fills_and_marks(capital, run, slip, fee_bps):
    book, ledger = paper.new_book(capital), Ledger(capital)
    for event in run:
        if event[0] == "mark":
            _, symbol, price, ts = event
            book = paper.mark(book, {symbol: (price, ts)})
            ledger.mark(symbol, price, ts)
        else:
            _, symbol, side, quantity, reference, ts = event
            price, fee = ledger.fill(symbol, side, quantity, reference, ts, slip, fee_bps)
            book, filled = fill(
                book, side, quantity, reference, symbol=symbol, ts=ts, slip=slip, fee=fee_bps
            )
            assert filled.fee >= 0 and close(filled.fee, fee, fee)
            assert close(filled.price, price, price)
            assert filled.cash_after == book.cash and filled.nav_after == paper.nav(book)
        check_against_ledger(book, ledger)


def check_against_ledger(book, ledger):
    held = {s: (p.quantity, ledger.price(s, p), p.avg_price) for s, p in book.positions.items()}
    market = sum(q * m for q, m, _ in held.values())
    unrealised = sum(q * (m - a) for q, m, a in held.values())
    gross = sum(abs(q * m) for q, m, _ in held.values())
    scale = ledger.capital + ledger.turnover + gross + abs(book.realised_pnl)
    assert book.fees >= 0 and close(book.fees, ledger.fees, scale)
    assert close(book.cash, ledger.cash, scale)
    for symbol, quantity in ledger.quantity.items():
        got = book.positions.get(symbol, Position(0.0, 0.0)).quantity
        assert close(got, quantity, ledger.volume), symbol
    assert book.marks == ledger.marks
    assert close(paper.nav(book), ledger.cash + market, scale)  # the definition
    identity = ledger.capital + book.realised_pnl + unrealised - ledger.fees
    assert close(paper.nav(book), identity, scale)  # the accounting identity
    assert close(paper.unrealised_pnl(book), unrealised, scale)
    assert close(paper.gross_exposure(book), gross, scale)


@settings(max_examples=150, deadline=None)
@given(capital=st.floats(1_000, 10_000_000), quantity=quantities, price=prices, first=sides)
def test_a_round_trip_at_one_price_without_costs_leaves_capital(capital, quantity, price, first):
    book, _ = fill(paper.new_book(capital), first, quantity, price)
    book, back = fill(book, "SHORT" if first == "LONG" else "LONG", quantity, price)
    assert book.positions == {} and back.position_after == 0.0
    assert book.fees == 0.0 and close(book.realised_pnl, 0.0, quantity * price)
    assert close(paper.nav(book), capital, capital + quantity * price)


def test_crossing_through_zero_leaves_the_rest_short_at_the_fill_price():
    book, _ = fill(paper.new_book(CAPITAL), "LONG", 5, 100.0)
    book, crossed = fill(book, "SHORT", 8, 110.0)
    assert book.positions == {"AAA": Position(-3.0, 110.0)}
    assert crossed.realised_pnl == 50.0 and book.realised_pnl == 50.0  # on the 5 closed
    assert book.cash == CAPITAL - 500.0 + 880.0
    assert paper.nav(book) == CAPITAL + 50.0


@settings(max_examples=150, deadline=None)
@given(held=quantities, extra=quantities, p0=prices, p1=prices, long=st.booleans(), slip=bps)
def test_crossing_through_zero_with_costs(held, extra, p0, p1, long, slip):
    opening, closing = ("LONG", "SHORT") if long else ("SHORT", "LONG")
    book, _ = fill(paper.new_book(CAPITAL), opening, held, p0)
    book, crossed = fill(book, closing, held + extra, p1, slip=slip, fee=10.0)
    price = p1 * (1 + SIGN[closing] * slip / 10_000)
    position = book.positions["AAA"]
    assert position.avg_price == crossed.price and close(crossed.price, price, price)
    assert close(position.quantity, SIGN[closing] * extra, held + extra)
    expected = held * (price - p0) * SIGN[opening]
    assert close(crossed.realised_pnl, expected, held * (price + p0))


@settings(max_examples=150, deadline=None)
@given(held=quantities, part=st.floats(0.01, 0.99), p0=prices, p1=prices, long=st.booleans())
def test_reducing_keeps_the_average_price_and_realises_the_part_closed(held, part, p0, p1, long):
    opening, closing = ("LONG", "SHORT") if long else ("SHORT", "LONG")
    opened, _ = fill(paper.new_book(CAPITAL), opening, held, p0)
    book, reduced = fill(opened, closing, held * part, p1)
    avg = opened.positions["AAA"].avg_price
    assert book.positions["AAA"].avg_price == avg and close(avg, p0, p0)
    expected = held * part * (p1 - p0) * SIGN[opening]
    assert close(reduced.realised_pnl, expected, held * (p0 + p1))


@settings(max_examples=150, deadline=None)
@given(q1=quantities, q2=quantities, p1=prices, p2=prices)
def test_adding_averages_the_price_by_quantity(q1, q2, p1, p2):
    book, _ = fill(paper.new_book(CAPITAL), "SHORT", q1, p1)
    book, added = fill(book, "SHORT", q2, p2)
    position = book.positions["AAA"]
    assert added.realised_pnl == 0.0
    assert close(position.quantity, -(q1 + q2), q1 + q2)
    assert close(position.avg_price, (q1 * p1 + q2 * p2) / (q1 + q2), p1 + p2)


@pytest.mark.parametrize("capital", [0.0, -1.0, math.nan, math.inf])
def test_new_book_refuses_capital_that_is_not_finite_and_positive(capital):
    with pytest.raises(ValueError):
        paper.new_book(capital)


# -- marks ------------------------------------------------------------------------------------

mark_batches = st.lists(
    st.dictionaries(symbols, st.tuples(st.one_of(prices, bad_prices), times), max_size=3),
    max_size=12,
)


@settings(max_examples=200, deadline=None)
@given(batches=mark_batches)
def test_marks_never_move_back_in_time_and_ignore_bad_prices(batches):
    book, newest = paper.new_book(CAPITAL), {}
    for batch in batches:
        before, book = book, paper.mark(book, batch)
        for symbol, (price, ts) in book.marks.items():
            assert math.isfinite(price) and price > 0
            assert ts >= before.marks.get(symbol, (0, -math.inf))[1]
        for symbol, (price, ts) in batch.items():
            valid = math.isfinite(price) and price > 0
            if valid and ts >= newest.get(symbol, (0, -math.inf))[1]:
                newest[symbol] = (price, ts)
        assert book.marks == newest
        assert book.cash == before.cash and book.positions == before.positions


# -- pending orders ---------------------------------------------------------------------------

ticks_of = st.dictionaries(
    symbols, st.lists(st.tuples(st.integers(0, 20).map(float), prices), max_size=5).map(sorted)
)
orders_of = st.lists(
    st.tuples(symbols, sides, quantities, st.integers(0, 20).map(float)), max_size=8
)


@settings(max_examples=250, deadline=None)
@given(specs=orders_of, ticks=ticks_of, slip=bps, fee_bps=bps)
def test_pending_orders_fill_once_at_the_first_newer_tick_oldest_first(specs, ticks, slip, fee_bps):
    book = paper.new_book(CAPITAL)
    placed = [order(f"run-{i}", s, side, q, 50.0, at) for i, (s, side, q, at) in enumerate(specs)]
    for each in placed:
        book = paper.place(book, each)
    assert book.recent_orders == tuple(o.placed_at for o in placed)
    after, fills = paper.fill_pending(book, ticks, slippage_bps=slip, fee_bps=fee_bps)
    expected = {}
    for each in placed:
        tick = next((t for t in ticks.get(each.symbol, []) if t[0] > each.placed_at), None)
        if tick is not None:
            expected[each.order_id] = tick
    assert sorted(f.fill_id for f in fills) == sorted(expected)  # each at most once
    for filled in fills:
        assert (filled.timestamp, filled.reference_price) == expected[filled.fill_id]
    at = {o.order_id: o.placed_at for o in placed}
    assert [at[f.fill_id] for f in fills] == sorted(at[f.fill_id] for f in fills)
    assert set(after.pending) == set(at) - set(expected) and after.fills == len(fills)
    again, none = paper.fill_pending(after, ticks, slippage_bps=slip, fee_bps=fee_bps)
    assert none == [] and again == after


def test_an_order_waits_for_a_tick_strictly_newer_than_its_batch():
    book = paper.place(paper.new_book(CAPITAL), order("run-1", at=10.0))
    same, fills = paper.fill_pending(book, {"AAA": [(10.0, 101.0)]}, slippage_bps=0, fee_bps=0)
    assert fills == [] and "run-1" in same.pending
    filled, fills = paper.fill_pending(
        book, {"AAA": [(10.0, 101.0), (11.0, 102.0), (12.0, 103.0)]}, slippage_bps=0, fee_bps=0
    )
    assert [(f.timestamp, f.price) for f in fills] == [(11.0, 102.0)]
    assert filled.pending == {} and filled.positions == {"AAA": Position(1.0, 102.0)}


def test_orders_in_last_minute_counts_a_sliding_window_of_the_recent_orders():
    book = paper.new_book(CAPITAL)
    for i in range(paper.MAX_RECENT_ORDERS + 5):
        book = paper.place(book, order(f"run-{i}", at=float(i)))
    # only the orders that can still count are kept: those of the last minute
    last = float(paper.MAX_RECENT_ORDERS + 4)
    assert book.recent_orders == tuple(float(t) for t in range(int(last) - 59, int(last) + 1))
    crowded = paper.new_book(CAPITAL)
    for i in range(paper.MAX_RECENT_ORDERS + 5):  # more in one minute than are kept
        crowded = paper.place(crowded, order(f"run-{i}", at=1.0 + i / 10_000))
    assert len(crowded.recent_orders) == paper.MAX_RECENT_ORDERS
    assert paper.orders_in_last_minute(book, last) == 60  # (last - 60, last]
    assert paper.orders_in_last_minute(book, last + 60) == 0
    assert paper.orders_in_last_minute(book, 4.0) == 0  # dropped from the window


# -- sessions ---------------------------------------------------------------------------------

held_fills = st.lists(st.tuples(symbols, sides, quantities, prices), min_size=1, max_size=6)


def book_on_day_one(specs):
    book = paper.new_book(CAPITAL, session=paper.session_of(T0))
    for symbol, side, quantity, price in specs:
        book, _ = fill(book, side, quantity, price, symbol=symbol, ts=float(T0 + 60))
    return book


def independent_nav(book):
    return book.cash + sum(p.quantity * book.marks[s][0] for s, p in book.positions.items())


@settings(max_examples=200, deadline=None)
@given(specs=held_fills, new_prices=st.fixed_dictionaries(dict.fromkeys(SYMBOLS, prices)))
def test_on_ticks_rolls_the_session_at_the_nav_of_that_moment(specs, new_prices):
    book = book_on_day_one(specs)
    scale = CAPITAL + sum(q * (p + 20_000) for _, _, q, p in specs)
    rolled = paper.roll(book, paper.session_of(T0 + DAY_S))
    assert rolled.session_start_nav == paper.nav(book) and paper.daily_pnl(rolled) == 0.0
    same = {s: [(float(T0 + DAY_S), book.marks[s][0])] for s in book.marks}
    after, fills = paper.on_ticks(book, same, **NO_COSTS)
    assert fills == [] and after.session == paper.session_of(T0 + DAY_S)
    assert close(after.session_start_nav, independent_nav(book), scale)
    assert close(paper.daily_pnl(after), 0.0, scale)
    moved = {s: [(float(T0 + DAY_S + 60), p)] for s, p in new_prices.items()}
    later, _ = paper.on_ticks(after, moved, **NO_COSTS)  # the same session: no roll
    assert later.session_start_nav == after.session_start_nav
    change = sum(p.quantity * (new_prices[s] - book.marks[s][0]) for s, p in book.positions.items())
    assert close(paper.daily_pnl(later), change, scale)


def test_a_late_batch_never_moves_the_session_back():
    book = book_on_day_one([("AAA", "LONG", 100.0, 100.0)])
    today, _ = paper.on_ticks(book, {"AAA": [(float(T0 + DAY_S), 100.0)]}, **NO_COSTS)
    loss, _ = paper.on_ticks(today, {"AAA": [(float(T0 + DAY_S + 60), 70.0)]}, **NO_COSTS)
    assert paper.daily_pnl(loss) == -3000.0
    late, _ = paper.on_ticks(loss, {"AAA": [(float(T0 + 60), 100.0)]}, **NO_COSTS)
    assert late.session == today.session
    again, _ = paper.on_ticks(late, {"AAA": [(float(T0 + DAY_S + 120), 70.0)]}, **NO_COSTS)
    assert paper.daily_pnl(again) == -3000.0


@settings(max_examples=200, deadline=None)
@given(
    day=st.dates(min_value=date(2000, 1, 1), max_value=date(2099, 12, 30)),
    start_hour=st.integers(0, 23),
    offset_s=st.integers(0, 2 * DAY_S - 1).map(lambda half_s: half_s / 2),
)
def test_session_of_names_the_day_whose_session_start_precedes_the_time(day, start_hour, offset_s):
    start = datetime(day.year, day.month, day.day, start_hour, tzinfo=UTC).timestamp()
    assert paper.session_of(start + offset_s, start_hour) == day.isoformat()
    assert paper.session_of(start - 1, start_hour) != day.isoformat()
    assert paper.session_of(start + offset_s) == datetime.fromtimestamp(
        start + offset_s, UTC
    ).strftime("%Y-%m-%d")


# -- JSON -------------------------------------------------------------------------------------

operations = st.lists(
    st.one_of(
        fill_events,
        mark_events,
        st.tuples(st.just("place"), symbols, sides, quantities, prices, times),
        st.tuples(st.just("roll"), times),
    ),
    max_size=15,
)


@settings(max_examples=200, deadline=None)
@given(run=operations, slip=bps, fee_bps=bps)
def test_the_json_round_trip_gives_back_the_same_book(run, slip, fee_bps):
    book = paper.new_book(CAPITAL)
    for i, event in enumerate(run):
        kind, rest = event[0], event[1:]
        if kind == "fill":
            book, _ = fill(book, *rest[1:4], symbol=rest[0], ts=rest[4], slip=slip, fee=fee_bps)
        elif kind == "mark":
            book = paper.mark(book, {rest[0]: rest[1:]})
        elif kind == "place":
            book = paper.place(book, order(f"run-{i}", *rest))
        else:
            book = paper.roll(book, paper.session_of(rest[0], 7))
    restored = Book.from_json(orjson.loads(orjson.dumps(book.as_json())))
    assert restored == book
    assert paper.nav(restored) == paper.nav(book)
