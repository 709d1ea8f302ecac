"""Per-symbol summary of a tick batch, as data for the state and compact text for the prompt."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from typing import Any

from osiris_tasks.domain.ticks import Tick

__all__ = ["summarize", "summary_text"]


def _log_returns(closes: list[float]) -> list[float]:
    return [math.log(b / a) for a, b in zip(closes, closes[1:], strict=False)]


def _stdev(values: list[float]) -> float:
    if len(values) < 2:
        return 0.0
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def _vwap(ticks: list[Tick]) -> float | None:
    volume = sum(t.get("volume", 0.0) for t in ticks)
    if not all("volume" in t for t in ticks) or volume <= 0:
        return None
    return sum(t["close"] * t["volume"] for t in ticks) / volume


def _symbol_summary(ticks: list[Tick]) -> dict[str, Any]:
    ticks = sorted(ticks, key=lambda t: t["timestamp"])
    closes = [t["close"] for t in ticks]
    highs = [t.get("high", t["close"]) for t in ticks]
    lows = [t.get("low", t["close"]) for t in ticks]
    return {
        "ticks": len(ticks),
        "first": closes[0],
        "last": closes[-1],
        "high": max(highs),
        "low": min(lows),
        "vwap": _vwap(ticks),
        "return_pct": (closes[-1] / closes[0] - 1.0) * 100.0,
        "volatility_pct": _stdev(_log_returns(closes)) * 100.0,
        "start_ts": ticks[0]["timestamp"],
        "end_ts": ticks[-1]["timestamp"],
        "span_s": ticks[-1]["timestamp"] - ticks[0]["timestamp"],
    }


def summarize(ticks: Iterable[Tick]) -> dict[str, dict[str, Any]]:
    """Summary per symbol (sorted by symbol) of already-validated ticks."""
    by_symbol: dict[str, list[Tick]] = {}
    for tick in ticks:
        by_symbol.setdefault(tick["symbol"], []).append(tick)
    return {symbol: _symbol_summary(by_symbol[symbol]) for symbol in sorted(by_symbol)}


def summary_text(summary: Mapping[str, Mapping[str, Any]]) -> str:
    """One line per symbol: `"SYM" n=.. first=.. last=.. high=.. low=.. vwap=.. ret_pct=..
    vol_pct=.. span_s=..`. Only validated numbers and symbols appear; the symbol is quoted (a
    JSON string), so a symbol named like a word of a prompt reads as data."""
    lines = []
    for symbol, s in summary.items():
        vwap = "na" if s["vwap"] is None else f"{s['vwap']:.4f}"
        lines.append(
            f"{json.dumps(symbol)} n={s['ticks']} first={s['first']:.4f} last={s['last']:.4f} "
            f"high={s['high']:.4f} low={s['low']:.4f} vwap={vwap} "
            f"ret_pct={s['return_pct']:+.4f} vol_pct={s['volatility_pct']:.4f} "
            f"span_s={s['span_s']:.1f}"
        )
    return "\n".join(lines)
