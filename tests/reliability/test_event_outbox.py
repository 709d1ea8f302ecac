"""Redis outages across `publish_events` on a real worker: every run's `advice.generated` still
reaches the events stream, exactly once, whatever the outages interrupted.

The worker, the broker and the events share one Redis of the test's own (fsync-always AOF, so
the broker's messages and the stream survive the restarts). Runs go in a steady stream; Redis is
killed (SIGKILL) for 1.5 s several times while they run. An outage that falls inside
`publish_events` leaves the run's events `queued` in its row (counted); `record_run` queues
them in the outbox and the worker's relay publishes them.
"""

from __future__ import annotations

import time
from collections import Counter

import orjson
import pytest
import redis
from conftest import wait_for
from pipeline_helpers import ACCEPTED_BATCH, REJECTED_BATCH, own_settings, wait_recorded
from reliability_report import record

from osiris_tasks import app, configure, initial_state
from osiris_tasks.keys import ADVICE_CHANNEL
from osiris_tasks.store.runstore import RunStore
from osiris_tasks.tasks.canvas import submit_run
from osiris_tasks.tools.reference_sidecar import Faults

EVENTS_STREAM = "test:events"
RUNS, OUTAGES, OUTAGE_S = 24, 4, 1.5


def advice_ids(client: redis.Redis) -> Counter:
    entries = client.xrange(EVENTS_STREAM)
    return Counter(
        f[b"event_id"].decode() for _, f in entries if f[b"channel"] == ADVICE_CHANNEL.encode()
    )


@pytest.mark.integration
def test_redis_outages_across_publish_events_lose_no_event(
    persistent_redis, sidecar_server, sidecar_url, tmp_path, worker_factory
):
    server = persistent_redis
    settings = own_settings(
        server.url, sidecar_url, tmp_path, visibility_timeout_s=30, events_stream=EVENTS_STREAM
    )
    sidecar_server.faults = Faults(latency_ms=150)
    configure(app, settings)
    worker_factory(
        settings, "--concurrency", "2", env_extra={"OSIRIS_EVENTS_STREAM": EVENTS_STREAM}
    )
    states = [initial_state(ACCEPTED_BATCH if i % 2 else REJECTED_BATCH) for i in range(RUNS)]
    run_ids = [s["run_id"] for s in states]
    for state in states:
        submit_run(app, state)
    for _ in range(OUTAGES):
        time.sleep(1.0)
        server.stop(kill=True)
        time.sleep(OUTAGE_S)
        server.start()
    store = RunStore(settings.lancedb_uri)
    client = redis.Redis.from_url(server.url)
    try:
        wait_recorded(store, run_ids, 240)
        wanted = Counter(f"{r}:{ADVICE_CHANNEL}" for r in run_ids)
        wait_for(lambda: advice_ids(client) == wanted, timeout_s=30)
        queued = sum(
            any(e.get("queued") for e in orjson.loads(store.get_run(r)["events"])) for r in run_ids
        )
    finally:
        store.close()
        client.close()
    record(
        "Redis outage across publish_events",
        runs=RUNS,
        outages=OUTAGES,
        outage_s=OUTAGE_S,
        runs_with_queued_events=queued,
        advice_events_in_stream=sum(wanted.values()),
        lost=0,
        twice=0,
    )


@pytest.mark.integration
def test_events_redis_refuses_are_queued_and_relayed_once_it_accepts(
    settings, sidecar_server, worker_factory
):
    """Deterministic: Redis refuses every PUBLISH (an ACL: `-publish`; nothing else of Celery's
    here publishes) while the runs go through, so each run's publish_events fails; once the ACL
    is lifted the workers' relay publishes every queued event, once."""
    settings = settings.with_(events_stream=EVENTS_STREAM)
    configure(app, settings)
    client = redis.Redis.from_url(settings.redis_url)
    client.acl_setuser("default", enabled=True, commands=["-publish"])
    try:
        worker_factory(settings, env_extra={"OSIRIS_EVENTS_STREAM": EVENTS_STREAM})
        states = [initial_state(ACCEPTED_BATCH if i % 2 else REJECTED_BATCH) for i in range(6)]
        run_ids = [s["run_id"] for s in states]
        for state in states:
            submit_run(app, state)
        store = RunStore(settings.lancedb_uri)
        try:
            wait_recorded(store, run_ids, 120)
            rows = [store.get_run(r) for r in run_ids]
        finally:
            store.close()
        assert all(all(e.get("queued") for e in orjson.loads(row["events"])) for row in rows), (
            "every run's events were refused, and queued"
        )
        assert advice_ids(client) == Counter()
        assert client.llen("osiris:events:outbox") > 0
    finally:
        client.acl_setuser("default", enabled=True, commands=["+publish"])
    wanted = Counter(f"{r}:{ADVICE_CHANNEL}" for r in run_ids)
    wait_for(lambda: advice_ids(client) == wanted, timeout_s=30)
    time.sleep(2)  # more relay passes: nothing is sent twice
    assert advice_ids(client) == wanted
    assert client.llen("osiris:events:outbox") == 0
    client.close()
