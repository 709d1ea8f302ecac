"""The in-process runner: the same graph and nodes, compiled and invoked with LangGraph."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from osiris_tasks.workflow.binding import bind_nodes
from osiris_tasks.workflow.graph import build_graph

if TYPE_CHECKING:
    from osiris_tasks.adapters.resources import Resources

__all__ = ["InProcessRunner"]


class InProcessRunner:
    """Runs batches through the compiled graph in this process (no broker, no workers)."""

    def __init__(self, resources: Resources, *, speak=None):
        self._graph = build_graph(bind_nodes(resources, speak=speak)).compile()

    def run(self, state: Mapping[str, Any]) -> dict[str, Any]:
        """The final state of the run that starts with `state`."""
        return dict(self._graph.invoke(dict(state)))
