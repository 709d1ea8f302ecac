"""The bridge's Redis Streams side (`--source stream`): a consumer group read, acknowledged
only once a tick's run is with the broker, so nothing a producer wrote is lost across a crash.

Entries
    One tick per entry, its JSON in the field `tick` (what `osiris sim --sink stream` writes).
    An entry without it is rejected like a malformed tick (counted, logged, acknowledged).

Reading (`XREADGROUP`, group `--stream_group`, consumer `--consumer`)
    An entry read is *pending* in the group until it is acknowledged. The bridge acknowledges a
    tick once the run that carries it is with the broker (`XACK` after `submit` returned), or at
    once when the tick is rejected. Entries are never lost in between: a bridge that dies holds
    them pending.

A batch is formed once
    Before a run is submitted, its entry ids are written to a hash (`osiris:bridge:formed:
    <stream>:<group>`, entry id -> run_id) and its run_id is derived from them
    (`stream_run_id`). After a crash the entries come back (below); those of a formed batch
    form exactly that batch again, with the same run_id, so a run submitted before the crash
    and again after is recorded once (the pipeline de-duplicates by run_id). The others are
    batched as new ticks. `XACK` and the hash's `HDEL` go in one transaction.

Coming back
    At start a bridge reads its own pending entries (its consumer name is stable across
    restarts: the host's name by default). Every `claim_idle_s / 2` one bridge of the group
    (under a lock) takes over entries idle longer than `claim_idle_s` (`XAUTOCLAIM`), which
    only a dead bridge leaves: a live one keeps the idle time of the entries it holds short
    (`XCLAIM ... JUSTID` to itself every `claim_idle_s / 3`).

Trimming
    `retention="acked"` (default): the bridge deletes entries every group of the stream has
    acknowledged (`XTRIM MINID ~`), every 10 s. `"maxlen"`: the bridge deletes nothing; the
    producer's `MAXLEN ~ OSIRIS_MARKET_STREAM_MAXLEN` bounds the stream (it always does).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable

import redis

from osiris_tasks.keys import BRIDGE_CLAIM_PREFIX, BRIDGE_FORMED_PREFIX

__all__ = ["READ_COUNT", "TICK_FIELD", "Entry", "StreamReader"]

logger = logging.getLogger(__name__)

# The field of a stream entry that holds the tick's JSON.
TICK_FIELD = b"tick"
# Entries one XREADGROUP / XAUTOCLAIM / XCLAIM call handles at most.
READ_COUNT = 1000
# How often acknowledged entries are trimmed (retention "acked").
TRIM_INTERVAL_S = 10.0

Entry = tuple[str, dict[bytes, bytes]]  # (entry id, fields); fields empty: the entry is gone


def _id(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else raw


def _entries(raw: Iterable) -> list[Entry]:
    return [(_id(entry_id), fields or {}) for entry_id, fields in raw]


class StreamReader:
    """One consumer of a group on a market stream: read, take over, keep, acknowledge, trim.

    Thread-safe where it must be: `ack` runs on the submitter's thread, the rest on the read
    loop's. `held` is every entry this bridge has read and not acknowledged."""

    def __init__(
        self,
        client: redis.Redis,
        stream: str,
        group: str,
        consumer: str,
        *,
        claim_idle_s: float,
        retention: str = "acked",
    ):
        self.stream, self.group, self.consumer = stream, group, consumer
        self._redis, self._claim_idle_s, self._retention = client, claim_idle_s, retention
        self._formed_key = f"{BRIDGE_FORMED_PREFIX}{stream}:{group}"
        self._claim_lock = f"{BRIDGE_CLAIM_PREFIX}{stream}:{group}"
        self._lock = threading.Lock()
        self._held: dict[str, None] = {}
        self._unacked: list[str] = []  # acknowledgements that failed, retried by `tend`
        self._next_refresh = self._next_claim = self._next_trim = 0.0

    # -- reading -----------------------------------------------------------------------------

    def ensure_group(self) -> None:
        """Create the group (at the stream's end, creating the stream) unless it exists."""
        try:
            self._redis.xgroup_create(self.stream, self.group, id="$", mkstream=True)
            logger.info("created consumer group %s on stream %s", self.group, self.stream)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def own_pending(self) -> list[Entry]:
        """The entries this consumer read before and never acknowledged (after a restart; after
        a reconnect, those it does not hold already)."""
        found: list[Entry] = []
        after = "0"
        while True:
            reply = self._redis.xreadgroup(
                self.group, self.consumer, {self.stream: after}, count=READ_COUNT
            )
            batch = _entries(reply[0][1]) if reply else []
            found += batch
            if len(batch) < READ_COUNT:
                break
            after = batch[-1][0]
        with self._lock:
            found = [entry for entry in found if entry[0] not in self._held]
        return self._take(found)

    def read(self, block_ms: int) -> list[Entry]:
        """New entries (at most READ_COUNT), waiting up to `block_ms` for the first."""
        reply = self._redis.xreadgroup(
            self.group, self.consumer, {self.stream: ">"}, count=READ_COUNT, block=block_ms
        )
        return self._take(_entries(reply[0][1])) if reply else []

    def reclaim(self) -> list[Entry]:
        """Entries idle longer than `claim_idle_s` (a dead bridge's), now this consumer's; one
        bridge of the group at a time (so no batch of the dead one is split between two)."""
        lock_ms = int(self._claim_idle_s * 1000)
        if not self._redis.set(self._claim_lock, self.consumer, nx=True, px=lock_ms):
            return []
        try:
            found, start = [], "0-0"
            while True:
                next_id, batch, deleted = self._redis.xautoclaim(
                    self.stream, self.group, self.consumer, lock_ms, start, count=READ_COUNT
                )
                found += _entries(batch)
                for gone in deleted:  # trimmed before anyone acknowledged it
                    found.append((_id(gone), {}))
                start = _id(next_id)
                if start == "0-0":
                    break
            self._forget_idle_consumers()
        finally:
            self._redis.delete(self._claim_lock)
        with self._lock:
            found = [entry for entry in found if entry[0] not in self._held]
        if found:
            logger.warning(
                "took over %d entries of %s that a dead bridge had read and not acknowledged",
                len(found),
                self.stream,
            )
        return self._take(found)

    def _take(self, entries: list[Entry]) -> list[Entry]:
        with self._lock:
            for entry_id, _ in entries:
                self._held[entry_id] = None
        return entries

    def _forget_idle_consumers(self) -> None:
        """Remove consumers of the group that hold nothing and have been idle a while."""
        idle_ms = self._claim_idle_s * 1000
        for info in self._redis.xinfo_consumers(self.stream, self.group):
            name = _id(info["name"])
            if name != self.consumer and info["pending"] == 0 and info["idle"] > idle_ms:
                self._redis.xgroup_delconsumer(self.stream, self.group, name)

    # -- batches -----------------------------------------------------------------------------

    def formed_of(self, entry_ids: list[str]) -> list[str | None]:
        """The run_id of the formed batch each entry belongs to (None: not in one)."""
        if not entry_ids:
            return []
        return [
            None if r is None else _id(r) for r in self._redis.hmget(self._formed_key, entry_ids)
        ]

    def mark_formed(self, batches: Iterable[tuple[str, list[str]]]) -> None:
        """Write (run_id, entry ids) of batches about to be submitted; raises `RedisError`."""
        pipe = self._redis.pipeline(transaction=False)
        for run_id, entry_ids in batches:
            if entry_ids:
                pipe.hset(self._formed_key, mapping=dict.fromkeys(entry_ids, run_id))
        pipe.execute()

    def ack(self, entry_ids: list[str]) -> None:
        """Acknowledge entries (and forget their batch) in one transaction; a failure is
        logged and retried by `tend`, the entries stay held meanwhile."""
        with self._lock:
            entry_ids, self._unacked = [*self._unacked, *entry_ids], []
        if not entry_ids:
            return
        try:
            pipe = self._redis.pipeline(transaction=True)
            pipe.xack(self.stream, self.group, *entry_ids)
            pipe.hdel(self._formed_key, *entry_ids)
            pipe.execute()
        except redis.RedisError as exc:
            logger.warning("acknowledging %d entries failed (%s); retrying", len(entry_ids), exc)
            with self._lock:
                self._unacked += entry_ids
            return
        with self._lock:
            for entry_id in entry_ids:
                self._held.pop(entry_id, None)

    # -- housekeeping --------------------------------------------------------------------------

    @property
    def held(self) -> int:
        """Entries read and not acknowledged."""
        return len(self._held)

    def tend(self) -> list[Entry]:
        """Keep held entries fresh, retry failed acks, trim; returns entries taken over."""
        now = time.monotonic()
        if now >= self._next_refresh:
            self._refresh()
            self._next_refresh = now + self._claim_idle_s / 3
        if self._unacked:
            self.ack([])
        if self._retention == "acked" and now >= self._next_trim:
            self._trim_acked()
            self._next_trim = now + TRIM_INTERVAL_S
        if now >= self._next_claim:
            self._next_claim = now + self._claim_idle_s / 2
            return self.reclaim()
        return []

    def _refresh(self) -> None:
        """Reset the idle time of the entries this bridge holds, so no one takes them over."""
        with self._lock:
            held = list(self._held)
        for start in range(0, len(held), READ_COUNT):
            self._redis.xclaim(
                self.stream,
                self.group,
                self.consumer,
                0,
                held[start : start + READ_COUNT],
                justid=True,
            )

    def _trim_acked(self) -> None:
        """Delete the entries every group of the stream has read and acknowledged."""
        keep_from: str | None = None
        for info in self._redis.xinfo_groups(self.stream):
            name = info["name"]
            if info["pending"]:
                oldest = self._redis.xpending(self.stream, name)["min"]
            else:
                oldest = _after(_id(info["last-delivered-id"]))
            oldest = _id(oldest)
            if keep_from is None or _key(oldest) < _key(keep_from):
                keep_from = oldest
        if keep_from is not None and keep_from != "0-1":
            self._redis.xtrim(self.stream, minid=keep_from, approximate=True)


def _key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def _after(entry_id: str) -> str:
    """The smallest entry id greater than `entry_id`."""
    ms, seq = _key(entry_id)
    return f"{ms}-{seq + 1}"
