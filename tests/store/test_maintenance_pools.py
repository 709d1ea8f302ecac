"""Scheduled store maintenance runs in its own process under every worker pool.

A prefork pool process is daemonic, and `multiprocessing` refuses to start a child from one:
with the maintenance process on `multiprocessing`, no maintenance ever ran under the default
pool. Only a real worker of each pool shows that it runs now.
"""

from __future__ import annotations

import dataclasses

import pytest
from conftest import wait_for
from pipeline_helpers import ACCEPTED_BATCH

from osiris_tasks import app, configure, initial_state
from osiris_tasks.store.runstore import RUNS_TABLE, RunStore
from osiris_tasks.tasks.canvas import submit_run

pytestmark = pytest.mark.integration

# Every second commit to a table schedules its maintenance...
MAINTAIN_EVERY_COMMITS = 2
# ...so these runs (a run row and an advice row each) schedule it several times, even when
# concurrent rows share a commit.
RUNS = 6
MAINTAINED = f"optimized {RUNS_TABLE} in the maintenance process"


@pytest.mark.parametrize("pool", ["prefork", "threads", "solo"])
def test_scheduled_maintenance_runs_in_its_process(pool, settings, worker_factory):
    settings = dataclasses.replace(settings, store_maintain_every_commits=MAINTAIN_EVERY_COMMITS)
    configure(app, settings)
    worker = worker_factory(settings, "--pool", pool, "--concurrency", "2")
    states = [initial_state(ACCEPTED_BATCH) for _ in range(RUNS)]
    for state in states:
        submit_run(app, state)

    store = RunStore(settings.lancedb_uri)
    try:
        wait_for(lambda: all(store.get_run(s["run_id"]) for s in states), timeout_s=30)
    finally:
        store.close()
    wait_for(lambda: any(MAINTAINED in line for line in list(worker.output)), timeout_s=20)

    output = "".join(worker.output)
    assert "daemonic processes" not in output
    assert "maintenance failed" not in output
