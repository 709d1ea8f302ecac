"""Validation of market ticks: what may enter a batch, and why anything else may not."""

from __future__ import annotations

import math
import re
import time
from collections.abc import Container, Mapping
from datetime import UTC, datetime
from typing import Annotated, Any

import msgspec
import orjson

from osiris_tasks.errors import TickRejected

__all__ = ["MAX_TICK_BYTES", "Tick", "parse_tick", "validate_tick"]

# A tick is a small JSON object; anything bigger is not a tick (and must not stall the bridge).
MAX_TICK_BYTES = 4096
# A tick with more keys than this is garbage, whatever the keys are.
MAX_TICK_KEYS = 32
SYMBOL_RE = re.compile(r"[A-Za-z0-9._-]{1,16}")
# Epoch values above this are taken as milliseconds.
EPOCH_MS_THRESHOLD = 1e11
# Timestamps outside [2000-01-01, 2100-01-01) are rejected as nonsense.
MIN_EPOCH_S, MAX_EPOCH_S = 946_684_800.0, 4_102_444_800.0
SAMPLE_CHARS = 80
OPTIONAL_PRICES = ("open", "high", "low")
# Symbols `_plain_tick` has seen pass SYMBOL_RE, up to this many (a feed has a few hundred).
MAX_PLAIN_SYMBOLS = 10_000
_plain_symbols: set[str] = set()
_INF = math.inf

Tick = dict[str, Any]


_Price = Annotated[float, msgspec.Meta(gt=0.0)]


