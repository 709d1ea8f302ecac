"""The bridge's counters, its rate-limited log of rejected ticks, and the stats it reports.

Counters
    `ticks_received`, `ticks_rejected` (and `ticks_rejected.<reason>`), `ticks_batched`,
    `ticks_coalesced`, `runs_submitted`, `submit_failures`, `runs_abandoned`, `reconnects`, the
    gauge `inflight`, and from a stream `ticks_reclaimed` (entries read again after a crash),
    `runs_reformed` (batches submitted again as formed), `ticks_left_pending` (buffered at stop,
    for the next reader) and `ticks_trimmed` (trimmed away before anyone acknowledged them):
    logged every `stats_interval_s` and written to the Redis hash
    `osiris:bridge:stats` (with `status` and `updated_at`); `Bridge.counters` is a snapshot.

Rejected ticks
    A rejected tick is counted per reason, logged at most once per reason every 5 s (with a
    sample), and never enters a batch.
"""

from __future__ import annotations

import logging
import re
import threading
import time

import redis

from osiris_tasks.domain.ids import utc_iso
from osiris_tasks.errors import TickRejected
from osiris_tasks.keys import BRIDGE_STATS_KEY as STATS_KEY

__all__ = ["BridgeCounters", "RejectionLog", "StatsReporter", "reason_key"]

logger = logging.getLogger(__name__)

# At most one log line per rejection reason per this many seconds.
REJECT_LOG_INTERVAL_S = 5.0
# Longest a rejection reason's counter key may be (`ticks_rejected.<key>`).
REASON_KEY_CHARS = 40
# How much of a rejected message its log line shows.
SAMPLE_CHARS = 80


def reason_key(reason: str) -> str:
    """A stable counter key for a rejection reason: `not JSON: ...` -> `not_json`."""
    head = reason.split(":", 1)[0].lower()
    return re.sub(r"[^a-z]+", "_", head).strip("_")[:REASON_KEY_CHARS] or "other"


class BridgeCounters:
    """Thread-safe counters and gauges of a bridge; `snapshot()` is a flat dict for export."""

    NAMES = (
        "ticks_received",
        "ticks_rejected",
        "ticks_batched",
        "ticks_coalesced",
        "runs_submitted",
        "submit_failures",
        "runs_abandoned",
        "reconnects",
        "inflight",
        "ticks_reclaimed",
        "runs_reformed",
        "ticks_left_pending",
        "ticks_trimmed",
    )

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values = dict.fromkeys(self.NAMES, 0)

    def incr(self, name: str, amount: int = 1) -> None:
        """Add `amount` to counter `name`."""
        with self._lock:
            self._values[name] = self._values.get(name, 0) + amount

    def set(self, name: str, value: int) -> None:
        """Set gauge `name`."""
        with self._lock:
            self._values[name] = value

    def reject(self, reason: str) -> None:
        """Count a rejected tick under `ticks_rejected` and `ticks_rejected.<reason key>`."""
        key = "ticks_rejected." + reason_key(reason)
        with self._lock:
            self._values["ticks_rejected"] += 1
            self._values[key] = self._values.get(key, 0) + 1

    def snapshot(self) -> dict[str, int]:
        """A copy of every counter and gauge."""
        with self._lock:
            return dict(self._values)


class RejectionLog:
    """Logs a rejected tick at most once per reason per interval, with how many were skipped."""

    def __init__(self, interval_s: float = REJECT_LOG_INTERVAL_S):
        self._interval_s = interval_s
        self._last: dict[str, float] = {}
        self._skipped: dict[str, int] = {}

    def __call__(self, exc: TickRejected, raw: bytes) -> None:
        key, now = reason_key(exc.reason), time.monotonic()
        if now - self._last.get(key, -self._interval_s) < self._interval_s:
            self._skipped[key] = self._skipped.get(key, 0) + 1
            return
        self._last[key] = now
        logger.warning(
            "tick rejected: %s; sample %r (%d more like it not logged)",
            exc.reason,
            exc.sample or _sample(raw),
            self._skipped.pop(key, 0),
        )


def _sample(raw: bytes | str) -> str:
    """The start of a message, printable and on one line."""
    text = raw[:SAMPLE_CHARS]
    text = text.decode("utf-8", "replace") if isinstance(text, bytes) else text
    return text.encode("unicode_escape").decode("ascii")


class StatsReporter:
    """Logs the counters and writes them to the `osiris:bridge:stats` hash, periodically.

    `close_timeout_s` bounds how long `close()` waits for a report under way: the longest one
    write may block on the client's socket.
    """

    def __init__(
        self,
        client: redis.Redis,
        counters: BridgeCounters,
        interval_s: float,
        *,
        close_timeout_s: float,
    ):
        self._redis, self._counters, self._interval_s = client, counters, interval_s
        self._close_timeout_s = close_timeout_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._work, name="osiris-bridge-stats", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        """Stop reporting periodically; report the final counters once."""
        self._stop.set()
        self._thread.join(self._close_timeout_s)
        self.report("stopped")

    def _work(self) -> None:
        while not self._stop.wait(self._interval_s):
            self.report("running")

    def report(self, status: str) -> None:
        """Log the counters and write them, with `status` and `updated_at`, to Redis."""
        counters = self._counters.snapshot()
        logger.info("bridge %s: %s", status, " ".join(f"{k}={v}" for k, v in counters.items()))
        fields = {**counters, "status": status, "updated_at": utc_iso()}
        try:
            with self._redis.pipeline(transaction=True) as pipe:
                pipe.delete(STATS_KEY).hset(STATS_KEY, mapping=fields).execute()
        except redis.RedisError as exc:
            logger.warning("counters not written to %s: %s", STATS_KEY, exc)
