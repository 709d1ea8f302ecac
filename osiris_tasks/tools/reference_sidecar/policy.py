"""The reference sidecar's deterministic trading policy and the answers made from it.

`propose` is the stand-in's proposal for a prompt; `_render_output` wraps it as a model's
fenced completion; `_assessment` and `_score` are its view of a proposal. Pure functions: no
HTTP, no state, the same answer for the same input.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any, NamedTuple

import orjson

from osiris_tasks.domain.numbers import finite_number, parse_finite

__all__ = ["propose"]

OUTPUT_PREFACE = "Here is the trade proposal from the deterministic reference policy."
STAND_IN_NOTE = "This is a fixed rule-based check by the reference stand-in, not a model's view."

# Policy constants. Volatility is floored so a flat series does not give an infinite signal.
MIN_VOL_PCT = 0.05
MAX_STRENGTH = 2.6
BASE_SIZE_FACTOR = 0.3
STRENGTH_SIZE_FACTOR = 0.5
MIN_STOP_PCT = 0.5
MIN_TARGET_PCT = 1.0
STOP_VOL_MULTIPLE = 2.0
TARGET_VOL_MULTIPLE = 3.0
BASE_CONFIDENCE = 0.5
CONFIDENCE_PER_STRENGTH = 0.15
MAX_CONFIDENCE = 0.95
# Assessment and score: stops wider than this look unreasonable; this reward/risk scores full.
MAX_REASONABLE_STOP_PCT = 10.0
FULL_SCORE_REWARD_RISK = 3.0
SCORE_CONFIDENCE_WEIGHT = 0.5
MAX_LABEL_CHARS = 32

PORTFOLIO_RE = re.compile(r"^[ \t]*PORTFOLIO\b(.*)$", re.MULTILINE)
MARKET_BLOCK_RE = re.compile(
    r"^[ \t]*MARKET[ \t]*$(.*?)(?:^[ \t]*END MARKET[ \t]*$|\Z)", re.MULTILINE | re.DOTALL
)
# A market line: the symbol quoted, as the prompt shows it (`"AAPL" n=10 last=..`); a bare
# word is never read as a symbol, so no symbol can pass for a section marker.
SYMBOL_LINE_RE = re.compile(r'^\s*"([A-Za-z0-9._-]{1,16})"\s+(\w+=.*)$')
FIELD_RE = re.compile(r"(\w+)=(\S+)")


class _Row(NamedTuple):
    symbol: str
    last: float | None
    ret_pct: float | None
    vol_pct: float | None

    @property
    def usable(self) -> bool:
        return None not in (self.last, self.ret_pct, self.vol_pct) and self.last > 0

    @property
    def strength(self) -> float:
        return abs(self.ret_pct) / max(self.vol_pct, MIN_VOL_PCT)


def _fields(text: str) -> dict[str, str]:
    return dict(FIELD_RE.findall(text))


def _parse_book(prompt: str) -> tuple[float, float] | None:
    """`(nav, max_position_pct)` from the PORTFOLIO line, or None if it is not usable."""
    match = PORTFOLIO_RE.search(prompt)
    found = _fields(match.group(1)) if match else {}
    nav = parse_finite(found.get("nav"))
    limit_pct = parse_finite(found.get("max_position_pct"))
    if nav is None or limit_pct is None or nav <= 0 or limit_pct < 0:
        return None
    return nav, limit_pct


def _parse_rows(prompt: str) -> list[_Row]:
    """One row per quoted-symbol line between MARKET and END MARKET, in prompt order."""
    block = MARKET_BLOCK_RE.search(prompt)
    rows = []
    for line in block.group(1).splitlines() if block else []:
        match = SYMBOL_LINE_RE.match(line)
        if match:
            found = _fields(match.group(2))
            rows.append(
                _Row(
                    match.group(1),
                    *(parse_finite(found.get(key)) for key in ("last", "ret_pct", "vol_pct")),
                )
            )
    return rows


def _pass(rows: list[_Row], rationale: str) -> dict[str, Any]:
    first = rows[0] if rows else None
    return {
        "action": "pass",
        "ticker": first.symbol if first else "UNKNOWN",
        "side": "LONG",
        "quantity": 0,
        "price_estimate": first.last if first and first.last and first.last > 0 else 1.0,
        "new_stop_pct": 0.0,
        "new_target_pct": 0.0,
        "confidence": 0.0,
        "rationale": rationale,
    }


def _adjust(row: _Row, quantity: int) -> dict[str, Any]:
    side = "LONG" if row.ret_pct >= 0 else "SHORT"
    return {
        "action": "adjust",
        "ticker": row.symbol,
        "side": side,
        "quantity": quantity,
        "price_estimate": row.last,
        "new_stop_pct": round(max(MIN_STOP_PCT, STOP_VOL_MULTIPLE * row.vol_pct), 4),
        "new_target_pct": round(max(MIN_TARGET_PCT, TARGET_VOL_MULTIPLE * row.vol_pct), 4),
        "confidence": round(
            min(MAX_CONFIDENCE, BASE_CONFIDENCE + CONFIDENCE_PER_STRENGTH * row.strength), 4
        ),
        "rationale": f"{row.symbol} returned {row.ret_pct:+.2f}% with {row.vol_pct:.2f}% "
        f"volatility, the strongest signal in the batch, so the rule goes {side}.",
    }


def propose(prompt: str) -> dict[str, Any]:
    """The stand-in's proposal for a prompt holding a PORTFOLIO line and a MARKET block of
    quoted-symbol lines (`"AAPL" n=.. last=.. ret_pct=.. vol_pct=..`, as `build_prompt` writes).

    Picks the symbol with the largest `|ret_pct| / max(vol_pct, 0.05)` (ties alphabetical) and
    sizes it at `max_position_pct * (0.3 + 0.5 * min(strength, 2.6))` of NAV, so weak signals
    stay under the risk limit and strong ones go over it. Without a usable book or market line
    the answer is a zero-size "pass".
    """
    rows = _parse_rows(prompt)
    candidates = [row for row in rows if row.usable]
    book = _parse_book(prompt)
    if book is None or not candidates:
        return _pass(rows, "no usable market summary")
    nav, limit_pct = book
    row = min(candidates, key=lambda r: (-r.strength, r.symbol))
    frac = (
        limit_pct
        / 100
        * (BASE_SIZE_FACTOR + STRENGTH_SIZE_FACTOR * min(row.strength, MAX_STRENGTH))
    )
    size = nav * frac / row.last
    if not math.isfinite(size):
        return _pass(rows, "position size out of range")
    return _adjust(row, max(1, math.floor(size)))


def _render_output(proposal: Mapping[str, Any]) -> str:
    body = orjson.dumps(proposal, option=orjson.OPT_INDENT_2).decode()
    return f"{OUTPUT_PREFACE}\n```json\n{body}\n```"


def _json_object(text: str) -> dict[str, Any] | None:
    try:
        parsed = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    return parsed if isinstance(parsed, dict) else None


def _label(value: Any, default: str) -> str:
    return default if value is None else str(value)[:MAX_LABEL_CHARS]


def _stop_target_sentence(stop: float | None, target: float | None) -> str:
    if stop is None or target is None or stop <= 0 or target <= 0:
        return "The stop and target are missing or not positive, so they do not look reasonable."
    if stop > MAX_REASONABLE_STOP_PCT:
        return (
            f"The stop at {stop:.2f}% is wider than {MAX_REASONABLE_STOP_PCT:.0f}%, "
            "which does not look reasonable."
        )
    if target < stop:
        return (
            f"The target at {target:.2f}% is below the stop at {stop:.2f}%, "
            "which does not look reasonable."
        )
    return (
        f"The stop at {stop:.2f}% and target at {target:.2f}% look reasonable "
        f"(reward/risk {target / stop:.2f})."
    )


def _assessment(proposal: Mapping[str, Any] | None) -> str:
    """Two or three sentences on a proposal: what it trades and whether stop/target fit."""
    if proposal is None:
        return f"The prompt is not a JSON proposal, so there is nothing to assess. {STAND_IN_NOTE}"
    side, quantity, ticker = (
        _label(proposal.get(key), "?") for key in ("side", "quantity", "ticker")
    )
    stop = finite_number(proposal.get("new_stop_pct"))
    target = finite_number(proposal.get("new_target_pct"))
    return (
        f"The proposal goes {side} {quantity} {ticker}. "
        f"{_stop_target_sentence(stop, target)} {STAND_IN_NOTE}"
    )


def _score(proposal: Mapping[str, Any]) -> float:
    """Half the clamped confidence plus half the reward/risk ratio relative to 3:1."""
    confidence = min(1.0, max(0.0, finite_number(proposal.get("confidence")) or 0.0))
    stop = finite_number(proposal.get("new_stop_pct")) or 0.0
    target = finite_number(proposal.get("new_target_pct")) or 0.0
    ratio = target / stop if stop > 0 and target > 0 else 0.0
    reward = min(1.0, ratio / FULL_SCORE_REWARD_RISK)
    return round(SCORE_CONFIDENCE_WEIGHT * confidence + (1 - SCORE_CONFIDENCE_WEIGHT) * reward, 4)
