"""Publishing: kombu's Producer, without re-binding a queue it has already declared.

Before every publish Celery asks the producer to declare the task's queue (`maybe_declare`);
kombu declares it once per connection and remembers it (`declared_entities`), but only after
binding a copy of the `Queue` to the channel, twice (once outside its retry wrapper, once
inside, each a full `Queue(**as_dict())`), and building the retry wrapper: ~20% of the CPU of
submitting a run from the bridge (py-spy), and the same on every hop a worker publishes.
`Producer.maybe_declare` asks kombu's cache first, by the same key kombu uses (`hash(entity)`,
a queue's or exchange's name), and leaves everything else to kombu: the first declaration on
a connection, the retries, a reconnect (kombu clears the cache when the connection is
re-established, so the queue is declared again).

`AMQP` gives the app's producer pool this producer (`Celery(amqp=AMQP_CLS)`).
"""

from __future__ import annotations

from typing import Any

import kombu
from celery.app import amqp

__all__ = ["AMQP", "AMQP_CLS", "Producer"]

# For `Celery(amqp=...)`.
AMQP_CLS = "osiris_tasks.producer:AMQP"


class Producer(kombu.Producer):
    """A producer whose `maybe_declare` of an entity declared on this connection costs a set
    lookup (see the module docstring)."""

    def maybe_declare(self, entity: Any, retry: bool = False, **retry_policy: Any) -> Any:
        if entity and entity.name and entity.can_cache_declaration:
            connection = getattr(self.channel, "connection", None)
            client = getattr(connection, "client", None)
            if client is not None and hash(entity) in client.declared_entities:
                return False
        return super().maybe_declare(entity, retry, **retry_policy)


class AMQP(amqp.AMQP):
    """Celery's AMQP API, publishing with `Producer`."""

    Producer = Producer

    @property
    def producer_pool(self) -> Any:
        pool = super().producer_pool
        pool.Producer = Producer  # kombu's pool builds its producers lazily, from this class
        return pool
