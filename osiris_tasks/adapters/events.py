"""Run events on Redis Pub/Sub: JSON payloads that carry `run_id` and a stable `event_id`.

`event_id` is `<run_id>:<channel>`, so a redelivered task publishes the same ids and consumers
can drop repeats; a marker key also stops the bus from publishing an event twice (checked,
published and set in one script: one round trip per event).
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
import redis

from osiris_tasks import lua
from osiris_tasks.domain.ids import utc_iso
from osiris_tasks.errors import EventError
from osiris_tasks.keys import PUBLISHED_MARKER_PREFIX as MARKER_PREFIX

__all__ = ["EventBus", "event_id"]

logger = logging.getLogger(__name__)

# How long the "already published" marker of an event is kept.
PUBLISHED_MARKER_TTL_S = 86_400


def event_id(run_id: str, channel: str) -> str:
    """The stable id of `channel`'s event for `run_id`."""
    return f"{run_id}:{channel}"


class EventBus:
    """Publishes run events on a Redis client."""

    def __init__(self, client: redis.Redis):
        self._redis = client
        # Check the marker, publish, mark: one round trip (lua/publish_once.lua).
        self._publish = lua.script(client, "publish_once")

    @property
    def redis(self) -> redis.Redis:
        return self._redis

    def publish_once(self, channel: str, payload: dict[str, Any], *, run_id: str) -> dict:
        """Publish `payload` on `channel` unless this run already did; return its event ref."""
        eid = event_id(run_id, channel)
        message = {"event_id": eid, "run_id": run_id, "published_at": utc_iso(), **payload}
        try:
            receivers = self._publish(
                keys=[MARKER_PREFIX + eid],
                args=[channel, orjson.dumps(message, default=str), PUBLISHED_MARKER_TTL_S],
            )
        except redis.RedisError as exc:
            raise EventError(f"publishing {channel} failed: {exc}", run_id=run_id) from exc
        if receivers < 0:
            logger.info("run_id=%s event %s already published, not repeated", run_id, eid)
            return {"channel": channel, "event_id": eid}
        logger.debug("run_id=%s published %s to %d receivers", run_id, channel, receivers)
        return {"channel": channel, "event_id": eid}
