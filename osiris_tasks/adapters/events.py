"""Run events on Redis Pub/Sub: JSON payloads that carry `run_id` and a stable `event_id`; an
outbox for those an outage kept back; an optional mirror of every event on a Redis Stream.

`event_id` is `<run_id>:<channel>`, so a redelivered task publishes the same ids and consumers
can drop repeats; a marker key also stops the bus from publishing an event twice (checked,
published, mirrored and marked in one script: one round trip per event).

Outbox
    An event `publish_events` could not send (Redis unreachable past the client's retries) is
    not dropped: it goes on in the run's state (`unsent_events`, the message as first built),
    and `record_run` puts it in the outbox (a Redis list) in the step that records the run, then
    relays the outbox. Workers relay it too, every second (`tasks/node_tasks.EventRelay`), so
    an outage delays events instead of losing them. Relaying publishes through the same marker:
    an event already out is not sent again.

Events stream (`OSIRIS_EVENTS_STREAM`)
    With a stream name, every event is also appended to that stream (fields `event_id`,
    `channel`, `event`: the JSON), trimmed to about `OSIRIS_EVENTS_STREAM_MAXLEN` entries, so a
    consumer that was down reads what it missed from its last entry id (Pub/Sub keeps nothing).
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
import redis

from osiris_tasks import lua
from osiris_tasks.domain.ids import utc_iso
from osiris_tasks.errors import EventError
from osiris_tasks.keys import EVENTS_OUTBOX_KEY
from osiris_tasks.keys import PUBLISHED_MARKER_PREFIX as MARKER_PREFIX

__all__ = ["EventBus", "EventOutbox", "event_id"]

logger = logging.getLogger(__name__)

# How long the "already published" marker of an event is kept.
PUBLISHED_MARKER_TTL_S = 86_400
# Events one relay pass publishes at most, and how long its lock is held at most.
RELAY_BATCH = 200
RELAY_LOCK_S = 30


def event_id(run_id: str, channel: str) -> str:
    """The stable id of `channel`'s event for `run_id`."""
    return f"{run_id}:{channel}"


class EventBus:
    """Publishes run events on a Redis client (and mirrors them to `stream`, if given)."""

    def __init__(self, client: redis.Redis, *, stream: str | None = None, stream_maxlen: int = 0):
        self._redis = client
        self._stream, self._stream_maxlen = stream or "", str(stream_maxlen)
        # Check the marker, publish, mirror, mark: one round trip (lua/publish_once.lua).
        self._publish = lua.script(client, "publish_once")

    @property
    def redis(self) -> redis.Redis:
        return self._redis

    @staticmethod
    def encode(channel: str, payload: dict[str, Any], *, run_id: str) -> dict[str, str]:
        """The event as it is sent, and kept while it cannot be: channel, event_id, message."""
        eid = event_id(run_id, channel)
        message = {"event_id": eid, "run_id": run_id, "published_at": utc_iso(), **payload}
        return {
            "channel": channel,
            "event_id": eid,
            "message": orjson.dumps(message, default=str).decode(),
        }

    def send(self, event: dict[str, str]) -> dict[str, str]:
        """Publish an encoded event unless it was published already; return its ref. A Redis
        failure raises `EventError`."""
        channel, eid = event["channel"], event["event_id"]
        try:
            receivers = self._publish(
                keys=[MARKER_PREFIX + eid],
                args=[
                    channel,
                    event["message"],
                    PUBLISHED_MARKER_TTL_S,
                    self._stream,
                    self._stream_maxlen,
                    eid,
                ],
            )
        except redis.RedisError as exc:
            raise EventError(
                f"publishing {channel} failed: {exc}", run_id=eid.partition(":")[0]
            ) from exc
        if receivers < 0:
            logger.info("event %s already published, not repeated", eid)
        else:
            logger.debug("published %s to %d receivers", eid, receivers)
        return {"channel": channel, "event_id": eid}

    def publish_once(self, channel: str, payload: dict[str, Any], *, run_id: str) -> dict:
        """Publish `payload` on `channel` unless this run already did; return its event ref."""
        return self.send(self.encode(channel, payload, run_id=run_id))


class EventOutbox:
    """Events kept back by an outage (a Redis list), and the relay that publishes them."""

    def __init__(self, client: redis.Redis, key: str = EVENTS_OUTBOX_KEY):
        self._redis, self._key = client, key

    def put(self, events: list[dict[str, str]]) -> None:
        """Queue encoded events for the relay; a Redis failure raises `EventError`."""
        if not events:
            return
        try:
            self._redis.rpush(self._key, *(orjson.dumps(e) for e in events))
        except redis.RedisError as exc:
            raise EventError(f"queueing {len(events)} events in the outbox failed: {exc}") from exc

    def __len__(self) -> int:
        return self._redis.llen(self._key)

    def relay(self, bus: EventBus) -> int:
        """Publish what the outbox holds (one relay at a time, RELAY_BATCH per pass, oldest
        first); remove each only once it is out. Returns how many were relayed. A Redis failure
        raises `EventError`; what was not relayed stays for the next pass."""
        relayed = 0
        try:
            lock = self._redis.lock(self._key + ":relay", timeout=RELAY_LOCK_S, blocking=False)
            if not lock.acquire():
                return 0
            try:
                while raw := self._redis.lrange(self._key, 0, RELAY_BATCH - 1):
                    for item in raw:
                        bus.send(orjson.loads(item))
                    self._redis.ltrim(self._key, len(raw), -1)
                    relayed += len(raw)
            finally:
                lock.release()
        except redis.RedisError as exc:
            raise EventError(f"relaying the outbox failed after {relayed} events: {exc}") from exc
        if relayed:
            logger.info("relayed %d events from the outbox", relayed)
        return relayed
