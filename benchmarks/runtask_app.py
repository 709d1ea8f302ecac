"""A design the project does not ship, measured against the one it does: one Celery task per
run, running the whole graph in the worker with the in-process runner (the same compiled graph,
nodes and resources as `InProcessRunner`, LanceDB's group commit shared by the worker's
threads). What the fewest hops per run would give on the same machine; it gives up what one
task per node is for (a node's retries, its queue and pool, the evaluators in parallel on other
workers, a task per node in Flower). Run with
`celery -A benchmarks.runtask_app worker -Q osiris.default --pool threads`."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

from osiris_tasks import app
from osiris_tasks.keys import DEFAULT_QUEUE
from osiris_tasks.tasks.node_tasks import resources
from osiris_tasks.workflow.runner import InProcessRunner

__all__ = ["app", "run_graph", "submit"]

TASK_NAME = "bench.run_graph"

_lock = threading.Lock()
_runner: tuple[Any, InProcessRunner] | None = None


def _runner_of_this_process() -> InProcessRunner:
    """One compiled graph per worker process, rebuilt if its resources were."""
    global _runner
    res = resources()
    with _lock:
        if _runner is None or _runner[0] is not res:
            _runner = (res, InProcessRunner(res))
        return _runner[1]


@app.task(name=TASK_NAME, ignore_result=True)
def run_graph(state: Mapping[str, Any], run_id: str) -> None:
    _runner_of_this_process().run(state)


def submit(state: Mapping[str, Any]) -> None:
    """Submit one run: its one task, the run_id as its task id (as `submit_run` does)."""
    run_graph.apply_async(
        args=(dict(state),),
        kwargs={"run_id": state["run_id"]},
        queue=DEFAULT_QUEUE,
        task_id=state["run_id"],
    )
