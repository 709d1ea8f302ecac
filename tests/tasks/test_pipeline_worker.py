"""The pipeline on a real worker process over a real Redis broker and result backend.

Serialization, routing to the three queues, the chord on a real backend and the events on
Pub/Sub are only proven here; eager mode hides all of them.
"""

from __future__ import annotations

import base64

import orjson
import pytest
import redis
from conftest import wait_for
from pipeline_helpers import ACCEPTED_BATCH, LARGE_ACCEPTED_BATCH, REJECTED_BATCH, EventListener

from osiris_tasks import (
    InProcessRunner,
    Resources,
    app,
    build_canvas,
    configure,
    initial_state,
    submit_run,
    submit_runs,
)
from osiris_tasks.store.runstore import RunStore
from osiris_tasks.workflow.state import comparable

pytestmark = pytest.mark.integration
CHANNELS = ("advice.generated", "phi3.proposal.created", "phi3.proposal.assessed")


@pytest.fixture
def pipeline(settings, worker_factory):
    configure(app, settings)
    worker_factory(settings)
    listener = EventListener(settings.redis_url, *CHANNELS)
    store = RunStore(settings.lancedb_uri)
    yield settings, listener, store
    listener.close()
    store.close()


def finished(store, run_id, timeout_s=60):
    return wait_for(lambda: store.get_run(run_id), timeout_s=timeout_s)


def test_accepted_run_on_a_real_worker(pipeline):
    settings, listener, store = pipeline
    state = initial_state(ACCEPTED_BATCH)
    submit_run(app, state)
    row = finished(store, state["run_id"])
    assert row["status"] == "success"
    assert row["transaction_id"].startswith("tx_")
    wait_for(lambda: len(listener.of(state["run_id"])) == 3, timeout_s=10)
    advice = listener.of(state["run_id"], "advice.generated")[0]
    assert advice["status"] == "success" and advice["risk_gate_verdict"]["accepted"]
    assert advice["event_id"] == f"{state['run_id']}:advice.generated"
    created = listener.of(state["run_id"], "phi3.proposal.created")[0]
    assert created["orchestrator_run_id"] == state["run_id"]
    assert created["transaction_id"] == row["transaction_id"]
    assessed = listener.of(state["run_id"], "phi3.proposal.assessed")[0]
    assert assessed["proposal_transaction_id"] == row["transaction_id"]
    assert assessed["assessment_text"] == row["assessment"]
    assert row["score"] is not None  # both evaluators reached the join (in Redis)...
    # ...and no task stored a result nothing reads.
    assert not redis.Redis.from_url(settings.result_backend).keys("celery-task-meta-*")


def test_rejected_run_on_a_real_worker(pipeline):
    settings, listener, store = pipeline
    state = initial_state(REJECTED_BATCH)
    submit_run(app, state)
    row = finished(store, state["run_id"])
    assert row["status"] == "success_risk_rejected" and row["rule"] == "position_size_limit"
    wait_for(lambda: listener.of(state["run_id"]), timeout_s=10)
    assert [c for c, m in listener.messages if m["run_id"] == state["run_id"]] == [
        "advice.generated"
    ]


def test_many_runs_each_recorded_once(pipeline):
    settings, listener, store = pipeline
    states = [initial_state(ACCEPTED_BATCH if i % 2 else REJECTED_BATCH) for i in range(12)]
    for state in states:
        submit_run(app, state)
    for state in states:
        finished(store, state["run_id"], timeout_s=120)
    assert store.count("orchestrator_runs") == 12
    assert store.count("advice") == 12
    # The 6 accepted runs' chords left no result subscription behind in the worker.
    assert redis.Redis.from_url(settings.result_backend).pubsub_channels("celery-task-meta-*") == []


@pytest.mark.parametrize(
    "batch",
    [ACCEPTED_BATCH, REJECTED_BATCH, LARGE_ACCEPTED_BATCH],
    ids=["accepted", "rejected", "large, ticks by reference"],
)
def test_parity_in_process_vs_celery(pipeline, tmp_path, batch):
    """The same batch against the same sidecar gives the same final state both ways (a large
    batch's ticks go through Redis on the Celery path, and stay in memory in process)."""
    settings, listener, store = pipeline
    state = initial_state(batch)
    with StashWatch(settings.redis_url) as stash:
        submit_run(app, state)
        celery_row = finished(store, state["run_id"])
        # Only the large batch goes through Redis; its key is deleted once the run is recorded.
        expected = ["set", "expire", "del"] if batch is LARGE_ACCEPTED_BATCH else []
        wait_for(lambda: stash.events(state["run_id"]) == expected, timeout_s=5)

    local = Resources.from_settings(settings.with_(lancedb_uri=str(tmp_path / "inproc")))
    final = InProcessRunner(local).run(state)
    local_row = local.store.get_run(state["run_id"])
    local.close()

    def view(row):
        return comparable(orjson.loads(row["final_output"]))

    assert view(celery_row) == view(local_row)
    for column in ("prompt", "raw_completion", "input_query", "status", "proposal"):
        assert celery_row[column] == local_row[column]
    assert final["status"] == celery_row["status"]


