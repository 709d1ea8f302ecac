"""How good a backtest was, from its equity curve and fills: pure functions, no I/O.

The equity curve is `[(timestamp, nav)...]` in time order (one point per run, after its
changes). Daily figures use the last NAV of each UTC day. Sharpe is the mean of the daily
returns over their sample standard deviation, times sqrt(252), with no risk-free rate; it is
None with fewer than two daily returns or none that differ.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = ["daily_navs", "drawdowns", "max_drawdown", "sharpe", "summarize"]

TRADING_DAYS = 252


def daily_navs(curve: Sequence[tuple[float, float]]) -> list[tuple[str, float]]:
    """The last NAV of each UTC day of `curve`, in order."""
    days: dict[str, float] = {}
    for ts, nav in curve:
        days[time.strftime("%Y-%m-%d", time.gmtime(ts))] = nav
    return list(days.items())


def drawdowns(navs: Iterable[float]) -> list[float]:
    """Each point's fall from the highest NAV before it, as a fraction (0 or negative)."""
    peak, out = -math.inf, []
    for nav in navs:
        peak = max(peak, nav)
        out.append(nav / peak - 1.0 if peak > 0 else 0.0)
    return out


def max_drawdown(navs: Iterable[float]) -> float:
    return min(drawdowns(navs), default=0.0)


def sharpe(daily: Sequence[float]) -> float | None:
    """Annualised Sharpe ratio of the daily NAVs `daily`."""
    returns = [b / a - 1.0 for a, b in zip(daily, daily[1:], strict=False) if a > 0]
    if len(returns) < 2:
        return None
    spread = statistics.stdev(returns)
    return None if spread == 0 else statistics.fmean(returns) / spread * math.sqrt(TRADING_DAYS)


def summarize(
    curve: Sequence[tuple[float, float]],
    fills: Sequence[Mapping[str, Any]],
    *,
    capital: float,
) -> dict[str, Any]:
    """Return, drawdown, Sharpe, trades, hit rate and turnover of a backtest."""
    navs = [nav for _, nav in curve] or [capital]
    daily = [nav for _, nav in daily_navs(curve)]
    closing = [f for f in fills if f.get("realised_pnl")]
    notional = sum(abs(f["quantity"] * f["price"]) for f in fills)
    return {
        "start_nav": capital,
        "end_nav": navs[-1],
        "total_return": navs[-1] / capital - 1.0,
        "max_drawdown": max_drawdown([capital, *navs]),
        "sharpe_daily": sharpe(daily),
        "days": len(daily),
        "trades": len(fills),
        "fees": sum(f["fee"] for f in fills),
        "realised_pnl": sum(f["realised_pnl"] for f in fills),
        "closing_trades": len(closing),
        "hit_rate": (
            sum(1 for f in closing if f["realised_pnl"] > 0) / len(closing) if closing else None
        ),
        "turnover": notional / statistics.fmean(navs),
    }
