"""The evaluators' join (join.py) on real workers: a part lost with its worker is recorded by a
sweeper after the join's deadline, and the part's late redelivery adds no second record."""

from __future__ import annotations

import os
import signal

import pytest
from conftest import wait_for
from pipeline_helpers import ACCEPTED_BATCH, own_settings, task_events, wait_recorded

from osiris_tasks import app, configure, initial_state
from osiris_tasks.adapters.events import MARKER_PREFIX, event_id
from osiris_tasks.adapters.join import DUE_KEY, JOIN_PREFIX
from osiris_tasks.store.runstore import RunStore
from osiris_tasks.tasks.canvas import submit_run
from osiris_tasks.tools.reference_sidecar import Faults
from osiris_tasks.workflow.state import RunStatus

JOIN_DEADLINE_S = 2.0
VISIBILITY_S = 10


def _succeeded(worker, task: str) -> bool:
    return any(name == task and what == "succeeded" for name, _, what in task_events(worker.output))


@pytest.mark.integration
def test_a_part_lost_with_its_worker_is_recorded_by_the_sweeper_once(
    redis_url, sidecar_server, sidecar_url, tmp_path, worker_factory
):
    settings = own_settings(
        redis_url,
        sidecar_url,
        tmp_path,
        visibility_timeout_s=VISIBILITY_S,
        sidecar_retry_budget_s=8.0,
        sidecar_read_timeout_s=8.0,
        join_deadline_s=JOIN_DEADLINE_S,
    )
    env = {"OSIRIS_JOIN_DEADLINE_S": str(JOIN_DEADLINE_S)}
    configure(app, settings)
    # The score call outlives the sidecar worker, which is killed while it waits.
    sidecar_server.faults = Faults(latency_ms=6000, paths=("/score",))
    default = worker_factory(settings, "-Q", "osiris.default", env_extra=env)
    sidecar = worker_factory(settings, "-Q", "osiris.sidecar", "-c", "2", env_extra=env)
    state = initial_state(ACCEPTED_BATCH)
    run_id = state["run_id"]
    submit_run(app, state)
    wait_for(lambda: _succeeded(sidecar, "osiris.evaluate_proposal"), timeout_s=30)
    os.killpg(sidecar.proc.pid, signal.SIGKILL)
    sidecar.proc.wait(10)

    store = RunStore(settings.lancedb_uri)
    try:
        wait_recorded(store, [run_id], 30, default)
        row = store.get_run(run_id)
        assert row["status"] == RunStatus.PARTIAL
        assert "score_proposal: no outcome within the join's deadline" in row["error_message"]
        assert row["assessment"]  # the part that arrived is kept
        assert "join overdue, parts missing: score_proposal" in "".join(default.output)
        client = app.backend.client
        assert client.exists(MARKER_PREFIX + event_id(run_id, "advice.generated"))
        assert not client.exists(JOIN_PREFIX + run_id) and client.zscore(DUE_KEY, run_id) is None

        # The killed worker's score task comes back after the visibility timeout, runs, and
        # finds its join gone: nothing is published or recorded again.
        sidecar_server.faults = Faults()
        late = worker_factory(settings, "-Q", "osiris.sidecar", env_extra=env)
        wait_for(lambda: _succeeded(late, "osiris.score_proposal"), timeout_s=4 * VISIBILITY_S)
        assert f"run_id={run_id} score_proposal reached its join: gone" in "".join(late.output)
        assert [r["run_id"] for r in store.iter_runs()] == [run_id]
        assert len(store.get_advice(run_id)) == 1
    finally:
        store.close()
