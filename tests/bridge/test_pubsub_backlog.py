"""The bridge's backlog reader, against a real Redis: every message, in order, never waiting."""

from __future__ import annotations

import time

import pytest
import redis
from redis._parsers.resp3 import _RESP3Parser

from osiris_tasks.bridge.pubsub_backlog import backlog

CHANNEL = "test.backlog"


@pytest.fixture(params=["hiredis-resp3", "hiredis-resp2", "python-resp3"])
def pubsub(request, redis_url):
    """A subscribed PubSub with the hiredis parser (the bridge's) or redis-py's own, on
    RESP3 (redis-py's default: messages arrive as push replies) or RESP2."""
    parser, protocol = request.param.split("-")
    options = {"parser_class": _RESP3Parser} if parser == "python" else {}
    client = redis.Redis.from_url(
        redis_url, health_check_interval=3600, protocol=int(protocol[-1]), **options
    )
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(CHANNEL)
    assert pubsub.get_message(timeout=2) is None  # the confirmation, consumed
    assert (type(pubsub.connection._parser).__name__ == "_HiredisParser") == (parser == "hiredis")
    yield pubsub
    pubsub.close()
    client.close()


def publish(redis_url: str, payloads: list[bytes]) -> None:
    with redis.Redis.from_url(redis_url) as publisher:
        pipe = publisher.pipeline(transaction=False)
        for payload in payloads:
            pipe.publish(CHANNEL, payload)
        assert all(pipe.execute())  # the subscriber got each


def wait_readable(pubsub) -> None:
    deadline = time.monotonic() + 5
    while not pubsub.connection.can_read(0.1):
        assert time.monotonic() < deadline


def data(replies) -> list[bytes]:
    replies = list(replies)
    assert all(reply[0] == b"message" and reply[1] == CHANNEL.encode() for reply in replies)
    return [reply[2] for reply in replies]


def test_reads_every_message_in_order_across_socket_reads(pubsub, redis_url):
    payloads = [b"%d:" % i + b"x" * 200 for i in range(3000)]  # ~700 KB: many recv calls
    publish(redis_url, payloads)
    wait_readable(pubsub)
    got: list[bytes] = []
    deadline = time.monotonic() + 10
    while len(got) < len(payloads) and time.monotonic() < deadline:
        got += data(backlog(pubsub, 1000))
    assert got == payloads


def test_stops_at_the_limit_and_returns_at_once_when_nothing_is_left(pubsub, redis_url):
    publish(redis_url, [b"a", b"b", b"c"])
    wait_readable(pubsub)
    assert data(backlog(pubsub, 2)) == [b"a", b"b"]
    assert data(backlog(pubsub, 10)) == [b"c"]
    started = time.monotonic()
    assert list(backlog(pubsub, 10)) == []
    assert time.monotonic() - started < 0.05


def test_a_health_check_pong_is_consumed_not_yielded(pubsub, redis_url):
    pubsub.connection.next_health_check = 0  # due: the next check sends a PING
    pubsub.check_health()
    assert pubsub.health_check_response_counter == 1
    publish(redis_url, [b"after the ping"])
    deadline = time.monotonic() + 5
    got: list = []
    while not got and time.monotonic() < deadline:
        got = list(backlog(pubsub, 10))
    assert data(got) == [b"after the ping"]
    assert pubsub.health_check_response_counter == 0


def test_a_closed_connection_raises_connection_error(pubsub, redis_url):
    with redis.Redis.from_url(redis_url) as admin:
        admin.client_kill_filter(_type="pubsub")
    with pytest.raises(redis.ConnectionError):
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            list(backlog(pubsub, 10))
            time.sleep(0.01)
