"""kombu's Redis transport, with one redis-py client per connection pool instead of one per call.

kombu's Redis channel builds a new `redis.Redis` for every publish, every ack and every
unacked-index update (`Channel.conn_or_acquire()` -> `_create_client()`). Building one fills
~170 response callbacks: ~120 µs here, more than the LPUSH it wraps, and a worker task pays it
about three times (the unacked index, the ack, the next task's publish). A `redis.Redis` is
safe to share between threads (every command takes a connection from the pool), so this
channel builds one per pool and reuses it; when kombu replaces the pool (after a connection
error), the next call builds a new one. The asynchronous client (BRPOP) is kombu's, unchanged.

Ack emulation (`QoS`) keeps every delivered message in the `unacked` hash and its delivery time
in the `unacked_index` sorted set until the task acks, so a worker that dies mid-task has its
messages restored after the visibility timeout. kombu writes both with a MULTI/EXEC pipeline on
every delivery and every ack: four commands and four replies to parse, the largest single
item in a py-spy profile of a threads worker making 100 ms sidecar calls. `QoS` writes them
with one Lua script per delivery and per ack: the same keys, the same values, still atomic,
one reply (median 0.78x the CPU, `python -m benchmarks.run --only hotpaths`).
Restoring (after the visibility timeout, at shutdown, on reject) is kombu's, unchanged.

Consumers fetch with `transport/fetch.py`: the message moves from its queue into the unacked
hash in one script call (kombu's BRPOP-then-record loses a message whose worker dies in
between), and every publish rings the queue's bell, which idle consumers wait on.

`celery_config()` selects this transport for `redis://` and `rediss://` broker URLs; the URL,
its TLS options and every transport option mean what they mean for kombu's own transport.
"""

from __future__ import annotations

from time import time
from typing import Any

from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from redis.exceptions import ConnectionError as RedisConnectionError

from osiris_tasks import lua
from osiris_tasks.transport.fetch import FETCHED_TAG_PREFIX, ReliableFetch
from osiris_tasks.transport.serialization import dumps

__all__ = ["TRANSPORT", "Channel", "QoS", "Transport", "transport_for"]

# For Celery's `broker_transport` setting.
TRANSPORT = "osiris_tasks.transport.broker:Transport"


def transport_for(url: str) -> str | None:
    """Celery's `broker_transport` for broker `url`: this transport for Redis URLs, else None
    (kombu picks by the URL's scheme)."""
    return TRANSPORT if url.partition("://")[0] in ("redis", "rediss") else None


class QoS(kombu_redis.QoS):
    """kombu's Redis ack emulation, writing the unacked index and hash with one script call."""

    def append(self, message: Any, delivery_tag: str) -> None:
        if delivery_tag.startswith(FETCHED_TAG_PREFIX):  # recorded by the fetch itself
            virtual.QoS.append(self, message, delivery_tag)
            return
        delivery = message.delivery_info
        raw = dumps([message._raw, delivery["exchange"], delivery["routing_key"]])
        self.channel.unacked_script("unacked_append", [time(), delivery_tag, raw])
        virtual.QoS.append(self, message, delivery_tag)

    def ack(self, delivery_tag: str) -> None:
        self.forget(delivery_tag)
        virtual.QoS.ack(self, delivery_tag)

    def forget(self, delivery_tag: str) -> None:
        """Remove `delivery_tag`'s entries from the unacked index and hash."""
        self.channel.unacked_script("unacked_remove", [delivery_tag])


class Channel(ReliableFetch):
    """A kombu Redis channel whose synchronous client is built once per connection pool, with
    the ack emulation above and the reliable fetch of `osiris_tasks.transport.fetch`."""

    QoS = QoS
    # kombu base64-encodes every body by default: a third bigger, and time spent on every
    # message, for JSON text that needs none. Text bodies go as they are, bytes (compressed)
    # still in base64; a consumer decodes each message by its own `body_encoding` property.
    body_encoding = None
    _shared_client: Any = None
    _scripts: dict[str, Any] | None = None

    def encode_body(self, body: Any, encoding: str | None = None) -> tuple[Any, str | None]:
        if encoding is None and not isinstance(body, str):
            encoding = "base64"
        return super().encode_body(body, encoding)

    def _put(self, queue: str, message: dict, **kwargs: Any) -> None:
        """kombu's `_put`, the message written by orjson (`serialization.dumps`): the same
        JSON, several times faster for a message carrying a run's state; then the queue's bell
        rings (in the same round trip)."""
        key = self._q_for_pri(queue, self._get_message_priority(message, reverse=False))
        expires = self._expires.get(queue) if self._expires else None
        commands = [("lpush", key, dumps(message))]
        if expires is not None:
            commands += [
                ("pexpire", self._q_for_pri(queue, p), expires) for p in self.priority_steps
            ]
        rings = self.rings(queue)
        publish_batch = kwargs.pop("_publish_batch", None)
        if publish_batch is not None:
            for name, *args in commands + rings:
                publish_batch.add(name, *args)
            return
        with self.conn_or_acquire() as client, client.pipeline(transaction=False) as pipe:
            for name, *args in commands + rings:
                getattr(pipe, name)(*args)
            results = pipe.execute(raise_on_error=False)
        # The message is queued whatever became of its ring: a publish that raised for the
        # ring alone would be retried, and the message queued twice.
        for result in results[: len(commands)]:
            if isinstance(result, Exception):
                raise result
        for result in results[len(commands) :]:
            if isinstance(result, Exception):
                self.ring_failed(result)

    def _create_client(self, asynchronous: bool = False) -> Any:
        if asynchronous:
            return super()._create_client(asynchronous=True)
        client = self._shared_client
        if self._pool is None and not self._has_connection_info():
            return self._client_of_closed_channel(client)
        pool = self.pool
        if client is None or client.connection_pool is not pool:
            client = self._shared_client = super()._create_client()
        return client

    def _has_connection_info(self) -> bool:
        """Whether kombu can still build a pool: after a connection error Celery collects the
        connection, which drops the transport's connection info, then closes the channel."""
        return self.connection is not None and self.connection.client is not None

    def _client_of_closed_channel(self, client: Any) -> Any:
        """The client a channel closed after a connection error still restores and acks its
        messages with: its last one (a redis-py pool reconnects on demand). kombu would build
        a pool from the connection info that is gone, and the AttributeError raised there
        killed prefork workers that held unacknowledged messages when Redis restarted. With
        no client yet, a connection error, which kombu and Celery handle (the messages are
        restored after the visibility timeout)."""
        if client is None:
            raise RedisConnectionError("the channel's broker connection is closed")
        return client

    def unacked_script(self, name: str, args: list[Any]) -> None:
        """Run script `<name>.lua` on the unacked index and hash (EVALSHA; loaded on first
        use)."""
        client = self._create_client()
        if self._scripts is None:
            self._scripts = {}
        script = self._scripts.get(name)
        if script is None:
            script = self._scripts[name] = lua.script(client, name)
        # kombu's prefixing client prefixes only the first key of an EVALSHA.
        script(
            keys=[self.unacked_index_key, self.global_keyprefix + self.unacked_key],
            args=args,
            client=client,
        )


class Transport(kombu_redis.Transport):
    """kombu's Redis transport with `Channel` above."""

    Channel = Channel