class StashWatch:
    """What happens to the runs' stashed ticks (`osiris:ticks:*`), from Redis keyspace
    notifications, switched on for the watch and restored after it."""

    def __init__(self, url: str):
        self._client = redis.Redis.from_url(url)
        self._saved = self._client.config_get("notify-keyspace-events")["notify-keyspace-events"]
        self._client.config_set("notify-keyspace-events", "Kg$")
        self._pubsub = self._client.pubsub()
        self._pubsub.psubscribe("__keyspace@*__:osiris:ticks:*")
        self._seen: list[tuple[str, str]] = []

    def __enter__(self) -> StashWatch:
        return self

    def __exit__(self, *exc) -> None:
        self._pubsub.close()
        self._client.config_set("notify-keyspace-events", self._saved)
        self._client.close()

    def events(self, run_id: str) -> list[str]:
        """The events on `run_id`'s key so far, in order."""
        while message := self._pubsub.get_message(timeout=0.05):
            if message["type"] == "pmessage":
                self._seen.append((message["channel"].decode(), message["data"].decode()))
        return [event for channel, event in self._seen if channel.endswith(run_id)]


def _queued(client: redis.Redis, queue: str) -> list[dict]:
    """The messages waiting in `queue`, oldest first, bodies decoded."""
    messages = [orjson.loads(raw) for raw in reversed(client.lrange(queue, 0, -1))]
    for message in messages:
        body = message["body"]
        if message["properties"].get("body_encoding") == "base64":
            body = base64.b64decode(body)
        message["body"] = orjson.loads(body)
    return messages


def test_a_submitted_run_is_the_message_its_chain_would_send(settings):
    """`submit_run` builds the entry chain's message without Celery's chain machinery; it must
    be what `build_canvas(...).apply_async()` sends, but for the ids the chain pre-assigns to
    its later steps (a worker assigns them as it publishes each step)."""
    configure(app, settings)
    client = redis.Redis.from_url(settings.redis_url)
    ours = initial_state(ACCEPTED_BATCH)
    theirs = dict(ours)
    submit_run(app, ours)
    build_canvas(app, theirs).apply_async(ignore_result=True)

    sent, expected = _queued(client, "osiris.default")
    for message in (sent, expected):
        del message["properties"]["delivery_tag"]
        for step in message["body"][2]["chain"]:
            step["options"].pop("task_id", None)
            step["options"].pop("reply_to", None)
    assert [s["task"] for s in sent["body"][2]["chain"]] == [
        "osiris.risk_management",
        "osiris.generate_proposal",
    ]
    assert sent == expected
    client.close()


def test_runs_submitted_together_all_finish(pipeline):
    settings, listener, store = pipeline
    states = [
        initial_state(ACCEPTED_BATCH),
        initial_state(REJECTED_BATCH),
        initial_state(ACCEPTED_BATCH),
    ]

    results = submit_runs(app, states)

    assert [r.id for r in results] == [s["run_id"] for s in states]
    statuses = [finished(store, state["run_id"])["status"] for state in states]
    assert statuses == ["success", "success_risk_rejected", "success"]
    assert store.count("orchestrator_runs") == 3


def _loaded_lancedb(pid: int) -> bool:
    with open(f"/proc/{pid}/maps") as maps:
        return "_lancedb" in maps.read()


def test_sidecar_workers_never_load_lancedb(settings, worker_factory):
    """The production layout: a worker that only calls the sidecar runs its nodes without
    importing lancedb (~90 MB of RSS), while the default queue's worker loads it at start."""
    configure(app, settings)
    sidecar = worker_factory(
        settings, "-Q", "osiris.sidecar,osiris.tts", "--pool", "threads", "--concurrency", "4"
    )
    default = worker_factory(
        settings, "-Q", "osiris.default", "--pool", "threads", "--concurrency", "4"
    )
    assert _loaded_lancedb(default.proc.pid)
    states = [initial_state(ACCEPTED_BATCH), initial_state(REJECTED_BATCH)]
    submit_runs(app, states)
    store = RunStore(settings.lancedb_uri)
    rows = [finished(store, state["run_id"]) for state in states]
    store.close()
    assert [row["status"] for row in rows] == ["success", "success_risk_rejected"]
    assert rows[0]["score"] is not None  # the sidecar worker ran its nodes
    assert not _loaded_lancedb(sidecar.proc.pid)


def test_prefork_children_load_lancedb_after_the_fork(settings, worker_factory):
    """A prefork worker's parent never loads lancedb, so no child forks with LanceDB's runtime
    running (lancedb warns its fork support is experimental); the children load it to write."""
    configure(app, settings)
    worker = worker_factory(settings, "--pool", "prefork", "--concurrency", "2")
    state = initial_state(ACCEPTED_BATCH)
    submit_run(app, state)
    store = RunStore(settings.lancedb_uri)
    row = finished(store, state["run_id"])
    store.close()
    assert row["status"] == "success"
    assert not _loaded_lancedb(worker.proc.pid)
    assert not any("fork support is experimental" in line for line in worker.output)
