"""The tick simulator behind `osiris sim`: synthetic or replayed ticks, published at a pace.

Synthetic ticks follow a geometric Brownian motion per symbol and carry the wall-clock time at
which they are generated (just before they are published), so the bridge sees live data.
Replayed ticks keep the timestamp of their file (or get "now" when it has none).
"""

from __future__ import annotations

import csv
import logging
import math
import random
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
import redis
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from osiris_tasks.errors import ConfigError, EventError

__all__ = ["progress_line", "publish", "replay_ticks", "synthetic_ticks"]

logger = logging.getLogger(__name__)

DEFAULT_START_PRICE = 100.0
# Mean and spread (log-normal) of a synthetic tick's volume.
MEAN_LOG_VOLUME, SIGMA_LOG_VOLUME = math.log(1_000.0), 0.5
# CSV columns (compared case-insensitively) that become tick fields; the first present wins.
TIMESTAMP_COLUMNS = ("timestamp", "date", "datetime")
NUMERIC_COLUMNS = ("open", "high", "low", "close", "volume")
JSONL_SUFFIXES = (".jsonl", ".ndjson")
SNIFF_BYTES = 4096
# Publishing pipelines the PUBLISHes of this much pacing time in one round trip...
PUBLISH_WINDOW_S = 0.01
# ...but never more than this many per round trip (also the group size when unpaced).
MAX_PUBLISH_GROUP = 500
# `osiris sim`'s progress line is redrawn at most this often.
PROGRESS_REFRESH_PER_S = 4


def synthetic_ticks(
    symbols: Sequence[str],
    *,
    seed: int,
    start_prices: dict[str, float] | None = None,
    dt_s: float = 1.0,
    drift: float = 0.0,
    volatility: float = 0.02,
    clock: Callable[[], float] = time.time,
) -> Iterator[dict[str, Any]]:
    """Endless ticks, round-robin over `symbols`, each symbol's close a GBM step from its last.

    `drift` and `volatility` are per second of model time; each step is `dt_s` seconds of it:
    `close = open * exp((drift - volatility**2 / 2) * dt_s + volatility * sqrt(dt_s) * Z)`.
    The same `seed` gives the same prices and volumes; `timestamp` is `clock()` at yield.
    """
    if not symbols:
        raise ConfigError("synthetic_ticks needs at least one symbol")
    rng = random.Random(seed)
    prices = {s: float((start_prices or {}).get(s, DEFAULT_START_PRICE)) for s in symbols}
    mu_dt, sigma_sqrt_dt = (drift - volatility**2 / 2) * dt_s, volatility * math.sqrt(dt_s)
    while True:
        for symbol in symbols:
            open_ = prices[symbol]
            close = open_ * math.exp(mu_dt + sigma_sqrt_dt * rng.gauss(0.0, 1.0))
            prices[symbol] = close
            volume = round(rng.lognormvariate(MEAN_LOG_VOLUME, SIGMA_LOG_VOLUME))
            yield {
                "symbol": symbol,
                "open": open_,
                "high": max(open_, close),
                "low": min(open_, close),
                "close": close,
                "volume": float(volume),
                "timestamp": clock(),
            }


