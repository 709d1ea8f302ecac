"""The book the risk gate decides against, and the kill switch (`OSIRIS_BOOK`).

* `paper`: this package's paper book (`domain/book.py`), one JSON value in Redis (`BOOK_KEY`).
  Every change is one optimistic transaction (WATCH / MULTI / EXEC, retried on a conflict), so
  concurrent workers never lose an update: a batch's ticks (session roll, pending orders
  filled, marks) in `on_ticks`; the gate's decision and the order it accepts in `decide`,
  against the book as it is at that instant — two runs deciding at once cannot both pass a limit
  that only one of them fits. Each change is applied **once per run**: its result is kept under
  the run's marker (`BOOK_ORDER_PREFIX` / `BOOK_TICKS_PREFIX` + run_id, a week) in the same
  transaction, and a redelivered task finds it and gets the first result back (the same
  decision, the same fills, so they are still recorded) instead of a second order or fill. Each
  transaction also writes `NAV_KEY` and `DAILY_PNL_KEY`, so whatever reads those sees the book.
* `external`: NAV and daily P&L from the two keys, written by a book outside this package; a
  missing key is no book (the gate rejects: fail closed).
* `static`: the keys if set, else `OSIRIS_NAV` / `OSIRIS_DAILY_PNL` (the original behaviour).

The kill switch (`HALT_KEY`, no expiry, so it survives restarts of every process) works with
every book: `halt` / `resume`, and, automatically, a daily loss at or beyond the limit (a paper
book's update that breaches it, or any book's `daily_loss_limit` rejection). A loss halt lasts
until `resume` or the next session. Read in the same round trip as the book.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
import redis

from osiris_tasks.domain import book as paper
from osiris_tasks.domain.book import Book, Order
from osiris_tasks.domain.ids import utc_iso
from osiris_tasks.domain.numbers import parse_finite
from osiris_tasks.domain.risk import Verdict
from osiris_tasks.errors import BookError
from osiris_tasks.keys import BOOK_KEY, BOOK_ORDER_PREFIX, BOOK_TICKS_PREFIX, HALT_KEY, NAV_KEY
from osiris_tasks.keys import DAILY_PNL_KEY as PNL_KEY

__all__ = ["NAV_KEY", "PNL_KEY", "BookConfig", "Decision", "Portfolio"]

logger = logging.getLogger(__name__)

# A run's markers (its order taken, its ticks applied) outlive any redelivery of its tasks.
MARKER_TTL_S = 7 * 86_400
LOSS_HALT = "daily_loss"


@dataclass(frozen=True)
class BookConfig:
    """How the paper book fills and when its sessions start."""

    fill_at: str = paper.FILL_AT[0]
    slippage_bps: float = 5.0
    fee_bps: float = 1.0
    session_start_hour: int = 0
    max_daily_loss_pct: float = 0.02


@dataclass(frozen=True)
class Decision:
    """The gate's verdict with the book it saw and what it changed."""

    verdict: Verdict
    book: dict[str, Any]  # the snapshot decided against
    fills: list[dict[str, Any]]
    after: dict[str, Any] | None  # the paper book's summary after the change, if any
    halted: dict[str, Any] | None  # a halt this decision threw


