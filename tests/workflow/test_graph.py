"""The graph is the single source of the workflow's shape; the canvas topology is read from it."""

from __future__ import annotations

from osiris_tasks.tasks.canvas import topology
from osiris_tasks.workflow.graph import NODE_NAMES, Topology, build_graph, route_after_risk
from osiris_tasks.workflow.state import RunStatus, apply_update, apply_updates, run_status


def test_topology_is_read_from_the_graph():
    topo = topology()
    assert topo.entry == "query_market"
    assert topo.linear_from(topo.entry) == ["query_market", "generate_proposal", "risk_management"]
    assert set(topo.routers) == {"risk_management"}
    assert topo.join_of(["evaluate_proposal", "score_proposal"]) == "publish_events"
    assert topo.linear_from("publish_events") == ["publish_events", "record_run"]


def test_a_changed_graph_changes_the_topology():
    graph = build_graph({name: (lambda s: {}) for name in NODE_NAMES})
    graph.add_node("extra", lambda s: {})
    graph.edges.discard(("publish_events", "record_run"))
    graph.add_edge("publish_events", "extra")
    graph.add_edge("extra", "record_run")
    topo = Topology.from_graph(graph)
    assert topo.linear_from("publish_events") == ["publish_events", "extra", "record_run"]


def test_routing_after_risk():
    accepted = {"verdict": {"accepted": True}, "errors": []}
    assert route_after_risk(accepted) == ["evaluate_proposal", "score_proposal"]
    assert route_after_risk({**accepted, "errors": [{"node": "x"}]}) == ["publish_events"]
    assert route_after_risk({"verdict": {"accepted": False}}) == ["publish_events"]
    assert topology().route("risk_management", accepted) == ["evaluate_proposal", "score_proposal"]


def test_reducers_merge_parallel_updates_in_node_name_order():
    base = {"run_id": "r", "errors": [], "timings_ms": {"a": 1.0}}
    parts = [
        ("score_proposal", {"errors": [{"node": "score_proposal"}], "timings_ms": {"s": 2}}),
        ("evaluate_proposal", {"errors": [{"node": "evaluate_proposal"}], "timings_ms": {"e": 3}}),
    ]
    merged = apply_updates(base, parts)
    assert [e["node"] for e in merged["errors"]] == ["evaluate_proposal", "score_proposal"]
    assert merged["timings_ms"] == {"a": 1.0, "e": 3, "s": 2}
    assert apply_update({"score": 1}, {"score": 2})["score"] == 2


def test_run_status():
    accepted, rejected = {"accepted": True}, {"accepted": False}
    err = [{"node": "x", "message": "m"}]
    assert run_status({"verdict": accepted}) == RunStatus.SUCCESS
    assert run_status({"verdict": rejected}) == RunStatus.RISK_REJECTED
    assert run_status({"verdict": accepted, "errors": err}) == RunStatus.PARTIAL
    upstream = {"accepted": False, "rule": "upstream_error"}
    assert run_status({"verdict": upstream, "errors": err}) == RunStatus.ERROR_RISK_REJECTED
    # The gate rejected on its own; the error came after it (e.g. publishing the event).
    assert run_status({"verdict": rejected, "errors": err}) == RunStatus.REJECTED_WITH_ERRORS
    assert run_status({"errors": err}) == RunStatus.ERROR
    assert run_status({"expired": True, "verdict": rejected}) == RunStatus.EXPIRED
