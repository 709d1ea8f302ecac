"""The broker's queue layout on a real Redis: each queue on an exchange of its own, bound by its
own name, so an exchange and a routing key always name exactly one queue."""

from __future__ import annotations

import redis

from osiris_tasks.keys import DEFAULT_QUEUE, QUEUES
from osiris_tasks.settings import Settings
from osiris_tasks.tasks.celery_app import app, configure, drop_stale_bindings


def declared(url: str):
    configure(app, Settings.from_env({}, redis_url=url, broker_url=url, result_backend=url))
    conn = app.connection_for_write()
    channel = conn.default_channel
    for queue in app.amqp.queues.values():
        queue(channel).declare()
    return conn, channel


def test_each_queue_has_its_own_exchange_and_binding(redis_url):
    conn, channel = declared(redis_url)
    client = redis.Redis.from_url(redis_url)
    try:
        for name in QUEUES:
            queue = app.amqp.queues[name]
            assert (queue.exchange.name, queue.routing_key) == (name, name)
            members = client.smembers(f"_kombu.binding.{name}")
            assert members == {f"{name}\x06\x16\x06\x16{name}".encode()}
            assert set(channel._lookup(name, name)) == {name}
        for name in QUEUES:  # a task sent to a queue lands in that queue only
            app.send_task("osiris.noop", queue=name)
        assert [client.llen(name) for name in QUEUES] == [1, 1, 1]
    finally:
        conn.release()
        client.close()


def test_bindings_of_the_one_exchange_layout_are_dropped(redis_url):
    conn, channel = declared(redis_url)
    client = redis.Redis.from_url(redis_url)
    try:
        for name in QUEUES[1:]:  # what the layout before per-queue exchanges left in Redis
            for table in ("_kombu.binding.", "_kombu.binding_permanent."):
                client.sadd(table + DEFAULT_QUEUE, f"{DEFAULT_QUEUE}\x06\x16\x06\x16{name}")
        assert set(channel._lookup(DEFAULT_QUEUE, DEFAULT_QUEUE)) != {DEFAULT_QUEUE}
        assert drop_stale_bindings(client) == 2 * (len(QUEUES) - 1)
        assert set(channel._lookup(DEFAULT_QUEUE, DEFAULT_QUEUE)) == {DEFAULT_QUEUE}
        assert drop_stale_bindings(client) == 0
    finally:
        conn.release()
        client.close()
