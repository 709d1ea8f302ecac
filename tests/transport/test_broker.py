"""The broker transport: kombu's Redis transport reusing one redis-py client per pool."""

from __future__ import annotations

import base64
import contextlib
import json
import threading
import time

import kombu
import pytest
import redis
from conftest import wait_for
from kombu.transport import redis as kombu_redis

from osiris_tasks.settings import Settings
from osiris_tasks.tasks.celery_app import app, celery_config, configure
from osiris_tasks.transport import broker
from osiris_tasks.transport.fetch import BELL_TTL_S, FETCHED_TAG_PREFIX


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


@pytest.mark.parametrize(
    ("url", "transport"),
    [
        ("redis://127.0.0.1:6379/0", broker.TRANSPORT),
        ("rediss://127.0.0.1:6380/0", broker.TRANSPORT),
        ("amqp://guest@127.0.0.1//", None),
        ("memory://", None),
    ],
)
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
@pytest.mark.parametrize("how", ["consume", "basic_get"])
def test_unacked_messages_are_kept_as_kombus_ack_emulation_keeps_them(
    redis_url: str, prefix, how: str
):
    """Our transport writes the unacked hash and index kombu's writes, under kombu's global key
    prefix too, and an ack removes both entries. A consumed message is recorded by the fetch
    with the queue it came from (the default exchange, the queue as routing key); one taken
    with `basic_get` by our QoS, with the exchange and routing key it was published to."""
    client = redis.Redis.from_url(redis_url)
    options = {"global_keyprefix": prefix} if prefix else {}
    written = {}
    for transport in (None, broker.TRANSPORT):
        client.flushdb()
        with kombu.Connection(redis_url, transport=transport, transport_options=options) as conn:
            assert isinstance(conn.default_channel.qos, broker.QoS) == bool(transport)
            if how == "consume":
                (message,) = _deliver(conn, "osiris.test.qos", [{"n": 1}])
            else:
                with conn.SimpleQueue("osiris.test.qos") as queue:
                    queue.put({"n": 1})
                    message = queue.get_nowait()
            tag = message.delivery_tag
            assert tag.startswith(FETCHED_TAG_PREFIX) == (
                transport is not None and how == "consume"
            )
            stored = client.hget(f"{prefix}unacked", tag)
            assert stored is not None
            assert abs(client.zscore(f"{prefix}unacked_index", tag) - time.time()) < 5
            raw, exchange, routing_key = json.loads(stored)
            written[transport] = (
                _body(raw),
                raw["properties"]["delivery_info"],
                exchange,
                routing_key,
            )
            message.ack()
            assert client.hlen(f"{prefix}unacked") == 0
            assert client.zcard(f"{prefix}unacked_index") == 0
    if how == "consume":
        assert written[broker.TRANSPORT][2:] == ("", "osiris.test.qos")
        assert written[None][:2] == written[broker.TRANSPORT][:2]
    else:
        assert written[None] == written[broker.TRANSPORT]


def test_kombu_restores_what_our_qos_kept(redis_url: str):
    """A message delivered by our transport and never acked goes back to its queue when the
    channel is restored (what a worker does at shutdown, and after the visibility timeout),
    and is delivered again, to kombu's stock transport too."""
    client = redis.Redis.from_url(redis_url)
    with kombu.Connection(redis_url, transport=broker.TRANSPORT) as conn:
        (message,) = _deliver(conn, "osiris.test.qos", [{"n": 7}])
        assert client.hlen("unacked") == 1
        conn.default_channel.qos.restore_unacked()
    assert client.hlen("unacked") == 0 and client.zcard("unacked_index") == 0
    assert client.llen("osiris.test.qos") == 1
    with kombu.Connection(redis_url) as stock, stock.SimpleQueue("osiris.test.qos") as queue:
        again = queue.get(timeout=2)
        assert again.payload == {"n": 7}
        again.ack()