class Portfolio:
    """Reads the book and the kill switch; with `mode="paper"`, keeps the paper book."""

    def __init__(
        self,
        client: redis.Redis | None,
        *,
        default_nav: float,
        default_daily_pnl: float,
        mode: str = "static",
        config: BookConfig = BookConfig(),
        clock: Callable[[], float] = time.time,
    ):
        if mode not in paper.BOOK_MODES:
            raise ValueError(f"book mode must be one of {paper.BOOK_MODES}, not {mode!r}")
        if mode != "static" and client is None:
            raise ValueError(f"book mode {mode!r} needs Redis")
        self._redis = client
        self._defaults = (default_nav, default_daily_pnl)
        self.mode = mode
        self._config = config
        self._clock = clock

    # -- reads ----------------------------------------------------------------------------

    def snapshot(self, run_id: str | None = None) -> dict[str, Any]:
        """`{"nav", "daily_pnl", "source", "halted", ...}` as of now; a value it cannot read
        is None, which the gate rejects. The paper book adds its holdings."""
        nav, pnl = self._defaults
        if self._redis is None:
            return {"nav": nav, "daily_pnl": pnl, "source": "settings", "halted": None}
        try:
            raw_nav, raw_pnl, raw_halt, raw_book = self._redis.mget(
                NAV_KEY, PNL_KEY, HALT_KEY, BOOK_KEY
            )
        except redis.RedisError as exc:
            logger.error("run_id=%s portfolio unreadable from Redis: %s", run_id, exc)
            return {"nav": None, "daily_pnl": None, "source": "unavailable", "halted": None}
        if self.mode == "paper":
            book = self._book(raw_book)
            return self._paper_view(book, _halt(raw_halt, book.session))
        if self.mode == "external":
            nav, pnl, source = None, None, "external"
        else:
            source = "redis" if raw_nav is not None or raw_pnl is not None else "settings"
        return {
            "nav": nav if raw_nav is None else parse_finite(raw_nav),
            "daily_pnl": pnl if raw_pnl is None else parse_finite(raw_pnl),
            "source": source,
            "halted": _halt(raw_halt, paper.session_of(self._clock())),
        }

    def book(self) -> Book:
        """The paper book as Redis holds it (a new one of OSIRIS_NAV if none yet)."""
        return self._book(self._get(BOOK_KEY))

    def summary(self) -> dict[str, Any]:
        """The paper book for people: NAV, P&L, cash, positions with their marks."""
        return summarize(self.book())

    def halted(self) -> dict[str, Any] | None:
        """The kill switch's state: None, or `{reason, by, at, session}`."""
        raw = self._get(HALT_KEY)
        session = self.book().session if self.mode == "paper" else None
        return _halt(raw, session or paper.session_of(self._clock()))

    # -- the kill switch ------------------------------------------------------------------

    def halt(self, reason: str, *, by: str = "operator") -> dict[str, Any] | None:
        """Throw the kill switch; the halt, or None if it was already thrown (a loss halt of
        an earlier session no longer counts)."""
        session = self.book().session if self.mode == "paper" else None
        record = self._halt_record(reason, by, session or paper.session_of(self._clock()))

        def transaction(pipe: redis.client.Pipeline) -> bool:
            if _halt(pipe.get(HALT_KEY), record["session"]) is not None:
                return False
            pipe.multi()
            pipe.set(HALT_KEY, orjson.dumps(record))
            return True

        try:
            done = self._redis.transaction(transaction, HALT_KEY, value_from_callable=True)
        except redis.RedisError as exc:
            raise BookError(f"cannot set the kill switch: {exc}") from exc
        if done:
            logger.warning("trading halted by %s: %s", by, reason)
        return record if done else None

    def resume(self) -> dict[str, Any] | None:
        """Release the kill switch; the halt it released, or None if there was none."""
        try:
            with self._redis.pipeline() as pipe:
                raw, _ = pipe.get(HALT_KEY).delete(HALT_KEY).execute()
        except redis.RedisError as exc:
            raise BookError(f"cannot release the kill switch: {exc}") from exc
        if raw is None:
            return None
        logger.warning("trading resumed")
        return orjson.loads(raw)

    # -- the paper book's changes ---------------------------------------------------------

    def on_ticks(
        self, run_id: str, ticks: dict[str, list[tuple[float, float]]]
    ) -> tuple[list[dict], dict | None, dict | None]:
        """A batch's ticks (symbol: [(ts, price)...] in time order) applied to the paper book,
        once per run: `(fills, summary after, a halt it threw)`; nothing for the other books.
        A redelivery gets the first application's fills back, so they are still recorded."""
        if self.mode != "paper" or not ticks:
            return [], None, None

        def change(book: Book, _halt: dict | None) -> tuple[Book, dict]:
            after, fills = paper.on_ticks(
                book,
                ticks,
                session_start_hour=self._config.session_start_hour,
                slippage_bps=self._config.slippage_bps,
                fee_bps=self._config.fee_bps,
            )
            return after, {"fills": [f.as_dict() for f in fills]}

        done, after, halted = self._transact(run_id, change, BOOK_TICKS_PREFIX + run_id)
        return done["fills"], summarize(after), halted

    def decide(
        self, run_id: str, decide: Callable[[dict[str, Any]], Verdict], order: Order | None
    ) -> Decision:
        """The gate's `decide(snapshot)`, and with the paper book the accepted `order` taken
        in the same transaction, once per run: a redelivery gets the first decision back."""
        if self.mode != "paper":
            snapshot = self.snapshot(run_id)
            verdict = decide(snapshot)
            return Decision(verdict, snapshot, [], None, self._loss_halt(verdict))

        def change(book: Book, halt: dict | None) -> tuple[Book, dict]:
            snapshot = self._paper_view(book, halt)
            verdict = decide(snapshot)
            done = {"verdict": verdict.as_dict(), "book": snapshot, "fills": []}
            if not verdict.accepted or order is None:
                return book, done
            book = paper.place(book, order)
            if self._config.fill_at == "batch_close":
                book, filled = paper.apply_fill(
                    book,
                    order,
                    order.reference_price,
                    order.placed_at,
                    slippage_bps=self._config.slippage_bps,
                    fee_bps=self._config.fee_bps,
                )
                done["fills"] = [filled.as_dict()]
            return book, done

        done, after, halted = self._transact(run_id, change, BOOK_ORDER_PREFIX + run_id)
        verdict = Verdict(**done["verdict"])
        changed = done.get("changed", False)
        return Decision(
            verdict,
            done["book"],
            done["fills"],
            summarize(after) if changed else None,
            halted or self._loss_halt(verdict),
        )

    def reset(self, capital: float | None = None) -> Book:
        """Start the paper book again with `capital` (default OSIRIS_NAV) in cash."""
        book = paper.new_book(capital or self._defaults[0])
        try:
            with self._redis.pipeline() as pipe:
                pipe.set(BOOK_KEY, orjson.dumps(book.as_json()))
                pipe.set(NAV_KEY, repr(paper.nav(book))).set(PNL_KEY, "0.0").execute()
        except redis.RedisError as exc:
            raise BookError(f"cannot reset the book: {exc}") from exc
        return book

    # -- plumbing -------------------------------------------------------------------------

    def _transact(
        self, run_id: str, change: Callable[[Book, dict | None], tuple[Book, dict]], marker: str
    ) -> tuple[dict, Book, dict | None]:
        """`change(book, the kill switch in force)` applied to the paper book atomically and
        once for `marker`: `(its result, the book after, a loss halt it threw)`. A result that
        changed the book is kept under `marker` in the same transaction; while it is there,
        `change` is not applied again and the kept result (with `changed` false) comes back."""
        out: dict[str, Any] = {}

        def transaction(pipe: redis.client.Pipeline) -> None:
            raw, halt_raw, taken = pipe.mget(BOOK_KEY, HALT_KEY, marker)
            before = self._book(raw)
            if taken is not None:
                pipe.multi()
                out.update(result=orjson.loads(taken), after=before, loss=None)
                return
            in_force = _halt(halt_raw, before.session)
            after, result = change(before, in_force)
            in_force = _halt(halt_raw, after.session)  # a new session lifts a loss halt
            loss = self._loss(after) if in_force is None else None
            pipe.multi()
            if halt_raw is not None and in_force is None:  # a loss halt of an earlier session
                pipe.delete(HALT_KEY)
            if after is not before:
                pipe.set(BOOK_KEY, orjson.dumps(after.as_json()))
                pipe.set(NAV_KEY, repr(paper.nav(after)))
                pipe.set(PNL_KEY, repr(paper.daily_pnl(after)))
                pipe.set(marker, orjson.dumps(result), ex=MARKER_TTL_S)
            if loss is not None:
                pipe.set(HALT_KEY, orjson.dumps(loss))
            out.update(result={**result, "changed": after is not before}, after=after, loss=loss)

        try:
            self._redis.transaction(transaction, BOOK_KEY, HALT_KEY, marker)
        except redis.RedisError as exc:
            raise BookError(f"cannot update the book: {exc}", run_id=run_id) from exc
        if out["result"].get("changed") is None:
            logger.info("run_id=%s already applied to the book: the first result stands", run_id)
        if out["loss"] is not None:
            logger.warning("run_id=%s trading halted: %s", run_id, out["loss"]["reason"])
        return out["result"], out["after"], out["loss"]

    def _loss(self, book: Book) -> dict[str, Any] | None:
        """A loss halt if `book`'s daily P&L is at or beyond the limit."""
        nav = paper.nav(book)
        if nav > 0 and paper.daily_pnl(book) / nav > -self._config.max_daily_loss_pct:
            return None
        return self._halt_record(
            f"daily P&L {paper.daily_pnl(book):.2f} is at or beyond the "
            f"-{self._config.max_daily_loss_pct:.2%} limit of NAV {nav:.2f}",
            LOSS_HALT,
            book.session,
        )

    def _loss_halt(self, verdict: Verdict) -> dict[str, Any] | None:
        """Any book: a `daily_loss_limit` rejection throws the kill switch."""
        if verdict.rule != "daily_loss_limit" or self._redis is None:
            return None
        return self.halt(verdict.reason, by=LOSS_HALT)

    def _halt_record(self, reason: str, by: str, session: str | None) -> dict[str, Any]:
        return {"reason": reason, "by": by, "at": utc_iso(self._clock()), "session": session}

    def _paper_view(self, book: Book, halted: dict | None) -> dict[str, Any]:
        now = max((ts for _, ts in book.marks.values()), default=self._clock())
        return {
            "nav": paper.nav(book),
            "daily_pnl": paper.daily_pnl(book),
            "source": "paper",
            "halted": halted,
            "holdings": {
                "positions": {s: p.quantity for s, p in book.positions.items()},
                "prices": {s: m[0] for s, m in book.marks.items()},
                "orders_last_minute": paper.orders_in_last_minute(book, now),
            },
        }

    def _book(self, raw: bytes | None) -> Book:
        if raw is None:
            return paper.new_book(self._defaults[0])
        return Book.from_json(orjson.loads(raw))

    def _get(self, key: str) -> bytes | None:
        try:
            return self._redis.get(key)
        except redis.RedisError as exc:
            raise BookError(f"cannot read {key}: {exc}") from exc


def _halt(raw: bytes | None, session: str | None) -> dict[str, Any] | None:
    """The kill switch's record, unless it is a loss halt of an earlier session."""
    if raw is None:
        return None
    record = orjson.loads(raw)
    if record.get("by") == LOSS_HALT and session is not None and record.get("session") != session:
        return None
    return record


def summarize(book: Book) -> dict[str, Any]:
    """The paper book for events and people."""
    return {
        "nav": paper.nav(book),
        "daily_pnl": paper.daily_pnl(book),
        "cash": book.cash,
        "capital": book.capital,
        "realised_pnl": book.realised_pnl,
        "unrealised_pnl": paper.unrealised_pnl(book),
        "fees": book.fees,
        "gross_exposure": paper.gross_exposure(book),
        "session": book.session,
        "fills": book.fills,
        "pending_orders": len(book.pending),
        "positions": {
            symbol: {
                "quantity": position.quantity,
                "avg_price": position.avg_price,
                "mark": book.marks.get(symbol, (position.avg_price, None))[0],
            }
            for symbol, position in sorted(book.positions.items())
        },
    }