def replay_ticks(
    path: str | Path,
    *,
    default_symbol: str | None = None,
) -> Iterator[dict[str, Any]]:
    """Ticks from a CSV file (header row, OHLCV columns) or a JSONL file (one tick per line).

    `.jsonl` and `.ndjson` files are JSONL, and so is any file that starts with `{`; anything
    else is CSV. CSV column names are
    case-insensitive: `timestamp` (or `date`, `datetime`), `open`, `high`, `low`, `close`,
    `volume`, optional `symbol`; other columns are ignored, empty cells left out, numbers
    converted (anything unparsable is kept as text, for the bridge to reject). A tick without
    a symbol gets `default_symbol` when given; one without a timestamp gets the time of reading.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"replay file {path} does not exist")
    return _completed(_jsonl_rows(path) if _is_jsonl(path) else _csv_rows(path), default_symbol)


def _completed(rows: Iterator[dict[str, Any]], default_symbol: str | None) -> Iterator[dict]:
    for tick in rows:
        if default_symbol is not None and not tick.get("symbol"):
            tick["symbol"] = default_symbol
        if tick.get("timestamp") in (None, ""):
            tick["timestamp"] = time.time()
        yield tick


def _is_jsonl(path: Path) -> bool:
    """By suffix; for any other name, by whether the first non-blank character is `{`."""
    if path.suffix.lower() in JSONL_SUFFIXES:
        return True
    with path.open("rb") as data:
        return data.read(SNIFF_BYTES).lstrip().startswith(b"{")


def _jsonl_rows(path: Path) -> Iterator[dict[str, Any]]:
    with path.open("rb") as lines:
        for lineno, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                tick = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                raise ConfigError(f"{path}:{lineno}: not JSON: {exc}") from exc
            if not isinstance(tick, dict):
                raise ConfigError(f"{path}:{lineno}: a tick must be a JSON object")
            yield tick


def _csv_rows(path: Path) -> Iterator[dict[str, Any]]:
    with path.open(newline="", encoding="utf-8-sig") as text:
        reader = csv.reader(text)
        header = [name.strip().lower() for name in next(reader, [])]
        columns = _csv_columns(header, path)
        for row in reader:
            if any(cell.strip() for cell in row):
                yield {
                    field: _cell(field, row[i])
                    for field, i in columns.items()
                    if i < len(row) and row[i].strip()
                }


def _csv_columns(header: list[str], path: Path) -> dict[str, int]:
    """Tick field -> column index, for the columns of `header` that become tick fields."""
    if "close" not in header:
        raise ConfigError(f"{path}: no 'close' column in the header {header}")
    columns = {name: header.index(name) for name in (*NUMERIC_COLUMNS, "symbol") if name in header}
    stamp = next((name for name in TIMESTAMP_COLUMNS if name in header), None)
    if stamp is not None:
        columns["timestamp"] = header.index(stamp)
    return columns


def _cell(field: str, cell: str) -> float | str:
    """A CSV cell as a tick field: numbers as numbers, a timestamp as epoch seconds if it is
    a number (else the text: ISO 8601)."""
    if field in NUMERIC_COLUMNS:
        return _number(cell)
    if field == "timestamp" and isinstance(number := _number(cell), float):
        return number
    return cell.strip()


def _number(cell: str) -> float | str:
    try:
        return float(cell)
    except ValueError:
        return cell.strip()


def publish(
    client: redis.Redis,
    channel: str,
    ticks: Iterable[dict[str, Any]],
    *,
    rate_per_s: float | None,
    duration_s: float | None,
    max_ticks: int | None = None,
    stop: threading.Event | None = None,
    stream_maxlen: int | None = None,
    on_published: Callable[[int], None] | None = None,
) -> int:
    """Publish `ticks` on `channel` as JSON, `rate_per_s` a second (None: as fast as possible).
    With `stream_maxlen` (`--sink stream`; 0: no cap), `channel` is a Redis Stream instead: each
    tick is an entry whose field `tick` holds its JSON, the stream trimmed to about
    `stream_maxlen` entries (`XADD MAXLEN ~`).

    PUBLISHes are pipelined in groups covering 10 ms of pacing (at most 500). Stops when
    `duration_s` has passed, `max_ticks` are published, `stop` is set or `ticks` ends; returns
    how many were published. `on_published(count)`, when given, hears the running count after
    each round trip. A Redis failure raises `EventError`.
    """
    if rate_per_s is not None and rate_per_s <= 0:
        raise ConfigError("rate_per_s must be positive (or None for no pacing)")
    group = (
        MAX_PUBLISH_GROUP
        if rate_per_s is None
        else max(1, min(MAX_PUBLISH_GROUP, int(rate_per_s * PUBLISH_WINDOW_S)))
    )
    ticks, started, published = iter(ticks), time.monotonic(), 0
    deadline = math.inf if duration_s is None else started + duration_s
    while not (stop is not None and stop.is_set()) and time.monotonic() < deadline:
        size = group if max_ticks is None else min(group, max_ticks - published)
        if size <= 0:
            break
        sent = _publish_group(client, channel, ticks, size, published, stream_maxlen)
        published += sent
        if on_published is not None:
            on_published(published)
        if sent < size or (max_ticks is not None and published >= max_ticks):
            break
        if rate_per_s is not None:
            _sleep_until(started + published / rate_per_s, deadline, stop)
    logger.info(
        "published %d ticks on %s in %.2f s", published, channel, time.monotonic() - started
    )
    return published


def _publish_group(
    client: redis.Redis,
    channel: str,
    ticks: Iterator[dict],
    size: int,
    published: int,
    stream_maxlen: int | None,
) -> int:
    """PUBLISH (or XADD) up to `size` ticks from `ticks` in one round trip; return how many."""
    pipe = client.pipeline(transaction=False)
    sent = 0
    maxlen = stream_maxlen or None
    for tick in ticks:
        if stream_maxlen is None:
            pipe.publish(channel, orjson.dumps(tick))
        else:
            pipe.xadd(channel, {"tick": orjson.dumps(tick)}, maxlen=maxlen, approximate=True)
        sent += 1
        if sent >= size:
            break
    if sent:
        try:
            pipe.execute()
        except redis.RedisError as exc:
            raise EventError(
                f"publishing to {channel} failed after {published} ticks: {exc}"
            ) from exc
    return sent


@contextmanager
def progress_line(
    console: Console, target: str, *, enabled: bool = True
) -> Iterator[Callable[[int], None]]:
    """A live line on `console` while ticks are published: how many, and the rate since the
    start, redrawn at most PROGRESS_REFRESH_PER_S times a second and gone when done. Yields
    `publish`'s `on_published`; draws nothing unless `enabled` and `console` is a terminal."""
    progress = Progress(
        SpinnerColumn(),
        TextColumn("published {task.completed:,.0f} ticks on {task.description}"),
        TextColumn("{task.fields[rate]:,.0f} ticks/s"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        refresh_per_second=PROGRESS_REFRESH_PER_S,
        disable=not (enabled and console.is_terminal),
    )
    task = progress.add_task(target, total=None, rate=0.0)
    started = time.monotonic()

    def on_published(count: int) -> None:
        elapsed_s = time.monotonic() - started
        progress.update(task, completed=count, rate=count / elapsed_s if elapsed_s else 0.0)

    with progress, _logs_above_the_line():
        yield on_published


@contextmanager
def _logs_above_the_line() -> Iterator[None]:
    """While a live display proxies sys.stderr, the root logger's handlers on the real stderr
    write through the proxy, which prints their lines above the display instead of into it."""
    proxy = sys.stderr
    original = getattr(proxy, "rich_proxied_file", None)
    handlers = [
        h
        for h in logging.getLogger().handlers
        if isinstance(h, logging.StreamHandler) and original is not None and h.stream is original
    ]
    for handler in handlers:
        handler.setStream(proxy)
    try:
        yield
    finally:
        for handler in handlers:
            handler.setStream(original)


def _sleep_until(when: float, deadline: float, stop: threading.Event | None) -> None:
    delay_s = min(when, deadline) - time.monotonic()
    if delay_s <= 0:
        return
    if stop is not None:
        stop.wait(delay_s)
    else:
        time.sleep(delay_s)
