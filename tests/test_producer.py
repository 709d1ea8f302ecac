"""The app's producer (declares a queue once per connection) and the broker's delivery tags."""

from __future__ import annotations

import multiprocessing

import kombu
import redis

from osiris_tasks import broker
from osiris_tasks.celery_app import DEFAULT_QUEUE, app, configure
from osiris_tasks.producer import Producer


def test_a_queue_is_declared_once_per_connection_and_again_when_kombu_forgets(settings,
                                                                             monkeypatch):
    """The first publish on a connection goes through kombu's declaration of the queue (which
    binds it to the channel); later ones neither bind nor declare it; when kombu clears its
    cache of declared entities (it does on every reconnect), the next publish goes through
    kombu's declaration again."""
    configure(app, settings)
    client = redis.Redis.from_url(settings.broker_url)
    bound: list[str] = []
    bind = kombu.Queue.bind
    monkeypatch.setattr(kombu.Queue, "bind",
                        lambda self, channel: bound.append(self.name) or bind(self, channel))

    def publish(producer) -> None:
        app.send_task("osiris.query_market", args=({},), producer=producer, ignore_result=True)

    with app.producer_or_acquire() as producer:
        assert isinstance(producer, Producer)
        producer.channel.connection.client.declared_entities.clear()
        publish(producer)
        assert DEFAULT_QUEUE in bound
        bound.clear()
        for _ in range(5):
            publish(producer)
        assert bound == []
        producer.channel.connection.client.declared_entities.clear()  # as after a reconnect
        publish(producer)
        assert DEFAULT_QUEUE in bound
    assert client.llen(DEFAULT_QUEUE) == 7
    client.close()


def _child_tag(queue) -> None:
    queue.put(broker._delivery_tags.next())


def test_delivery_tags_are_unique_and_a_forked_child_draws_its_own_prefix():
    tags = [broker._delivery_tags.next() for _ in range(1000)]
    assert len(set(tags)) == 1000
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_child_tag, args=(queue,))
    child.start()
    child_tag = queue.get(timeout=10)
    child.join(10)
    prefix = tags[0].rsplit("-", 1)[0]
    assert child_tag.rsplit("-", 1)[0] != prefix
    assert all(tag.startswith(prefix + "-") for tag in tags)
