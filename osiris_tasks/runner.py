"""The in-process runner: the same graph and nodes, compiled and invoked with LangGraph."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any

from .graph import build_graph
from .ids import new_run_id
from .middleware import bind_nodes
from .resources import Resources

__all__ = ["InProcessRunner", "initial_state"]


def initial_state(
    ticks: Iterable[Mapping[str, Any]], *, run_id: str | None = None,
    created_at: float | None = None, ttl_s: float | None = None,
) -> dict[str, Any]:
    """The state a run starts with."""
    created_at = time.time() if created_at is None else created_at
    return {
        "run_id": run_id or new_run_id(created_at),
        "created_at": created_at,
        "ttl_s": ttl_s,
        "ticks": [dict(t) for t in ticks],
        "errors": [],
        "timings_ms": {},
    }


class InProcessRunner:
    """Runs batches through the compiled graph in this process (no broker, no workers)."""

    def __init__(self, resources: Resources, *, speak=None):
        self._graph = build_graph(bind_nodes(resources, speak=speak)).compile()

    def run(self, state: Mapping[str, Any]) -> dict[str, Any]:
        """The final state of the run that starts with `state`."""
        return dict(self._graph.invoke(dict(state)))
