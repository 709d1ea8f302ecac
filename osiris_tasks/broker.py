"""kombu's Redis transport, with one redis-py client per connection pool instead of one per call.

kombu's Redis channel builds a new `redis.Redis` for every publish, every ack and every
unacked-index update (`Channel.conn_or_acquire()` -> `_create_client()`). Building one fills
~170 response callbacks: ~120 µs here, more than the LPUSH it wraps, and a worker task pays it
about three times (the unacked index, the ack, the next task's publish). A `redis.Redis` is
safe to share between threads (every command takes a connection from the pool), so this
channel builds one per pool and reuses it; when kombu replaces the pool (after a connection
error), the next call builds a new one. The asynchronous client (BRPOP) is kombu's, unchanged.

`celery_config()` selects this transport for `redis://` and `rediss://` broker URLs; the URL,
its TLS options and every transport option mean what they mean for kombu's own transport.
"""

from __future__ import annotations

from typing import Any

from kombu.transport import redis as kombu_redis

__all__ = ["TRANSPORT", "Channel", "Transport", "transport_for"]

# For Celery's `broker_transport` setting.
TRANSPORT = "osiris_tasks.broker:Transport"


def transport_for(url: str) -> str | None:
    """Celery's `broker_transport` for broker `url`: this transport for Redis URLs, else None
    (kombu picks by the URL's scheme)."""
    return TRANSPORT if url.partition("://")[0] in ("redis", "rediss") else None


class Channel(kombu_redis.Channel):
    """A kombu Redis channel whose synchronous client is built once per connection pool."""

    _shared_client: Any = None

    def _create_client(self, asynchronous: bool = False) -> Any:
        if asynchronous:
            return super()._create_client(asynchronous=True)
        pool, client = self.pool, self._shared_client
        if client is None or client.connection_pool is not pool:
            client = self._shared_client = super()._create_client()
        return client


class Transport(kombu_redis.Transport):
    """kombu's Redis transport with `Channel` above."""

    Channel = Channel
