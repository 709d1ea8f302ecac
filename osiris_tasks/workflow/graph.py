"""The workflow's shape, defined once as a LangGraph graph.

Both runners are derived from `build_graph()`: the in-process runner compiles it, and
`Topology.from_graph()` reads the compiled graph's edges and routers for the Celery canvas.

    START -> query_market -> generate_proposal -> risk_management
    risk_management --(accepted, no error)--> evaluate_proposal + score_proposal (parallel)
    risk_management --(otherwise)-----------> publish_events
    evaluate_proposal, score_proposal -> publish_events -> record_run -> END
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from langgraph.graph import END, START, StateGraph

from osiris_tasks.workflow.registry import NODE_NAMES
from osiris_tasks.workflow.state import RunState

__all__ = ["NODE_NAMES", "Topology", "build_graph", "route_after_risk"]

EVALUATORS = ["evaluate_proposal", "score_proposal"]

NodeFn = Callable[[Mapping[str, Any]], dict[str, Any]]


def route_after_risk(state: Mapping[str, Any]) -> list[str]:
    """Fan out to the evaluators only for an accepted proposal of an error-free run."""
    accepted = bool((state.get("verdict") or {}).get("accepted"))
    if accepted and not state.get("errors"):
        return list(EVALUATORS)
    return ["publish_events"]


def build_graph(nodes: Mapping[str, NodeFn]) -> StateGraph:
    """The workflow graph over `nodes` (name -> function(state) -> update), not compiled."""
    graph = StateGraph(RunState)
    for name in NODE_NAMES:
        graph.add_node(name, nodes[name])
    graph.add_edge(START, "query_market")
    graph.add_edge("query_market", "generate_proposal")
    graph.add_edge("generate_proposal", "risk_management")
    graph.add_conditional_edges(
        "risk_management",
        route_after_risk,
        {name: name for name in [*EVALUATORS, "publish_events"]},
    )
    for evaluator in EVALUATORS:
        graph.add_edge(evaluator, "publish_events")
    graph.add_edge("publish_events", "record_run")
    graph.add_edge("record_run", END)
    return graph


@dataclass(frozen=True)
class Topology:
    """What the Celery canvas needs to know of the graph: edges, routers, the entry node."""

    entry: str
    successors: Mapping[str, tuple[str, ...]]  # unconditional edges, END excluded
    routers: Mapping[str, Callable[[Mapping[str, Any]], list[str]]]

    @classmethod
    def from_graph(cls, graph: StateGraph) -> Topology:
        """Read the topology of `graph` (its compiled edges and its conditional routers)."""
        drawn = graph.compile().get_graph()
        successors: dict[str, list[str]] = {}
        entry = None
        for edge in drawn.edges:
            if edge.source == START:
                entry = edge.target
            elif not edge.conditional and edge.target != END:
                successors.setdefault(edge.source, []).append(edge.target)
        routers = {
            source: _router(spec)
            for source, branches in graph.branches.items()
            for spec in branches.values()
        }
        return cls(entry, {k: tuple(v) for k, v in successors.items()}, routers)

    def route(self, node: str, state: Mapping[str, Any]) -> list[str]:
        """The nodes that run after `node` for this `state`."""
        if node in self.routers:
            return self.routers[node](state)
        return list(self.successors.get(node, ()))

    def linear_from(self, node: str) -> list[str]:
        """`node` and the nodes that follow it one by one, up to a router, a fan-out or END."""
        path = [node]
        while path[-1] not in self.routers and len(self.successors.get(path[-1], ())) == 1:
            path.append(self.successors[path[-1]][0])
        return path

    def join_of(self, nodes: Sequence[str]) -> str:
        """The one node that every one of the parallel `nodes` leads to."""
        targets = {self.successors.get(node, ()) for node in nodes}
        if len(targets) != 1 or len(next(iter(targets))) != 1:
            raise ValueError(f"parallel nodes {list(nodes)} do not join at a single node")
        return next(iter(targets))[0]


def _router(spec) -> Callable[[Mapping[str, Any]], list[str]]:
    """A branch's path function mapped through its path_map, as a list of node names."""

    def route(state: Mapping[str, Any]) -> list[str]:
        result = spec.path.invoke(state)
        keys = result if isinstance(result, list) else [result]
        return [spec.ends[key] if spec.ends else key for key in keys]

    return route
