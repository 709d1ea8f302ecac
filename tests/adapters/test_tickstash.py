"""A large batch's ticks by reference: stashed in Redis by query_market, recorded whole by
record_run, and never made up when they are gone. Real Redis and LanceDB."""

from __future__ import annotations

import dataclasses

import orjson
import pytest
import redis
from pipeline_helpers import ACCEPTED_BATCH, LARGE_ACCEPTED_BATCH

from osiris_tasks import Resources, Settings, initial_state
from osiris_tasks.adapters.tickstash import KEY_PREFIX, TickStash
from osiris_tasks.errors import ConfigError, StoreError
from osiris_tasks.tools.embedded_redis import free_port
from osiris_tasks.workflow.binding import node_function
from osiris_tasks.workflow.state import apply_update


@pytest.fixture
def res(settings):
    resources = Resources.from_settings(settings)
    yield resources
    resources.close()


def market(res, batch, *, by_reference=True):
    state = initial_state(batch)
    update = node_function(res, "query_market", by_reference=by_reference)(state)
    return apply_update(state, update)


def record(res, state, *, final=True):
    update = node_function(res, "record_run", final=final)(state)
    return update, res.store.get_run(state["run_id"])


def stashed_keys(res) -> list[bytes]:
    return res.redis.keys(KEY_PREFIX + "*")


def test_a_large_batch_goes_by_reference_and_is_recorded_whole(res):
    state = market(res, LARGE_ACCEPTED_BATCH)
    assert state["ticks"] == [] and state["ticks_ref"] == KEY_PREFIX + state["run_id"]
    inline = market(res, LARGE_ACCEPTED_BATCH, by_reference=False)
    assert len(inline["ticks"]) == len(LARGE_ACCEPTED_BATCH) and "ticks_ref" not in inline
    assert orjson.loads(res.redis.get(state["ticks_ref"])) == inline["ticks"]

    update, row = record(res, state)
    assert update["recorded"] is True and "errors" not in update
    assert orjson.loads(row["input_query"]) == inline["ticks"]
    assert "ticks_ref" not in orjson.loads(row["final_output"])
    assert stashed_keys(res) == []  # forgotten once written


def test_a_small_batch_stays_in_the_state(res):
    state = market(res, ACCEPTED_BATCH)
    assert len(state["ticks"]) == len(ACCEPTED_BATCH) and "ticks_ref" not in state
    assert stashed_keys(res) == []


def test_ticks_gone_from_redis_are_recorded_as_an_error_not_made_up(res):
    state = market(res, LARGE_ACCEPTED_BATCH)
    res.redis.delete(state["ticks_ref"])
    update, row = record(res, state)
    assert update["recorded"] is True and update["status"] == row["status"] == "error"
    assert row["input_query"] == "[]"
    assert "gone from Redis" in row["error_message"]
    assert [e["node"] for e in update["errors"]] == ["record_run"]


def test_a_redelivered_record_after_the_ticks_were_forgotten_keeps_the_row(res):
    state = market(res, LARGE_ACCEPTED_BATCH)
    _, first = record(res, state)
    update, again = record(res, state)  # the key is gone: deleted by the first attempt
    assert update == {"recorded": True, "status": first["status"]}  # no error: it was recorded
    assert again == first and len(orjson.loads(again["input_query"])) == len(LARGE_ACCEPTED_BATCH)


def test_unreadable_ticks_are_retried_then_recorded_as_an_error(res):
    state = market(res, LARGE_ACCEPTED_BATCH)
    unreachable = redis.Redis(port=free_port(), socket_connect_timeout=1)
    dead = dataclasses.replace(res, stash=TickStash(unreachable, min_ticks=1))
    with pytest.raises(StoreError, match="could not read the batch's ticks"):
        node_function(dead, "record_run", final=False)(state)
    update = node_function(dead, "record_run", final=True)(state)
    row = res.store.get_run(state["run_id"])
    assert update["recorded"] is True and row["status"] == "error"
    assert "gone from Redis" in row["error_message"]


def test_redis_refusing_the_ticks_keeps_them_in_the_state():
    dead = redis.Redis(port=free_port(), socket_connect_timeout=1)
    stash = TickStash(dead, min_ticks=1)
    assert stash.put("run_x", "[]") is None  # logged; the caller keeps the ticks inline


def test_the_threshold_is_a_setting():
    assert Settings.from_env({"OSIRIS_TICKS_BY_REFERENCE_MIN": "0"}).ticks_by_reference_min == 0
    assert not TickStash(None, min_ticks=0).wants(10**6)
    assert TickStash(None, min_ticks=50).wants(50) and not TickStash(None, min_ticks=50).wants(49)
    with pytest.raises(ConfigError):
        Settings.from_env({"OSIRIS_TICKS_BY_REFERENCE_MIN": "-1"})
