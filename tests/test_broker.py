"""The broker transport: kombu's Redis transport reusing one redis-py client per pool."""

from __future__ import annotations

import base64
import json
import time

import kombu
import pytest
import redis
from kombu.transport import redis as kombu_redis

from osiris_tasks import broker
from osiris_tasks.celery_app import app, celery_config, configure
from osiris_tasks.settings import Settings


@pytest.fixture
def connection(redis_url: str):
    with kombu.Connection(redis_url, transport=broker.TRANSPORT) as conn:
        yield conn


def test_publishes_and_acks_share_one_client_per_pool(connection):
    channel = connection.default_channel
    assert isinstance(channel, broker.Channel)
    with channel.conn_or_acquire() as first, channel.conn_or_acquire() as second:
        assert first is second
        assert first.connection_pool is channel.pool
    assert channel.client is not first  # BRPOP's asynchronous client is kombu's own


def test_a_replaced_pool_gets_a_new_client(connection):
    channel = connection.default_channel
    with channel.conn_or_acquire() as before:
        before.ping()
    channel._disconnect_pools()  # what kombu does after a connection error
    with channel.conn_or_acquire() as after:
        assert after is not before
        assert after.connection_pool is channel.pool
        assert after.ping()


def test_messages_round_trip_between_our_transport_and_kombus(redis_url: str, connection):
    with kombu.Connection(redis_url) as stock:
        assert type(stock.default_channel) is kombu_redis.Channel
        for sender, receiver in ((connection, stock), (stock, connection)):
            with sender.SimpleQueue("osiris.test.broker") as queue:
                for n in range(3):
                    queue.put({"n": n})
            with receiver.SimpleQueue("osiris.test.broker") as queue:
                got = [queue.get(timeout=2) for _ in range(3)]
                for message in got:
                    message.ack()
                assert [m.payload["n"] for m in got] == [0, 1, 2]
    client = redis.Redis.from_url(redis_url)
    assert client.llen("osiris.test.broker") == 0
    assert client.hlen("unacked") == 0  # every ack went through


@pytest.mark.parametrize(("url", "transport"), [
    ("redis://127.0.0.1:6379/0", broker.TRANSPORT),
    ("rediss://127.0.0.1:6380/0", broker.TRANSPORT),
    ("amqp://guest@127.0.0.1//", None),
    ("memory://", None),
])
def test_the_transport_is_ours_for_redis_urls_only(url: str, transport: str | None):
    assert celery_config(Settings.from_env({}, broker_url=url))["broker_transport"] == transport


def test_the_configured_app_publishes_through_it(settings):
    configure(app, settings)
    with app.connection_for_write() as conn:
        assert isinstance(conn.default_channel, broker.Channel)


def _deliver(conn: kombu.Connection, queue: str, payloads: list[dict]) -> list:
    with conn.SimpleQueue(queue) as simple:
        for payload in payloads:
            simple.put(payload)
    simple = conn.SimpleQueue(queue)
    return [simple.get(timeout=2) for _ in payloads]


def _body(raw: dict) -> str:
    """A stored message's body, decoded as its `body_encoding` property says."""
    if raw["properties"].get("body_encoding") == "base64":
        return base64.b64decode(raw["body"]).decode()
    return raw["body"]


def test_text_bodies_are_stored_as_they_are_and_bytes_in_base64(redis_url: str, connection):
    """kombu base64-encodes every body; ours only what is not text (a compressed body), and a
    stock consumer reads both."""
    client = redis.Redis.from_url(redis_url)
    with connection.Producer() as producer:
        producer.publish({"n": 1}, routing_key="osiris.test.body")
        producer.publish({"n": 2}, routing_key="osiris.test.body", compression="zlib")
    plain, compressed = (json.loads(m) for m in reversed(client.lrange("osiris.test.body", 0, -1)))
    assert plain["properties"]["body_encoding"] is None and json.loads(plain["body"]) == {"n": 1}
    assert compressed["properties"]["body_encoding"] == "base64"
    with kombu.Connection(redis_url) as stock, stock.SimpleQueue("osiris.test.body") as queue:
        got = [queue.get(timeout=2) for _ in range(2)]
        for message in got:
            message.ack()
    assert [m.payload for m in got] == [{"n": 1}, {"n": 2}]


