"""The hard risk gate: a pure function from a proposal and the book to a verdict.

Limits are inclusive: a value *at* the limit is rejected. Anything the gate cannot read as a
finite number is rejected, so no arithmetic surprise (NaN, inf, bool, huge ints) can let a
proposal through. The rules, in the order they are checked (each verdict names its `rule`):

`halted` (the kill switch: before anything else), the proposal's shape (`no_proposal`,
`action_not_adjust`, `unknown_ticker`, `invalid_side`, `invalid_confidence`), the book
(`invalid_nav`, `invalid_daily_pnl`, `daily_loss_limit`), the order (`invalid_quantity`,
`invalid_price`, `position_size_limit`: the order's notional), then against the positions the
book holds: `symbol_position_limit` (the symbol's position after the fill), `gross_exposure_limit`
(every position's absolute value after the fill), `order_rate_limit` (orders in the last
minute). A pass is `within_limits`.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import asdict, dataclass, field
from types import MappingProxyType
from typing import Any

from osiris_tasks.domain.numbers import finite_number

__all__ = ["RISK_GATE_CONFIG", "Holdings", "RiskLimits", "Verdict", "assess"]

# The original orchestrator's limits: position notional < 1% of NAV, daily loss < 2% of NAV.
RISK_GATE_CONFIG: Mapping[str, float] = MappingProxyType(
    {"max_position_size_pct": 0.01, "max_daily_loss_pct": 0.02}
)
SIDES = frozenset({"LONG", "SHORT"})


DEFAULT_MAX_SYMBOL_POSITION_PCT = 0.05
DEFAULT_MAX_GROSS_EXPOSURE_PCT = 1.0
DEFAULT_MAX_ORDERS_PER_MINUTE = 30


@dataclass(frozen=True)
class RiskLimits:
    """The limits the gate enforces: fractions of NAV, and orders per minute."""

    max_position_size_pct: float = RISK_GATE_CONFIG["max_position_size_pct"]
    max_daily_loss_pct: float = RISK_GATE_CONFIG["max_daily_loss_pct"]
    max_symbol_position_pct: float = DEFAULT_MAX_SYMBOL_POSITION_PCT
    max_gross_exposure_pct: float = DEFAULT_MAX_GROSS_EXPOSURE_PCT
    max_orders_per_minute: int = DEFAULT_MAX_ORDERS_PER_MINUTE


@dataclass(frozen=True)
class Holdings:
    """What the book holds, for the limits after a fill: signed quantities and their prices
    per symbol, and the orders placed in the last minute. Empty for a book that reports only
    NAV and P&L (external, static)."""

    positions: Mapping[str, float] = field(default_factory=dict)
    prices: Mapping[str, float] = field(default_factory=dict)
    orders_last_minute: int = 0


@dataclass(frozen=True)
class Verdict:
    """The gate's decision; `rule` is a machine-readable id of the rule that decided."""

    accepted: bool
    reason: str
    rule: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _reject(rule: str, reason: str) -> Verdict:
    return Verdict(False, reason, rule)


def _book_check(nav: Any, daily_pnl: Any, limits: RiskLimits) -> Verdict | None:
    nav_f, pnl_f = finite_number(nav), finite_number(daily_pnl)
    if nav_f is None or nav_f <= 0:
        return _reject("invalid_nav", f"NAV must be finite and positive, got {nav!r}")
    if pnl_f is None:
        return _reject("invalid_daily_pnl", f"daily P&L must be finite, got {daily_pnl!r}")
    loss_ratio = pnl_f / nav_f
    if not loss_ratio > -limits.max_daily_loss_pct:
        return _reject(
            "daily_loss_limit",
            f"daily P&L {loss_ratio:.4%} of NAV is at or beyond the "
            f"-{limits.max_daily_loss_pct:.2%} limit",
        )
    return None


