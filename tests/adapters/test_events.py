"""Events across a Redis outage: what `publish_events` cannot send goes on with the run, into
the outbox in `record_run`, and out through the relay, once; the events stream mirror.

A real Redis of the test's own (`persistent_redis`) is stopped (SIGKILL) just before
`publish_events` and started again before `record_run`, as the Celery path meets it when an
outage outlasts the client's retries.
"""

from __future__ import annotations

import logging
import time

import orjson
import pytest
import redis
from conftest import wait_for
from pipeline_helpers import ACCEPTED_BATCH

from osiris_tasks import InProcessRunner, Resources, initial_state
from osiris_tasks.adapters.deadletter import DeadLetter
from osiris_tasks.adapters.events import EventBus, EventOutbox
from osiris_tasks.adapters.resources import redis_client
from osiris_tasks.errors import StoreError
from osiris_tasks.keys import ADVICE_CHANNEL, PROPOSAL_ASSESSED_CHANNEL, PROPOSAL_CREATED_CHANNEL
from osiris_tasks.store.runstore import RunStore
from osiris_tasks.workflow.nodes import publish_events, record_run
from osiris_tasks.workflow.state import apply_update

EVENTS_STREAM = "test:events"
CHANNELS = (ADVICE_CHANNEL, PROPOSAL_CREATED_CHANNEL, PROPOSAL_ASSESSED_CHANNEL)


@pytest.fixture
def finished(settings) -> dict:
    """An accepted, assessed run's state, as it reaches publish_events (on the session Redis)."""
    res = Resources.from_settings(settings)
    try:
        state = InProcessRunner(res).run(initial_state(ACCEPTED_BATCH))
    finally:
        res.close()
    assert state.get("assessment"), state.get("errors")
    return {k: v for k, v in state.items() if k not in ("events", "recorded")}


class Listener:
    def __init__(self, url: str):
        self.pubsub = redis.Redis.from_url(url).pubsub(ignore_subscribe_messages=True)
        self.pubsub.subscribe(*CHANNELS)
        self.pubsub.get_message(timeout=1)

    def received(self, within_s: float = 1.0) -> list[dict]:
        out, deadline = [], time.monotonic() + within_s
        while (left := deadline - time.monotonic()) > 0:
            message = self.pubsub.get_message(timeout=left)
            if message is not None:
                out.append(orjson.loads(message["data"]))
        return out


def test_an_outage_across_publish_events_delays_the_events_and_loses_none(
    finished, persistent_redis, tmp_path
):
    server = persistent_redis
    client = redis_client(server.url)
    bus, outbox = EventBus(client, stream=EVENTS_STREAM), EventOutbox(client)
    server.stop(kill=True)
    update = publish_events(finished, bus=bus)  # Redis is gone: nothing raised, nothing lost
    assert [e["channel"] for e in update["unsent_events"]] == list(CHANNELS)
    assert all(ref["queued"] for ref in update["events"])
    server.start()
    listener = Listener(server.url)
    store = RunStore(str(tmp_path / "outage-store"))
    try:
        done = record_run(
            apply_update(finished, update),
            store=store,
            deadletter=DeadLetter(client),
            outbox=outbox,
            bus=bus,
        )
        assert done["recorded"]
        row = store.get_run(finished["run_id"])
    finally:
        store.close()
    got = listener.received()
    assert sorted(m["event_id"] for m in got) == sorted(
        f"{finished['run_id']}:{c}" for c in CHANNELS
    )
    assert len(outbox) == 0 and outbox.relay(bus) == 0
    assert listener.received() == []  # relayed once
    mirrored = client.xrange(EVENTS_STREAM)
    assert [f[b"channel"].decode() for _, f in mirrored] == list(CHANNELS)
    assert "unsent_events" not in orjson.loads(row["final_output"])
    assert all(e.get("queued") for e in orjson.loads(row["events"])), row["events"]


def test_redis_still_down_at_record_run_retries_then_logs_the_events(
    finished, persistent_redis, tmp_path, caplog
):
    server = persistent_redis
    client = redis_client(server.url)
    bus, outbox = EventBus(client), EventOutbox(client)
    server.stop(kill=True)
    state = apply_update(finished, publish_events(finished, bus=bus))
    store = RunStore(str(tmp_path / "outage-store"))
    kwargs = {"store": store, "deadletter": DeadLetter(client), "outbox": outbox, "bus": bus}
    try:
        with pytest.raises(StoreError, match="outbox"):
            record_run(state, final=False, **kwargs)  # the task retries
        with caplog.at_level(logging.CRITICAL):
            record_run(state, final=True, **kwargs)
    finally:
        store.close()
    line = next(r.getMessage() for r in caplog.records if "NOT queued" in r.getMessage())
    assert f"{finished['run_id']}:{ADVICE_CHANNEL}" in line  # never a silent drop


def test_the_events_stream_gets_each_event_once(redis_url):
    client = redis.Redis.from_url(redis_url)
    bus = EventBus(client, stream=EVENTS_STREAM, stream_maxlen=1000)
    for _ in range(2):
        bus.publish_once(ADVICE_CHANNEL, {"status": "success"}, run_id="run_x")
    entries = client.xrange(EVENTS_STREAM)
    assert len(entries) == 1
    fields = entries[0][1]
    assert fields[b"event_id"] == b"run_x:advice.generated"
    assert orjson.loads(fields[b"event"])["status"] == "success"


def test_a_worker_relays_the_outbox(settings, worker_factory):
    """What record_run queued while the relay could not run goes out from a worker."""
    client = redis.Redis.from_url(settings.redis_url)
    event = EventBus.encode(ADVICE_CHANNEL, {"status": "success"}, run_id="run_relayed")
    EventOutbox(client).put([event])
    listener = Listener(settings.redis_url)
    worker_factory(
        settings.with_(events_stream=EVENTS_STREAM),
        env_extra={"OSIRIS_EVENTS_STREAM": EVENTS_STREAM},
    )
    got = wait_for(listener.received, timeout_s=30)
    assert [m["event_id"] for m in got] == ["run_relayed:advice.generated"]
    wait_for(lambda: client.xlen(EVENTS_STREAM) == 1, timeout_s=5)
