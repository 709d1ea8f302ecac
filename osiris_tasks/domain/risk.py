"""The hard risk gate: a pure function from a proposal and the book to a verdict.

Limits are inclusive: a value *at* the limit is rejected. Anything the gate cannot read as a
finite number is rejected, so no arithmetic surprise (NaN, inf, bool, huge ints) can let a
proposal through.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import asdict, dataclass
from types import MappingProxyType
from typing import Any

from osiris_tasks.domain.numbers import finite_number

__all__ = ["RISK_GATE_CONFIG", "RiskLimits", "Verdict", "assess"]

# The original orchestrator's limits: position notional < 1% of NAV, daily loss < 2% of NAV.
RISK_GATE_CONFIG: Mapping[str, float] = MappingProxyType(
    {"max_position_size_pct": 0.01, "max_daily_loss_pct": 0.02}
)
SIDES = frozenset({"LONG", "SHORT"})


@dataclass(frozen=True)
class RiskLimits:
    """The two fractions of NAV the gate enforces."""

    max_position_size_pct: float = RISK_GATE_CONFIG["max_position_size_pct"]
    max_daily_loss_pct: float = RISK_GATE_CONFIG["max_daily_loss_pct"]


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
    if proposal.get("side") not in SIDES:
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
) -> Verdict:
    """Decide whether `proposal` may trade against a book of `nav` and `daily_pnl`."""
    early = _shape_check(proposal, symbols) or _book_check(nav, daily_pnl, limits)
    if early:
        return early
    quantity = finite_number(proposal.get("quantity"))
    price = finite_number(proposal.get("price_estimate"))
    if quantity is None or quantity <= 0:
        return _reject("invalid_quantity", "quantity must be finite and positive")
    if price is None or price <= 0:
        return _reject("invalid_price", "price_estimate must be finite and positive")
    size_ratio = abs(quantity * price) / float(nav)
    if not size_ratio < limits.max_position_size_pct:
        return _reject(
            "position_size_limit",
            f"notional {size_ratio:.4%} of NAV is at or above the "
            f"{limits.max_position_size_pct:.2%} limit",
        )
    return Verdict(True, f"notional {size_ratio:.4%} of NAV within limits", "within_limits")