def _shape_check(proposal: Any, symbols: Collection[str]) -> Verdict | None:
    if not isinstance(proposal, Mapping) or not proposal:
        return _reject("no_proposal", "no valid proposal to assess")
    if proposal.get("action") != "adjust":
        return _reject("action_not_adjust", f"action is {proposal.get('action')!r}, not 'adjust'")
    ticker = proposal.get("ticker")
    if not isinstance(ticker, str) or ticker not in symbols:
        return _reject("unknown_ticker", f"ticker {ticker!r} is not in this batch")
    side = proposal.get("side")
    if not isinstance(side, str) or side not in SIDES:
        return _reject("invalid_side", f"side must be LONG or SHORT, got {proposal.get('side')!r}")
    confidence = finite_number(proposal.get("confidence"))
    if confidence is None or not 0 <= confidence <= 1:
        return _reject("invalid_confidence", "confidence must be a number in [0, 1]")
    return None


def assess(
    proposal: Any,
    *,
    nav: Any,
    daily_pnl: Any,
    symbols: Collection[str],
    limits: RiskLimits = RiskLimits(),
    holdings: Holdings = Holdings(),
    halted: str | None = None,
) -> Verdict:
    """Decide whether `proposal` may trade against a book of `nav` and `daily_pnl` holding
    `holdings`; `halted` (the kill switch's reason) rejects everything."""
    if halted is not None:
        return _reject("halted", f"trading halted: {halted}")
    early = _shape_check(proposal, symbols) or _book_check(nav, daily_pnl, limits)
    if early:
        return early
    quantity = finite_number(proposal.get("quantity"))
    price = finite_number(proposal.get("price_estimate"))
    if quantity is None or quantity <= 0:
        return _reject("invalid_quantity", "quantity must be finite and positive")
    if price is None or price <= 0:
        return _reject("invalid_price", "price_estimate must be finite and positive")
    nav_f = float(nav)
    size_ratio = abs(quantity * price) / nav_f
    if not size_ratio < limits.max_position_size_pct:
        return _reject(
            "position_size_limit",
            f"notional {size_ratio:.4%} of NAV is at or above the "
            f"{limits.max_position_size_pct:.2%} limit",
        )
    return _holdings_check(proposal, quantity, price, nav_f, limits, holdings) or Verdict(
        True, f"notional {size_ratio:.4%} of NAV within limits", "within_limits"
    )


def _holdings_check(
    proposal: Mapping[str, Any],
    quantity: float,
    price: float,
    nav: float,
    limits: RiskLimits,
    holdings: Holdings,
) -> Verdict | None:
    ticker = proposal["ticker"]
    held = finite_number(holdings.positions.get(ticker, 0.0))
    if held is None:
        return _reject("invalid_position", f"the book's position in {ticker} is not a number")
    after = held + (quantity if proposal["side"] == "LONG" else -quantity)
    symbol_ratio = abs(after * price) / nav
    if not symbol_ratio < limits.max_symbol_position_pct:
        return _reject(
            "symbol_position_limit",
            f"{ticker} position after the fill {symbol_ratio:.4%} of NAV is at or above the "
            f"{limits.max_symbol_position_pct:.2%} limit",
        )
    others = 0.0
    for symbol, position in holdings.positions.items():
        if symbol == ticker:
            continue
        held_q, mark = finite_number(position), finite_number(holdings.prices.get(symbol))
        if held_q is None or mark is None:
            return _reject("invalid_position", f"the book's position in {symbol} has no price")
        others += abs(held_q * mark)
    gross_ratio = (others + abs(after * price)) / nav
    if not gross_ratio < limits.max_gross_exposure_pct:
        return _reject(
            "gross_exposure_limit",
            f"gross exposure after the fill {gross_ratio:.4%} of NAV is at or above the "
            f"{limits.max_gross_exposure_pct:.2%} limit",
        )
    if not holdings.orders_last_minute < limits.max_orders_per_minute:
        return _reject(
            "order_rate_limit",
            f"{holdings.orders_last_minute} orders in the last minute: at the limit of "
            f"{limits.max_orders_per_minute}",
        )
    return None