@pytest.mark.parametrize("then", ["close", "ack"])
def test_a_channel_whose_connection_was_collected_still_restores_and_acks(redis_url: str, then):
    """After a connection error Celery collects the broker connection (kombu drops the
    channel's pools and the transport's connection info), and only then is the channel closed,
    restoring its unacknowledged messages, or a task running in a prefork child acks through
    it. kombu built a new pool from the connection info that was gone: an AttributeError that
    killed prefork workers holding unacknowledged messages when Redis restarted. Both now go
    through the channel's last client (a redis-py pool reconnects on demand)."""
    client = redis.Redis.from_url(redis_url)
    conn = kombu.Connection(redis_url, transport=broker.TRANSPORT)
    first, second = _deliver(conn, "osiris.test.collected", [{"n": 1}, {"n": 2}])
    channel = conn.default_channel
    assert client.hlen("unacked") == 2
    channel._disconnect_pools()  # what collect() leaves behind: no pool ...
    conn.transport.client = None  # ... and no connection info to build one from
    if then == "ack":
        first.ack()
        assert client.hlen("unacked") == 1
    channel.close()
    assert client.hlen("unacked") == 0 and client.zcard("unacked_index") == 0
    restored = sorted(
        json.loads(_body(json.loads(raw)))["n"]
        for raw in client.lrange("osiris.test.collected", 0, -1)
    )
    assert restored == ([2] if then == "ack" else [1, 2])


def test_the_scripts_are_loaded_again_after_a_script_flush(redis_url: str, connection):
    client = redis.Redis.from_url(redis_url)
    (first,) = _deliver(connection, "osiris.test.qos", [{"n": 1}])
    first.ack()
    client.script_flush()  # what a Redis restart does to the script cache
    (second,) = _deliver(connection, "osiris.test.qos", [{"n": 2}])
    assert client.hlen("unacked") == 1
    second.ack()
    assert client.hlen("unacked") == 0 and client.zcard("unacked_index") == 0


@pytest.mark.parametrize("batched", [False, True], ids=["one", "publish-batch"])
def test_a_queue_declared_with_expires_gets_its_ttl_on_publish(
    redis_url: str, connection, batched: bool
):
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


def _consumer(conn: kombu.Connection, *queues: str, got: list | None = None) -> kombu.Consumer:
    consumer = conn.Consumer(
        [kombu.Queue(q) for q in queues],
        accept=["json"],
        callbacks=[lambda body, message: got.append((body, message))] if got is not None else [],
    )
    consumer.consume()
    return consumer


@pytest.mark.parametrize("transport", [None, broker.TRANSPORT], ids=["kombu", "ours"])
def test_a_consumer_gone_with_the_fetch_reply_in_flight_loses_nothing(
    redis_url: str, transport: str | None
):
    """What Redis sees when a worker is SIGKILLed after asking for a message: the message is
    taken from the queue and the connection closes before the reply is read. kombu's BRPOP
    loses it (in neither the queue nor the unacked hash); our fetch has already recorded it as
    unacked, so the visibility timeout brings it back, and its queue's bell wakes a consumer."""
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    queue = "osiris.test.gone"
    with (
        kombu.Connection(redis_url, transport=broker.TRANSPORT) as producer_conn,
        producer_conn.Producer() as producer,
    ):
        producer.publish({"n": 1}, routing_key=queue)
    with kombu.Connection(
        redis_url, transport=transport, transport_options={"visibility_timeout": 1}
    ) as conn:
        channel = conn.default_channel
        _consumer(conn, queue)
        conn.transport.cycle.on_poll_start()  # the event loop's tick: asks for a message
        assert wait_for(lambda: client.llen(queue) == 0, timeout_s=5)
        channel.client.connection.disconnect()  # gone, the reply unread
    if transport is None:
        assert client.hlen("unacked") == 0 and client.llen(queue) == 0  # lost
        return
    assert client.hlen("unacked") == 1
    time.sleep(1.1)
    got: list = []
    options = {"visibility_timeout": 1, "brpop_timeout": 10}

    def restore() -> None:
        time.sleep(0.5)  # the consumer below is waiting by then
        with kombu.Connection(
            redis_url, transport=broker.TRANSPORT, transport_options=options
        ) as other:
            other.default_channel.qos.restore_visible(num=10, interval=1)

    with kombu.Connection(redis_url, transport=broker.TRANSPORT, transport_options=options) as conn:
        _consumer(conn, queue, got=got)
        thread = threading.Thread(target=restore)
        thread.start()
        waiting_from = time.monotonic()
        conn.drain_events(timeout=5)
        thread.join()
        assert time.monotonic() - waiting_from < 2  # the bell, not the 10 s wait
    ((body, message),) = got
    assert body == {"n": 1} and message.delivery_info["redelivered"]
    message.ack()
    assert client.hlen("unacked") == 0 and client.zcard("unacked_index") == 0


