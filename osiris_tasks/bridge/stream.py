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
    <stream>:<group>`, run_id -> its entry ids) and its run_id is derived from them
    (`stream_run_id`). After a crash the entries come back (below); those of a formed batch
    form exactly that batch again, with the same run_id, so a run submitted before the crash
    and again after is recorded once (the pipeline de-duplicates by run_id). The others are
    batched as new ticks. `XACK` and the hash's `HDEL` go in one transaction, so the hash holds
    only the batches formed and not yet acknowledged.

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
from typing import Any

import redis

from osiris_tasks.keys import BRIDGE_CLAIM_PREFIX, BRIDGE_FORMED_PREFIX

__all__ = ["READ_COUNT", "TICK_FIELD", "Entry", "StreamReader", "tick_data"]

logger = logging.getLogger(__name__)

# The field of a stream entry that holds the tick's JSON.
TICK_FIELD = b"tick"
# Entries one XREADGROUP / XAUTOCLAIM / XCLAIM call handles at most.
READ_COUNT = 1000
# How often acknowledged entries are trimmed (retention "acked").
TRIM_INTERVAL_S = 10.0

# (entry id, its fields as Redis sends them: [name, value, ...]); no fields: the entry is gone
# (trimmed while pending). Ids stay bytes: decoded only where a run_id is derived from them.
Entry = tuple[bytes, list[bytes] | None]


def _id(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else raw


def _entries(reply: Any) -> list[Entry]:
    """The entries of a raw XREADGROUP reply (RESP2: [[stream, entries]]; RESP3: a map)."""
    if not reply:
        return []
    streams = reply.values() if isinstance(reply, dict) else (entries for _, entries in reply)
    return [(entry_id, fields) for entries in streams for entry_id, fields in entries]


def tick_data(fields: list[bytes] | None) -> bytes | None:
    """The tick's JSON in an entry's fields (the `tick` field), or None."""
    if fields and fields[0] == TICK_FIELD:  # what osiris sim writes: the only field
        return fields[1]
    pairs = dict(zip(fields[::2], fields[1::2], strict=False)) if fields else {}
    return pairs.get(TICK_FIELD)


def _raw_client(client: redis.Redis) -> redis.Redis:
    """A client on `client`'s pool whose XREADGROUP / XAUTOCLAIM replies are left as Redis
    sent them: redis-py would build a dict per entry (its cost is a fifth of the bridge's)."""
    raw = redis.Redis(connection_pool=client.connection_pool)
    for command in ("XREADGROUP", "XAUTOCLAIM"):
        raw.response_callbacks.pop(command, None)
    return raw


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
        self._raw = _raw_client(client)
        self._formed_key = f"{BRIDGE_FORMED_PREFIX}{stream}:{group}"
        self._claim_lock = f"{BRIDGE_CLAIM_PREFIX}{stream}:{group}"
        self._lock = threading.Lock()
        self._held: dict[bytes, None] = {}
        self._unacked: list[bytes] = []  # acknowledgements that failed, retried by `tend`
        self._unformed: list[str] = []  # and the batches they would have forgotten
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
        after: bytes | str = "0"
        while True:
            reply = self._raw.xreadgroup(
                self.group, self.consumer, {self.stream: after}, count=READ_COUNT
            )
            batch = _entries(reply)
            found += batch
            if len(batch) < READ_COUNT:
                break
            after = batch[-1][0]
        with self._lock:
            found = [entry for entry in found if entry[0] not in self._held]
        return self._take(found)

    def read(self, block_ms: int) -> list[Entry]:
        """New entries (at most READ_COUNT), waiting up to `block_ms` for the first."""
        reply = self._raw.xreadgroup(
            self.group, self.consumer, {self.stream: ">"}, count=READ_COUNT, block=block_ms
        )
        return self._take(_entries(reply)) if reply else []

    def reclaim(self) -> list[Entry]:
        """Entries idle longer than `claim_idle_s` (a dead bridge's), now this consumer's; one
        bridge of the group at a time (so no batch of the dead one is split between two)."""
        lock_ms = int(self._claim_idle_s * 1000)
        if not self._redis.set(self._claim_lock, self.consumer, nx=True, px=lock_ms):
            return []
        try:
            found: list[Entry] = []
            start: bytes | str = "0-0"
            while True:
                next_id, batch, *deleted = self._raw.xautoclaim(
                    self.stream, self.group, self.consumer, lock_ms, start, count=READ_COUNT
                )
                found += [(entry_id, fields) for entry_id, fields in batch]
                for gone in deleted[0] if deleted else ():  # trimmed before acknowledged
                    found.append((gone, None))
                start = next_id
                if _id(start) == "0-0":
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

    def formed_of(self, entry_ids: list[bytes]) -> list[str | None]:
        """The run_id of the formed batch each entry belongs to (None: not in one). The hash
        holds only batches formed and not yet acknowledged: a few per bridge."""
        if not entry_ids:
            return []
        run_of: dict[bytes, str] = {}
        for run_id, ids in self._redis.hgetall(self._formed_key).items():
            run_of.update(dict.fromkeys(ids.split(b","), run_id.decode()))
        return [run_of.get(entry_id) for entry_id in entry_ids]

    def mark_formed(self, batches: Iterable[tuple[str, list[bytes]]]) -> None:
        """Write (run_id, entry ids) of batches about to be submitted, one field per batch;
        raises `RedisError`."""
        mapping = {run_id: b",".join(entry_ids) for run_id, entry_ids in batches if entry_ids}
        if mapping:
            self._redis.hset(self._formed_key, mapping=mapping)

    def ack(self, entry_ids: list[bytes], run_ids: list[str] = ()) -> None:
        """Acknowledge entries and forget the batches `run_ids` in one transaction; a failure
        is logged and retried by `tend`, the entries stay held meanwhile."""
        with self._lock:
            entry_ids, self._unacked = [*self._unacked, *entry_ids], []
            run_ids, self._unformed = [*self._unformed, *run_ids], []
        if not entry_ids:
            return
        try:
            pipe = self._redis.pipeline(transaction=True)
            pipe.xack(self.stream, self.group, *entry_ids)
            if run_ids:
                pipe.hdel(self._formed_key, *run_ids)
            pipe.execute()
        except redis.RedisError as exc:
            logger.warning("acknowledging %d entries failed (%s); retrying", len(entry_ids), exc)
            with self._lock:
                self._unacked += entry_ids
                self._unformed += run_ids
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
