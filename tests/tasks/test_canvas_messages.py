"""The messages a run's canvas is published as, read back from a real Redis broker: the ones
`submit_continuation` builds by hand are the ones Celery's canvas sends (ids aside), and the
evaluators' join (join.py) opened, completed, finished and swept on that Redis."""

from __future__ import annotations

import gc
import time

import orjson
import pytest
import redis
from pipeline_helpers import ACCEPTED_BATCH

from osiris_tasks import app, configure, initial_state
from osiris_tasks.adapters.join import DUE_KEY, JOIN_PREFIX, RunJoin
from osiris_tasks.tasks.canvas import continuation, submit_after_join, submit_continuation, topology
from osiris_tasks.tasks.celery_app import QUEUES
from osiris_tasks.tasks.node_tasks import sweep_overdue_joins
from osiris_tasks.workflow.graph import EVALUATORS
from osiris_tasks.workflow.state import RunStatus, apply_updates, run_status

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


def published(
    client: redis.Redis, publish, flush: bool = True
) -> tuple[list[dict], dict[str, int]]:
    """What `publish()` leaves in Redis (emptied first, with `flush`): the queued messages
    (headers and body, ids blanked, oldest first) and the chord sizes set on the result
    backend (by key suffix)."""
    if flush:
        client.flushdb()
    publish()
    messages = []
    for queue in QUEUES:
        for raw in reversed(client.lrange(queue, 0, -1)):  # LPUSH: the oldest is last
            message = orjson.loads(raw)
            headers = {k: v for k, v in message["headers"].items() if k not in ("origin",)}
            messages.append(
                {"queue": queue, "headers": headers, "body": orjson.loads(message["body"])}
            )
    sizes = {
        key.decode().rsplit(".", 1)[1]: int(client.get(key))
        for key in client.scan_iter("celery-taskset-meta-*.s")
    }
    return _without_ids(messages), sizes


def _without_ids(value):
    if isinstance(value, dict):
        return {
            k: "<id>" if k in FRESH_IDS and v is not None else _without_ids(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_without_ids(v) for v in value]
    return value


def test_the_evaluators_are_published_with_their_join_opened_first(broker):
    state = {**initial_state(ACCEPTED_BATCH), "proposal": {"side": "LONG", "quantity": 3}}
    joins, run_id = RunJoin(broker), state["run_id"]
    before = time.time()
    parts, sizes = published(
        broker, lambda: submit_continuation(app, EVALUATORS, state, joins=joins, join_deadline_s=60)
    )
    assert sizes == {}  # no chord on the result backend
    assert [(m["queue"], m["headers"]["task"]) for m in parts] == [
        ("osiris.sidecar", "osiris.evaluate_proposal"),
        ("osiris.sidecar", "osiris.score_proposal"),
    ]
    for message in parts:
        args, kwargs, embed = message["body"]
        assert (args, kwargs) == ([state], {"run_id": run_id, "member": True})
        assert embed["chord"] is None and embed["chain"] is None
    join = broker.hgetall(JOIN_PREFIX + run_id)
    assert orjson.loads(join[b"base"]) == orjson.loads(orjson.dumps(state))
    assert join[b"nodes"] == b"evaluate_proposal,score_proposal" and join[b"size"] == b"2"
    assert before + 60 <= broker.zscore(DUE_KEY, run_id) <= time.time() + 60


def test_the_part_that_completes_the_join_publishes_the_rest_once(broker):
    state = {**initial_state(ACCEPTED_BATCH), "proposal": {"side": "LONG", "quantity": 3}}
    joins, run_id = RunJoin(broker), state["run_id"]
    joins.open(run_id, state, EVALUATORS, 60)
    score = {"score": 0.7, "timings_ms": {"score_proposal": 2.0}}
    assessment = {"assessment": {"hermes_assessment": "ok"}, "timings_ms": {"evaluate": 1.0}}
    assert joins.arrive(run_id, "score_proposal", score) is None  # still waiting
    parts = joins.arrive(run_id, "evaluate_proposal", assessment)
    assert parts == {"score_proposal": score, "evaluate_proposal": assessment}
    assert joins.arrive(run_id, "score_proposal", score) is None  # redelivered: taken already
    merged = apply_updates(state, parts.items())
    rest, _ = published(broker, lambda: submit_after_join(app, state, parts.items()))
    canvas, _ = published(
        broker, lambda: continuation(app, ["publish_events"], merged).apply_async()
    )
    assert [m["headers"]["task"] for m in rest] == ["osiris.publish_events"]
    assert rest[0]["headers"] == canvas[0]["headers"]
    assert rest[0]["body"][:2] == canvas[0]["body"][:2]
    assert rest[0]["body"][0][0]["score"] == 0.7
    joins.open(run_id, state, EVALUATORS, 60)
    joins.finish(run_id)
    assert not broker.exists(JOIN_PREFIX + run_id) and broker.zscore(DUE_KEY, run_id) is None
    assert joins.arrive(run_id, "score_proposal", score) is None  # gone: nothing happens
    assert not broker.exists(JOIN_PREFIX + run_id)


def test_a_sweeper_publishes_an_overdue_run_with_an_error_for_each_missing_part(broker):
    state = {
        **initial_state(ACCEPTED_BATCH),
        "proposal": {"side": "LONG", "quantity": 3},
        "verdict": {"accepted": True, "reason": "ok", "rule": "within_limits"},
    }
    joins, run_id = RunJoin(broker), state["run_id"]
    joins.open(run_id, state, EVALUATORS, 60)
    joins.arrive(run_id, "evaluate_proposal", {"assessment": {"hermes_assessment": "ok"}})
    assert sweep_overdue_joins(app, joins, 60) == []  # not due yet
    broker.zadd(DUE_KEY, {run_id: time.time() - 1})
    other = RunJoin(broker)
    rest, _ = published(broker, lambda: sweep_overdue_joins(app, joins, 60), flush=False)
    assert other.take_overdue(run_id) is None  # taken, then finished: nothing left to take
    assert [m["headers"]["task"] for m in rest] == ["osiris.publish_events"]
    swept = rest[0]["body"][0][0]
    assert swept["assessment"] == {"hermes_assessment": "ok"}
    assert [(e["node"], e["type"]) for e in swept["errors"]] == [("score_proposal", "JoinError")]
    assert "deadline (60 s)" in swept["errors"][0]["message"]
    assert run_status(swept) == RunStatus.PARTIAL
    assert not broker.exists(JOIN_PREFIX + run_id) and broker.zscore(DUE_KEY, run_id) is None


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
        (s["task"], s["kwargs"]) for s in c_embed["chain"]
    ]