def test_an_idle_consumer_wakes_when_its_queue_bell_rings(redis_url: str):
    """A consumer waiting on an empty queue gets a message within milliseconds of its publish,
    not after its wait times out (`brpop_timeout`, 10 s here)."""
    redis.Redis.from_url(redis_url).flushdb()
    got: list = []
    with kombu.Connection(
        redis_url, transport=broker.TRANSPORT, transport_options={"brpop_timeout": 10}
    ) as conn:
        _consumer(conn, "osiris.test.idle", got=got)
        publish_at = []

        def publish() -> None:
            time.sleep(0.5)  # the consumer is waiting by then
            with (
                kombu.Connection(redis_url, transport=broker.TRANSPORT) as other,
                other.Producer() as producer,
            ):
                publish_at.append(time.monotonic())
                producer.publish({"n": 1}, routing_key="osiris.test.idle")

        thread = threading.Thread(target=publish)
        thread.start()
        conn.drain_events(timeout=5)
        received_at = time.monotonic()
        thread.join()
    assert [body for body, _ in got] == [{"n": 1}]
    assert received_at - publish_at[0] < 0.5


def test_a_consumer_of_several_queues_takes_from_each_in_turn_and_every_priority(redis_url: str):
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    with kombu.Connection(redis_url, transport=broker.TRANSPORT) as conn:
        with conn.Producer() as producer:
            for n in range(3):
                producer.publish({"q": "a", "n": n}, routing_key="osiris.test.a")
                producer.publish({"q": "b", "n": n}, routing_key="osiris.test.b")
            producer.publish({"q": "b", "n": 3}, routing_key="osiris.test.b", priority=9)
        got: list = []
        _consumer(conn, "osiris.test.a", "osiris.test.b", got=got)
        while len(got) < 7:
            conn.drain_events(timeout=2)
        for _, message in got:
            message.ack()
    order = [body["q"] for body, _ in got]
    assert order[:6] in (["a", "b"] * 3, ["b", "a"] * 3)  # kombu's fair cycle
    assert sorted((b["q"], b["n"]) for b, _ in got) == [
        ("a", 0),
        ("a", 1),
        ("a", 2),
        ("b", 0),
        ("b", 1),
        ("b", 2),
        ("b", 3),
    ]
    assert client.hlen("unacked") == 0


def test_a_queue_consumed_without_acks_is_not_recorded_as_unacked(redis_url: str):
    """Celery's control replies are consumed so (`no_ack`): the fetch pops them without an
    unacked entry, which no ack would ever remove and a restore would deliver again."""
    client = redis.Redis.from_url(redis_url)
    with kombu.Connection(redis_url, transport=broker.TRANSPORT) as conn:
        with conn.SimpleQueue("osiris.test.noack", no_ack=True) as queue:
            queue.put({"n": 1})
            message = queue.get(timeout=2)
        assert message.payload == {"n": 1}
        assert not message.delivery_tag.startswith(FETCHED_TAG_PREFIX)
        assert client.hlen("unacked") == 0 and client.zcard("unacked_index") == 0
        conn.default_channel.qos.restore_visible(num=10, interval=1)
    assert client.llen("osiris.test.noack") == 0


