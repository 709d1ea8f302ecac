"""The messages a run's canvas is published as, read back from a real Redis broker: the ones
`submit_continuation` builds by hand are the ones Celery's canvas sends (ids aside)."""

from __future__ import annotations

import gc

import orjson
import pytest
import redis
from pipeline_helpers import ACCEPTED_BATCH

from osiris_tasks import app, configure, initial_state
from osiris_tasks.canvas import continuation, submit_continuation, topology
from osiris_tasks.celery_app import QUEUES
from osiris_tasks.graph import EVALUATORS

# Fresh per publish: task ids, the chord's group id, the root of a message sent outside a task.
FRESH_IDS = ("id", "root_id", "task_id", "group", "group_id", "reply_to")


@pytest.fixture
def broker(settings):
    configure(app, settings)
    client = redis.Redis.from_url(settings.redis_url)
    yield client
    client.close()
    # The canvas's results subscribed outside a task (they are in reference cycles): let them
    # unsubscribe, and close the subscriber, while this Redis is up.
    gc.collect()
    app.backend.result_consumer.stop()


def published(client: redis.Redis, publish) -> tuple[list[dict], dict[str, int]]:
    """What `publish()` leaves in Redis: the queued messages (headers and body, ids blanked,
    oldest first) and the chord sizes set on the result backend (by key suffix)."""
    client.flushdb()
    publish()
    messages = []
    for queue in QUEUES:
        for raw in reversed(client.lrange(queue, 0, -1)):  # LPUSH: the oldest is last
            message = orjson.loads(raw)
            headers = {k: v for k, v in message["headers"].items() if k not in ("origin",)}
            messages.append({"queue": queue, "headers": headers,
                             "body": orjson.loads(message["body"])})
    sizes = {key.decode().rsplit(".", 1)[1]: int(client.get(key))
             for key in client.scan_iter("celery-taskset-meta-*.s")}
    return _without_ids(messages), sizes


def _without_ids(value):
    if isinstance(value, dict):
        return {k: "<id>" if k in FRESH_IDS and v is not None else _without_ids(v)
                for k, v in value.items()}
    if isinstance(value, list):
        return [_without_ids(v) for v in value]
    return value


def test_the_evaluators_chord_is_published_as_the_canvas_publishes_it(broker):
    state = {**initial_state(ACCEPTED_BATCH), "proposal": {"side": "LONG", "quantity": 3}}
    by_hand, by_hand_sizes = published(broker, lambda: submit_continuation(app, EVALUATORS, state))
    canvas, canvas_sizes = published(
        broker, lambda: continuation(app, EVALUATORS, state).apply_async())
    assert by_hand_sizes == canvas_sizes == {"s": 2}
    assert [m["headers"]["task"] for m in by_hand] == [
        "osiris.evaluate_proposal", "osiris.score_proposal"]
    assert [m["headers"]["group_index"] for m in by_hand] == [0, 1]
    for mine, celerys in zip(by_hand, canvas, strict=True):
        assert mine["headers"] == celerys["headers"]
        (args, kwargs, embed), (c_args, c_kwargs, c_embed) = mine["body"], celerys["body"]
        assert (args, kwargs) == (c_args, c_kwargs) == ([state], {"run_id": state["run_id"],
                                                                  "member": True})
        join, c_join = embed["chord"], c_embed["chord"]
        assert join["task"] == c_join["task"] == "osiris.publish_events"
        assert join["kwargs"] == c_join["kwargs"] == {"run_id": state["run_id"], "base": state}
        assert join["options"]["group_id"] == "<id>" and join["options"]["task_id"] == "<id>"
        # The rest of the path rides in the join's chain; Celery also freezes its task ids
        # (a chain's later steps get theirs when published, as submit_run's do).
        rest = [(s["task"], s["kwargs"]) for s in join["options"]["chain"]]
        assert rest == [(s["task"], s["kwargs"]) for s in c_join["options"]["chain"]] == [
            ("osiris.record_run", {"run_id": state["run_id"]})]
        assert {k: v for k, v in embed.items() if k != "chord"} == {
            k: v for k, v in c_embed.items() if k != "chord"}


def test_a_single_branch_is_published_as_the_canvas_publishes_it(broker):
    state = initial_state(ACCEPTED_BATCH)
    branch = ["publish_events"]
    assert topology().linear_from(branch[0]) == ["publish_events", "record_run"]
    by_hand, by_hand_sizes = published(broker, lambda: submit_continuation(app, branch, state))
    canvas, _ = published(broker, lambda: continuation(app, branch, state).apply_async())
    assert by_hand_sizes == {}
    assert [m["headers"]["task"] for m in by_hand] == ["osiris.publish_events"]
    assert by_hand[0]["headers"] == canvas[0]["headers"]
    (args, kwargs, embed), (c_args, c_kwargs, c_embed) = by_hand[0]["body"], canvas[0]["body"]
    assert (args, kwargs) == (c_args, c_kwargs)
    assert [(s["task"], s["kwargs"]) for s in embed["chain"]] == [
        (s["task"], s["kwargs"]) for s in c_embed["chain"]]
