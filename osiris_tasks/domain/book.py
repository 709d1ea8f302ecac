"""The paper book's arithmetic: positions, cash, P&L, NAV and the trading session, as pure
functions of a value (`Book`). No I/O: `adapters/book.py` keeps the value in Redis and applies
these functions atomically, exactly once per order.

Conventions:

* A proposal's `side` is the direction of the order: `LONG` buys `quantity`, `SHORT` sells it.
  A position is a signed quantity (negative: short) with the average price it was opened at.
* A fill executes at the reference price moved against the order by `slippage_bps`, and pays
  `fee_bps` of its notional from cash.
* Prices are marked from ticks, newest timestamp wins (a late batch cannot move a mark back).
  A position with no mark yet is valued at its average price.
* NAV = cash + sum(quantity x mark). Equivalently, and checked by the tests: the starting
  capital + realised P&L + unrealised P&L - fees.
* The session (for the daily P&L) is the UTC day that begins at `session_start_hour` UTC: the
  first update of a new session takes the NAV at that moment as its start.
* Orders: `next_tick` orders wait in `pending` until a tick of their symbol newer than the
  batch they came from; `batch_close` orders fill at once at the batch's last price.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any

__all__ = [
    "BOOK_MODES",
    "FILL_AT",
    "Book",
    "Fill",
    "Order",
    "Position",
    "apply_fill",
    "daily_pnl",
    "fill_price",
    "gross_exposure",
    "mark",
    "nav",
    "new_book",
    "orders_in_last_minute",
    "fill_pending",
    "on_ticks",
    "place",
    "roll",
    "session_of",
    "unrealised_pnl",
]

# Who keeps the book the gate reads: this package's paper book, an external one that writes the
# two Redis keys, or the settings' OSIRIS_NAV / OSIRIS_DAILY_PNL (the keys, if set, win).
BOOK_MODES = ("paper", "external", "static")
# When an accepted order fills: at the next tick of its symbol, or at the batch's last price.
FILL_AT = ("next_tick", "batch_close")
SIDES = {"LONG": 1.0, "SHORT": -1.0}
# Order timestamps kept for the orders-per-minute limit.
ORDER_WINDOW_S = 60.0
MAX_RECENT_ORDERS = 1000


@dataclass(frozen=True)
class Position:
    quantity: float  # signed: negative is short
    avg_price: float


@dataclass(frozen=True)
class Order:
    """An accepted proposal as an order; `order_id` is its run_id (one order per run)."""

    order_id: str
    symbol: str
    side: str
    quantity: float
    reference_price: float  # the batch's last price of the symbol
    placed_at: float  # timestamp of that price (the batch's last tick of the symbol)


@dataclass(frozen=True)
class Fill:
    """An executed order. `fill_id` is the order's id: one fill per order, ever."""

    fill_id: str
    run_id: str  # the run whose order this is
    symbol: str
    side: str
    quantity: float
    price: float  # executed, slippage included
    reference_price: float  # the tick price it executed against
    fee: float
    realised_pnl: float  # P&L this fill realised on the position it reduced (fees excluded)
    timestamp: float  # the tick's time
    cash_after: float
    position_after: float
    nav_after: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Book:
    capital: float
    cash: float
    positions: dict[str, Position] = field(default_factory=dict)
    marks: dict[str, tuple[float, float]] = field(default_factory=dict)  # symbol: (price, ts)
    realised_pnl: float = 0.0
    fees: float = 0.0
    session: str | None = None
    session_start_nav: float = 0.0
    pending: dict[str, Order] = field(default_factory=dict)
    recent_orders: tuple[float, ...] = ()  # timestamps of the orders placed, oldest first
    fills: int = 0

    # -- JSON, as Redis keeps it ---------------------------------------------------------

    def as_json(self) -> dict[str, Any]:
        return {
            "capital": self.capital,
            "cash": self.cash,
            "positions": {s: [p.quantity, p.avg_price] for s, p in self.positions.items()},
            "marks": {s: list(m) for s, m in self.marks.items()},
            "realised_pnl": self.realised_pnl,
            "fees": self.fees,
            "session": self.session,
            "session_start_nav": self.session_start_nav,
            "pending": {k: asdict(o) for k, o in self.pending.items()},
            "recent_orders": list(self.recent_orders),
            "fills": self.fills,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Book:
        return cls(
            capital=data["capital"],
            cash=data["cash"],
            positions={s: Position(q, a) for s, (q, a) in data["positions"].items()},
            marks={s: (p, t) for s, (p, t) in data["marks"].items()},
            realised_pnl=data["realised_pnl"],
            fees=data["fees"],
            session=data["session"],
            session_start_nav=data["session_start_nav"],
            pending={k: Order(**o) for k, o in data["pending"].items()},
            recent_orders=tuple(data["recent_orders"]),
            fills=data["fills"],
        )


def new_book(capital: float, *, session: str | None = None) -> Book:
    """An empty book of `capital` in cash."""
    if not math.isfinite(capital) or capital <= 0:
        raise ValueError(f"capital must be finite and positive, not {capital!r}")
    return Book(capital=capital, cash=capital, session=session, session_start_nav=capital)


def session_of(ts: float, start_hour: int = 0) -> str:
    """The session (a UTC date) that the time `ts` falls in, sessions starting at
    `start_hour` UTC."""
    return time.strftime("%Y-%m-%d", time.gmtime(ts - start_hour * 3600))


def _price(book: Book, symbol: str) -> float:
    mark_ = book.marks.get(symbol)
    return mark_[0] if mark_ else book.positions[symbol].avg_price


def nav(book: Book) -> float:
    """Cash plus every position at its mark."""
    return book.cash + sum(p.quantity * _price(book, s) for s, p in book.positions.items())


def unrealised_pnl(book: Book) -> float:
    return sum(p.quantity * (_price(book, s) - p.avg_price) for s, p in book.positions.items())


def gross_exposure(book: Book) -> float:
    """Sum of the positions' absolute market values."""
    return sum(abs(p.quantity * _price(book, s)) for s, p in book.positions.items())


def daily_pnl(book: Book) -> float:
    """NAV now against the NAV when the session started."""
    return nav(book) - book.session_start_nav


def orders_in_last_minute(book: Book, now_s: float) -> int:
    return sum(1 for ts in book.recent_orders if now_s - ORDER_WINDOW_S < ts <= now_s)


def roll(book: Book, session: str) -> Book:
    """`book` in `session`: a new session starts at the NAV of this moment. A session before
    the book's (a late batch) changes nothing: the session never moves back."""
    if book.session is not None and session <= book.session:  # ISO dates order as strings
        return book
    return replace(book, session=session, session_start_nav=nav(book))


def mark(book: Book, prices: dict[str, tuple[float, float]]) -> Book:
    """`book` with `prices` (symbol: (price, ts)) as marks where newer than the ones it has."""
    marks = dict(book.marks)
    for symbol, (price, ts) in prices.items():
        if math.isfinite(price) and price > 0 and (symbol not in marks or ts >= marks[symbol][1]):
            marks[symbol] = (price, ts)
    return replace(book, marks=marks)


def fill_price(side: str, reference: float, slippage_bps: float) -> float:
    """The price an order of `side` executes at: `reference` moved against it."""
    return reference * (1.0 + SIDES[side] * slippage_bps / 10_000)


def apply_fill(
    book: Book, order: Order, reference: float, ts: float, *, slippage_bps: float, fee_bps: float
) -> tuple[Book, Fill]:
    """`book` after `order` executes against the tick price `reference` at `ts`."""
    price = fill_price(order.side, reference, slippage_bps)
    delta = SIDES[order.side] * order.quantity
    fee = abs(delta) * price * fee_bps / 10_000
    held = book.positions.get(order.symbol, Position(0.0, price))
    realised = 0.0
    quantity = held.quantity + delta
    if held.quantity == 0 or (held.quantity > 0) == (delta > 0):  # opening or adding
        avg = (held.quantity * held.avg_price + delta * price) / quantity
    else:  # reducing, closing, or crossing through zero
        closed = min(abs(delta), abs(held.quantity))
        realised = closed * (price - held.avg_price) * (1.0 if held.quantity > 0 else -1.0)
        avg = held.avg_price if abs(delta) <= abs(held.quantity) else price
    positions = dict(book.positions)
    if abs(quantity) < 1e-12:
        positions.pop(order.symbol, None)
    else:
        positions[order.symbol] = Position(quantity, avg)
    marks = dict(book.marks)
    if order.symbol not in marks or ts >= marks[order.symbol][1]:
        marks[order.symbol] = (reference, ts)
    pending = {k: o for k, o in book.pending.items() if k != order.order_id}
    after = replace(
        book,
        cash=book.cash - delta * price - fee,
        positions=positions,
        marks=marks,
        realised_pnl=book.realised_pnl + realised,
        fees=book.fees + fee,
        pending=pending,
        fills=book.fills + 1,
    )
    filled = Fill(
        fill_id=order.order_id,
        run_id=order.order_id,
        symbol=order.symbol,
        side=order.side,
        quantity=order.quantity,
        price=price,
        reference_price=reference,
        fee=fee,
        realised_pnl=realised,
        timestamp=ts,
        cash_after=after.cash,
        position_after=positions.get(order.symbol, Position(0.0, 0.0)).quantity,
        nav_after=nav(after),
    )
    return after, filled


def place(book: Book, order: Order) -> Book:
    """`book` with `order` waiting for its symbol's next tick, counted as placed."""
    newest = max(order.placed_at, *book.recent_orders) if book.recent_orders else order.placed_at
    recent = tuple(
        ts for ts in (*book.recent_orders, order.placed_at) if ts > newest - ORDER_WINDOW_S
    )[-MAX_RECENT_ORDERS:]  # older ones can never count again
    return replace(book, pending={**book.pending, order.order_id: order}, recent_orders=recent)


def fill_pending(
    book: Book,
    ticks: dict[str, list[tuple[float, float]]],
    *,
    slippage_bps: float,
    fee_bps: float,
) -> tuple[Book, list[Fill]]:
    """Fill each pending order at the first of `ticks` (symbol: [(ts, price)...] in time
    order) of its symbol newer than the order; oldest orders first."""
    fills = []
    for order in sorted(book.pending.values(), key=lambda o: (o.placed_at, o.order_id)):
        tick = next((t for t in ticks.get(order.symbol, ()) if t[0] > order.placed_at), None)
        if tick is not None:
            book, filled = apply_fill(
                book, order, tick[1], tick[0], slippage_bps=slippage_bps, fee_bps=fee_bps
            )
            fills.append(filled)
    return book, fills


def on_ticks(
    book: Book,
    ticks: dict[str, list[tuple[float, float]]],
    *,
    session_start_hour: int,
    slippage_bps: float,
    fee_bps: float,
) -> tuple[Book, list[Fill]]:
    """`book` after a batch's `ticks` (symbol: [(ts, price)...] in time order): the session
    rolled to the batch's time, the pending orders they fill filled, the last prices marked."""
    latest = max((series[-1][0] for series in ticks.values() if series), default=None)
    if latest is None:
        return book, []
    book = roll(book, session_of(latest, session_start_hour))
    book, fills = fill_pending(book, ticks, slippage_bps=slippage_bps, fee_bps=fee_bps)
    book = mark(book, {s: (series[-1][1], series[-1][0]) for s, series in ticks.items() if series})
    return book, fills
