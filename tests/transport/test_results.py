"""The result backend: Celery's Redis backend, minus subscriptions made while a task runs."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest
import redis
from celery import Celery
from celery.backends.redis import RedisBackend as CeleryRedisBackend
from celery.result import AsyncResult, GroupResult

from osiris_tasks.tasks.celery_app import app, configure
from osiris_tasks.transport import results


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://127.0.0.1:6379/0", f"{results.BACKEND}+redis://127.0.0.1:6379/0"),
        ("rediss://:pw@10.0.0.5:6380/0", f"{results.BACKEND}+rediss://:pw@10.0.0.5:6380/0"),
        ("cache+memory://", "cache+memory://"),
    ],
)
def test_redis_urls_select_this_backend(url: str, expected: str):
    assert results.backend_url(url) == expected


def test_the_configured_app_uses_it(settings):
    configure(app, settings)
    assert type(app.backend) is results.RedisBackend
    assert isinstance(app.backend, CeleryRedisBackend)
    assert app.backend.connparams["port"] == urlsplit(settings.result_backend).port


def channels(url: str) -> list[bytes]:
    return redis.Redis.from_url(url).pubsub_channels("celery-task-meta-*")


def test_a_chord_frozen_inside_a_task_subscribes_to_nothing(redis_url: str):
    other = Celery("results-test", backend=results.backend_url(redis_url))
    other.conf.task_always_eager = True

    @other.task
    def freeze_a_group() -> int:
        group = GroupResult(
            "group-1", [AsyncResult(f"part-{i}", app=other) for i in range(2)], app=other
        )
        return len(group.results)

    assert freeze_a_group.delay().get() == 2
    assert channels(redis_url) == []
    # Outside a task, a pending result is Celery's: subscribed, so `get()` can wait on it.
    GroupResult("group-2", [AsyncResult("part-x", app=other)], app=other)
    try:
        assert channels(redis_url) == [b"celery-task-meta-part-x"]
    finally:
        other.backend.result_consumer.stop()  # closes its Pub/Sub connection