@pytest.mark.parametrize("prefix", ["", "osiris-test:"])
def test_unacked_messages_are_kept_as_kombus_ack_emulation_keeps_them(redis_url: str, prefix):
    """Our QoS writes the unacked hash and index kombu's writes, with the same values, under
    kombu's global key prefix too, and an ack removes both entries."""
    client = redis.Redis.from_url(redis_url)
    options = {"global_keyprefix": prefix} if prefix else {}
    written = {}
    for transport in (None, broker.TRANSPORT):
        client.flushdb()
        with kombu.Connection(redis_url, transport=transport,
                              transport_options=options) as conn:
            assert isinstance(conn.default_channel.qos, broker.QoS) == bool(transport)
            message, = _deliver(conn, "osiris.test.qos", [{"n": 1}])
            tag = message.delivery_tag
            stored = client.hget(f"{prefix}unacked", tag)
            assert stored is not None
            assert abs(client.zscore(f"{prefix}unacked_index", tag) - time.time()) < 5
            raw, exchange, routing_key = json.loads(stored)
            written[transport] = (_body(raw), raw["properties"]["delivery_info"], exchange,
                                  routing_key)
            message.ack()
            assert client.hlen(f"{prefix}unacked") == 0
            assert client.zcard(f"{prefix}unacked_index") == 0
    assert written[None] == written[broker.TRANSPORT]


def test_kombu_restores_what_our_qos_kept(redis_url: str):
    """A message delivered by our transport and never acked goes back to its queue when the
    channel is restored (what a worker does at shutdown, and after the visibility timeout),
    and is delivered again, to kombu's stock transport too."""
    client = redis.Redis.from_url(redis_url)
    with kombu.Connection(redis_url, transport=broker.TRANSPORT) as conn:
        message, = _deliver(conn, "osiris.test.qos", [{"n": 7}])
        assert client.hlen("unacked") == 1
        conn.default_channel.qos.restore_unacked()
    assert client.hlen("unacked") == 0 and client.zcard("unacked_index") == 0
    assert client.llen("osiris.test.qos") == 1
    with kombu.Connection(redis_url) as stock, stock.SimpleQueue("osiris.test.qos") as queue:
        again = queue.get(timeout=2)
        assert again.payload == {"n": 7}
        again.ack()


def test_the_scripts_are_loaded_again_after_a_script_flush(redis_url: str, connection):
    client = redis.Redis.from_url(redis_url)
    first, = _deliver(connection, "osiris.test.qos", [{"n": 1}])
    first.ack()
    client.script_flush()  # what a Redis restart does to the script cache
    second, = _deliver(connection, "osiris.test.qos", [{"n": 2}])
    assert client.hlen("unacked") == 1
    second.ack()
    assert client.hlen("unacked") == 0 and client.zcard("unacked_index") == 0


@pytest.mark.parametrize("batched", [False, True], ids=["one", "publish-batch"])
def test_a_queue_declared_with_expires_gets_its_ttl_on_publish(redis_url: str, connection,
                                                               batched: bool):
    client = redis.Redis.from_url(redis_url)
    queue = kombu.Queue("osiris.test.expiring", expires=60)
    with connection.Producer() as producer:
        queue(producer.channel).declare()
        if batched:
            with producer.batch():
                producer.publish({"n": 1}, routing_key=queue.name)
        else:
            producer.publish({"n": 1}, routing_key=queue.name)
    assert client.llen(queue.name) == 1
    assert 0 < client.pttl(queue.name) <= 60_000