class _FeedTick(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """A feed's plain tick as msgspec decodes and checks it in C, in one pass over the JSON
    (`_feed_tick`). JSON numbers only (ints become floats, as `_validate` makes them; a bool,
    a string or a number out of float range fails), every known key, no other key."""

    symbol: str
    close: _Price
    timestamp: Annotated[float, msgspec.Meta(ge=MIN_EPOCH_S, lt=MAX_EPOCH_S)]
    open: _Price | None = None
    high: _Price | None = None
    low: _Price | None = None
    volume: Annotated[float, msgspec.Meta(ge=0.0)] | None = None


_decode_feed_tick = msgspec.json.Decoder(_FeedTick).decode


def parse_tick(
    raw: bytes | str,
    *,
    default_symbol: str,
    now_s: float | None = None,
    symbols: Container[str] | None = None,
) -> Tick:
    """Decode a Pub/Sub payload and validate it; raise `TickRejected` with the reason. With
    `symbols` (`OSIRIS_SYMBOLS`), a tick of any other symbol is rejected."""
    if len(raw) > MAX_TICK_BYTES:
        raise TickRejected(
            f"message of {len(raw)} bytes exceeds {MAX_TICK_BYTES}", sample=_sample(raw)
        )
    if (tick := _feed_tick(raw)) is not None:
        return _allowed(tick, symbols)
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise TickRejected(f"not JSON: {exc}", sample=_sample(raw)) from exc
    return validate_tick(obj, default_symbol=default_symbol, now_s=now_s, symbols=symbols)


def validate_tick(
    obj: Any,
    *,
    default_symbol: str,
    now_s: float | None = None,
    symbols: Container[str] | None = None,
) -> Tick:
    """Return the tick's validated fields only; raise `TickRejected` with the reason. With
    `symbols` (`OSIRIS_SYMBOLS`), a tick of any other symbol is rejected."""
    if type(obj) is dict and (tick := _plain_tick(obj)) is not None:
        return _allowed(tick, symbols)
    return _allowed(_validate(obj, default_symbol, now_s), symbols)


def _allowed(tick: Tick, symbols: Container[str] | None) -> Tick:
    if symbols is not None and tick["symbol"] not in symbols:
        raise TickRejected(f"symbol {tick['symbol']!r} is not in OSIRIS_SYMBOLS")
    return tick


def _feed_tick(raw: bytes | str) -> Tick | None:
    """The bridge's hot path: a feed's plain tick (`_FeedTick`, epoch seconds), decoded and
    validated by msgspec, about half the CPU of orjson and the full validation (0.48x, the
    hotpaths benchmark) and 0.69x of orjson and `_plain_tick`. The same
    tick the full validation returns, keys in the same order; None for anything else (an
    unknown key, `price`, an ISO timestamp, a bad value, malformed JSON...), which the full
    path then accepts or rejects with its reason. Duplicate keys: the last wins, as in orjson;
    an invalid earlier copy sends the tick to the full path."""
    try:
        feed = _decode_feed_tick(raw)
    except (msgspec.MsgspecError, UnicodeEncodeError):  # text with a lone surrogate: not JSON
        return None
    if not _plain_symbol(feed.symbol):
        return None
    tick: Tick = {"symbol": feed.symbol, "close": feed.close, "timestamp": feed.timestamp}
    if feed.open is not None:
        tick["open"] = feed.open
    if (high := feed.high) is not None:
        tick["high"] = high
    if (low := feed.low) is not None:
        if high is not None and high < low:
            return None
        tick["low"] = low
    if feed.volume is not None:
        tick["volume"] = feed.volume
    return tick


def _plain_symbol(symbol: str) -> bool:
    """Whether `symbol` matches SYMBOL_RE; the answer for a symbol seen before, from a set."""
    if symbol in _plain_symbols:
        return True
    if not SYMBOL_RE.fullmatch(symbol):
        return False
    if len(_plain_symbols) < MAX_PLAIN_SYMBOLS:
        _plain_symbols.add(symbol)
    return True


def _plain_tick(obj: dict) -> Tick | None:
    """The common tick, validated in one pass on the bridge's hot path: a symbol, a `close`,
    an epoch-seconds `timestamp`, optional open/high/low/volume, every number a float (what a
    feed's JSON decodes to). The same tick `_validate` returns; None for anything else (ints,
    `price`, ISO timestamps, a bad value...), which `_validate` then accepts or rejects with
    its reason."""
    symbol, close, timestamp = obj.get("symbol"), obj.get("close"), obj.get("timestamp")
    if (
        type(symbol) is not str
        or type(close) is not float
        or type(timestamp) is not float
        or not 0.0 < close < _INF
        or not MIN_EPOCH_S <= timestamp < MAX_EPOCH_S
        or len(obj) > MAX_TICK_KEYS
    ):
        return None
    if not _plain_symbol(symbol):
        return None
    tick: Tick = {"symbol": symbol, "close": close, "timestamp": timestamp}
    for name in OPTIONAL_PRICES:
        if (value := obj.get(name)) is not None:
            if type(value) is not float or not 0.0 < value < _INF:
                return None
            tick[name] = value
    if (volume := obj.get("volume")) is not None:
        if type(volume) is not float or not 0.0 <= volume < _INF:
            return None
        tick["volume"] = volume
    if "high" in tick and "low" in tick and tick["high"] < tick["low"]:
        return None
    return tick


def _validate(obj: Any, default_symbol: str, now_s: float | None) -> Tick:
    if type(obj) is not dict and not isinstance(obj, Mapping):
        raise TickRejected(f"tick must be a JSON object, got {type(obj).__name__}")
    if len(obj) > MAX_TICK_KEYS:
        raise TickRejected(f"tick has {len(obj)} keys (max {MAX_TICK_KEYS})")
    close = "close" if "close" in obj else "price"
    tick: Tick = {
        "symbol": _symbol(obj.get("symbol"), default_symbol),
        "close": _price(obj.get(close), close),
        "timestamp": _timestamp(obj.get("timestamp"), now_s),
    }
    for name in OPTIONAL_PRICES:
        if (value := obj.get(name)) is not None:
            tick[name] = _price(value, name)
    if (volume := obj.get("volume")) is not None:
        tick["volume"] = _finite(volume, "volume")
        if tick["volume"] < 0:
            raise TickRejected("volume must not be negative")
    if "high" in tick and "low" in tick and tick["high"] < tick["low"]:
        raise TickRejected("high is below low")
    return tick


def _sample(raw: bytes | str) -> str:
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    return text[:SAMPLE_CHARS].encode("unicode_escape").decode("ascii")


def _finite(value: Any, name: str) -> float:
    if type(value) is float:  # the common case, on the bridge's hot path
        if value - value == 0.0:  # false for inf and nan
            return value
        raise TickRejected(f"{name} must be finite")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TickRejected(f"{name} must be a number, got {type(value).__name__}")
    try:
        number = float(value)
    except OverflowError as exc:
        raise TickRejected(f"{name} is out of range") from exc
    if not math.isfinite(number):
        raise TickRejected(f"{name} must be finite")
    return number


def _price(value: Any, name: str) -> float:
    if value is None:
        raise TickRejected(
            "missing close (or price)" if name in ("close", "price") else f"missing {name}"
        )
    price = _finite(value, name)
    if price <= 0:
        raise TickRejected(f"{name} must be positive")
    return price


def _symbol(value: Any, default_symbol: str) -> str:
    if value is None:
        return default_symbol
    if not isinstance(value, str) or not SYMBOL_RE.fullmatch(value):
        raise TickRejected("symbol must be 1-16 letters, digits, '.', '-' or '_'")
    return value


def _timestamp(value: Any, now_s: float | None) -> float:
    if value is None:
        return time.time() if now_s is None else now_s
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.strip())
        except ValueError as exc:
            raise TickRejected("timestamp is neither ISO 8601 nor epoch") from exc
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        epoch = parsed.timestamp()
    else:
        epoch = _finite(value, "timestamp")
        if epoch > EPOCH_MS_THRESHOLD:
            epoch /= 1000.0
    if not MIN_EPOCH_S <= epoch < MAX_EPOCH_S:
        raise TickRejected("timestamp is outside 2000..2100")
    return epoch
