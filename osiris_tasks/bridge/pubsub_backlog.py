"""Reading the replies a Pub/Sub connection already holds, without waiting for more.

`PubSub.get_message` costs ~6 us a message on 2 cores (a readiness poll, a health check, a
retry wrapper and a dict per message), as much as the bridge's own work on a tick. Under a
burst most messages are already in the connection's RESP parser or socket, so after one
`get_message` the bridge takes the rest here. With the hiredis parser (a dependency), replies
come straight from `hiredis.Reader.gets()` and the socket is read 64 KB at a time, without
blocking: ~0.7 us a message (`benchmarks/bridge_bench.py` measures the bridge against a bare
`get_message` loop). Other parsers go through `Connection.read_response`, ~3 us.

The hiredis path reads two attributes redis-py does not document (`Connection._parser`,
`_HiredisParser._reader`); when they are missing (another redis-py) the generic path is used.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import redis
from redis._parsers import hiredis as _hiredis_parser

__all__ = ["backlog"]

# hiredis-py's answer when the buffer holds no complete reply (redis-py passes it as
# `notEnoughData`); None in redis-py versions that lack it, which then take the generic path.
_NOT_ENOUGH_DATA = getattr(_hiredis_parser, "NOT_ENOUGH_DATA", None)


def backlog(pubsub: redis.client.PubSub, limit: int) -> Iterator[Any]:
    """Yield up to `limit` raw replies (`[b"message", channel, data]`, subscribe
    confirmations...) already received on `pubsub`'s connection; stop when the next would
    have to be waited for. Health-check PONGs are consumed, as `get_message` does. Raises
    `redis.ConnectionError` when the server has closed the connection."""
    parser = getattr(pubsub.connection, "_parser", None)
    reader = getattr(parser, "_reader", None)
    replies = (
        _hiredis(parser, reader)
        if _NOT_ENOUGH_DATA is not None
        and reader is not None
        and hasattr(parser, "read_from_socket")
        else _generic(pubsub.connection)
    )
    for _, reply in zip(range(limit), replies, strict=False):
        if pubsub.health_check_response_counter and pubsub.is_health_check_response(reply):
            pubsub.health_check_response_counter -= 1
            continue
        yield reply


def _hiredis(parser: Any, reader: Any) -> Iterator[Any]:
    while True:
        reply = reader.gets()
        if reply is _NOT_ENOUGH_DATA:
            if not parser.read_from_socket(timeout=0, raise_on_timeout=False):
                return
            continue
        if isinstance(reply, redis.ConnectionError):
            raise reply
        yield reply


def _generic(connection: redis.connection.Connection) -> Iterator[Any]:
    while connection.can_read(0):
        yield connection.read_response(disconnect_on_error=False, push_request=True)