def test_where_redis_refuses_streams_the_consumer_falls_back_to_brpop(redis_url: str, caplog):
    """An ACL without stream commands: publishes still queue their message (without bells),
    and the consumer falls back to kombu's BRPOP, with a warning, and goes on consuming."""
    client = redis.Redis.from_url(redis_url)
    client.acl_setuser(
        "osiris-limited",
        enabled=True,
        passwords=["+pw"],
        keys=["*"],
        channels=["*"],
        commands=["+@all", "-xread", "-xadd"],
    )
    url = redis_url.replace("redis://", "redis://osiris-limited:pw@")
    try:
        with (
            kombu.Connection(url, transport=broker.TRANSPORT) as conn,
            conn.SimpleQueue("osiris.test.acl") as queue,
        ):
            with pytest.raises(queue.Empty):  # an empty queue: the consumer waits
                queue.get(timeout=1.5)
            got = []
            for n in range(3):
                queue.put({"n": n})
                message = queue.get(timeout=5)
                message.ack()
                got.append(message.payload["n"])
        assert got == [0, 1, 2]
        assert "consuming with kombu's BRPOP" in caplog.text
        assert "publishing without bells" in caplog.text
        assert client.hlen("unacked") == 0 and client.llen("osiris.test.acl") == 0
    finally:
        client.acl_deluser("osiris-limited")


def test_a_message_that_is_not_kombus_is_dropped_with_an_error_and_consuming_goes_on(
    redis_url: str, caplog
):
    client = redis.Redis.from_url(redis_url)
    client.lpush("osiris.test.garbage", b"not json at all")
    with (
        kombu.Connection(redis_url, transport=broker.TRANSPORT) as conn,
        conn.SimpleQueue("osiris.test.garbage") as queue,
    ):
        queue.put({"n": 1})
        message = queue.get(timeout=5)
        message.ack()
    assert message.payload == {"n": 1}
    assert "not a kombu message" in caplog.text and "not json at all" in caplog.text
    assert client.hlen("unacked") == 0 and client.llen("osiris.test.garbage") == 0


def test_a_bell_expires_after_its_last_ring(redis_url: str, connection):
    client = redis.Redis.from_url(redis_url)
    with connection.Producer() as producer:
        producer.publish({"n": 1}, routing_key="osiris.test.ttl")
    bell = connection.default_channel.bell_key("osiris.test.ttl")
    assert client.xlen(bell) == 1
    assert 0 < client.ttl(bell) <= BELL_TTL_S


@pytest.mark.parametrize("prefix", ["", "osiris-test:"])
def test_a_reply_read_after_its_message_was_restored_is_not_delivered_twice(
    redis_url: str, prefix: str
):
    """kombu leaves a reply unread while the worker has no credit. If that lasts past the
    visibility timeout, the message is restored to its queue; the late reply must not deliver
    a second copy of it."""
    client = redis.Redis.from_url(redis_url)
    queue = "osiris.test.late"
    options = {"visibility_timeout": 1, "global_keyprefix": prefix}
    with kombu.Connection(redis_url, transport=broker.TRANSPORT, transport_options=options) as conn:
        with conn.Producer() as producer:
            producer.publish({"n": 1}, routing_key=queue)
        got: list = []
        _consumer(conn, queue, got=got)
        conn.transport.cycle.on_poll_start()  # the fetch goes out; its reply waits unread
        assert wait_for(lambda: client.llen(prefix + queue) == 0, timeout_s=5)
        time.sleep(1.1)
        with kombu.Connection(
            redis_url, transport=broker.TRANSPORT, transport_options=options
        ) as other:
            other.default_channel.qos.restore_visible(num=10, interval=1)
        assert client.llen(prefix + queue) == 1
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            with contextlib.suppress(TimeoutError):
                conn.drain_events(timeout=0.5)
        for _, message in got:
            message.ack()
    assert [(body, m.delivery_info["redelivered"]) for body, m in got] == [({"n": 1}, True)]
    assert client.hlen(prefix + "unacked") == 0 and client.llen(prefix + queue) == 0
