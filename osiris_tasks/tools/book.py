"""`osiris book`, `osiris halt`, `osiris resume`: the paper book and the kill switch for people."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from osiris_tasks.adapters.events import EventBus
from osiris_tasks.adapters.portfolio import Portfolio
from osiris_tasks.domain.ids import new_run_id
from osiris_tasks.keys import RISK_HALTED_CHANNEL, RISK_RESUMED_CHANNEL

__all__ = ["book_view", "halt", "resume"]


def _money(value: float | None) -> str:
    return "-" if value is None else f"{value:,.2f}"


def book_view(summary: Mapping[str, Any], halted: Mapping[str, Any] | None) -> Group:
    """The paper book: NAV, P&L and the kill switch, then its positions."""
    lines = Text(
        f"NAV {_money(summary['nav'])}   daily P&L {_money(summary['daily_pnl'])}   "
        f"session {summary['session'] or '-'}\n"
        f"cash {_money(summary['cash'])}   realised {_money(summary['realised_pnl'])}   "
        f"unrealised {_money(summary['unrealised_pnl'])}   fees {_money(summary['fees'])}\n"
        f"fills {summary['fills']}   pending orders {summary['pending_orders']}   "
        + (f"HALTED by {halted['by']}: {halted['reason']}" if halted else "trading on")
    )
    return Group(lines, _positions(summary)) if summary["positions"] else Group(lines)


def _positions(summary: Mapping[str, Any]) -> Table:
    table = Table(title="positions")
    for column in ("symbol", "quantity", "avg price", "mark", "value", "unrealised"):
        table.add_column(column, justify="right" if column != "symbol" else "left")
    for symbol, position in summary["positions"].items():
        quantity, avg, mark = position["quantity"], position["avg_price"], position["mark"]
        table.add_row(
            symbol,
            f"{quantity:g}",
            _money(avg),
            _money(mark),
            _money(quantity * mark),
            _money(quantity * (mark - avg)),
        )
    return table


def halt(portfolio: Portfolio, bus: EventBus, reason: str) -> dict[str, Any] | None:
    """Throw the kill switch and say so on `risk.halted`; None if it was already thrown."""
    record = portfolio.halt(reason, by="operator")
    if record is not None:
        bus.publish_once(RISK_HALTED_CHANNEL, record, run_id=new_run_id().replace("run_", "halt_"))
    return record


def resume(portfolio: Portfolio, bus: EventBus) -> dict[str, Any] | None:
    """Release the kill switch and say so on `risk.resumed`; None if it was not thrown."""
    released = portfolio.resume()
    if released is not None:
        bus.publish_once(
            RISK_RESUMED_CHANNEL,
            {"released": released},
            run_id=new_run_id().replace("run_", "resume_"),
        )
    return released
