"""Batches that drive the reference sidecar to each outcome, and ways to watch a run finish."""

from __future__ import annotations

import threading
import time

import orjson
import redis

NOW = time.time()


def ticks(closes, symbol="AAPL", start=None, volume=100.0):
    start = NOW if start is None else start
    return [{"symbol": symbol, "close": c, "volume": volume, "timestamp": start + i}
            for i, c in enumerate(closes)]


# Zig-zag, no net move: weak signal, the reference policy sizes well under the 1 % limit.
ACCEPTED_BATCH = ticks([100, 101, 100, 101, 100, 101, 100, 101, 100, 100])
# The same zig-zag, long enough to travel by reference (tickstash.py) on the Celery path.
LARGE_ACCEPTED_BATCH = ticks([100, 101] * 30 + [100])
# A steady climb with little noise: strong signal, sized over the limit -> rejected.
REJECTED_BATCH = ticks([100 + 0.1 * i for i in range(10)])


class EventListener:
    """Collects Pub/Sub messages on `channels` in a thread, subscribed before the run starts."""

    def __init__(self, url: str, *channels: str):
        self._client = redis.Redis.from_url(url)
        self._pubsub = self._client.pubsub(ignore_subscribe_messages=True)
        self._pubsub.subscribe(*channels)
        self.messages: list[tuple[str, dict]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._listen, daemon=True)
        self._thread.start()

    def _listen(self) -> None:
        while not self._stop.is_set():
            message = self._pubsub.get_message(timeout=0.1)
            if message:
                self.messages.append((message["channel"].decode(), orjson.loads(message["data"])))

    def of(self, run_id: str, channel: str | None = None) -> list[dict]:
        return [m for c, m in self.messages
                if m.get("run_id") == run_id and (channel is None or c == channel)]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self._pubsub.close()
        self._client.close()
