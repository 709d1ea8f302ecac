"""Celery's Redis result backend, without the result subscriptions a running task leaves behind.

A router task submits the evaluators as a chord. Freezing the chord's group registers each
part's result as pending with the backend (`GroupResult` -> `barrier` -> `AsyncResult.then`),
and the Redis backend subscribes to every pending result's channel on its Pub/Sub connection.
Only a consumer that drains that connection unsubscribes again, and no worker does
(celery/celery#4824, #3812): each run left two subscriptions in every worker thread, for
good — measured, 610 channels after 305 runs — at the cost of a SUBSCRIBE per part.

Nothing running inside a task can wait on a result (Celery refuses `result.get()` there, and
our tasks never wait), so this backend registers no pending result while a task runs.
Everywhere else (`result.get()` in a client, a test, a benchmark) it is Celery's backend.
`celery_config()` selects it for `redis://` and `rediss://` result backends.
"""

from __future__ import annotations

from typing import Any

from celery._state import get_current_task
from celery.backends.redis import RedisBackend as CeleryRedisBackend

__all__ = ["BACKEND", "RedisBackend", "backend_url"]

# Prefixed to a redis:// or rediss:// URL in Celery's `result_backend` setting.
BACKEND = "osiris_tasks.transport.results:RedisBackend"


def backend_url(url: str) -> str:
    """Celery's `result_backend` for `url`: this backend for Redis URLs, `url` otherwise."""
    scheme = url.partition("://")[0]
    return f"{BACKEND}+{url}" if scheme in ("redis", "rediss") else url


class RedisBackend(CeleryRedisBackend):
    """Celery's Redis backend; results that become pending inside a task are not subscribed."""

    def add_pending_result(
        self, result: Any, weak: bool = False, start_drainer: bool = True
    ) -> Any:
        if get_current_task() is not None:
            return result
        return super().add_pending_result(result, weak=weak, start_drainer=start_drainer)
