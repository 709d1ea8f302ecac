"""What each node of the workflow is, in one table: its pure function, the Celery queue its task
runs on, whether a stale batch skips it, and what it binds from a process's resources. The
graph, the Celery routes, the guard and the binding all read `NODES`."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from osiris_tasks.keys import DEFAULT_QUEUE, SIDECAR_QUEUE
from osiris_tasks.workflow import nodes

if TYPE_CHECKING:
    from osiris_tasks.adapters.resources import Resources

__all__ = ["NODES", "NODE_NAMES", "Binding", "NodeSpec", "spec"]


@dataclass(frozen=True)
class Binding:
    """How a node is bound for one call: the TTS hook, whether this is the task's last attempt
    (a failed write then goes to the dead-letter list), and whether a large batch's ticks go
    to Redis by reference (the Celery path)."""

    speak: Callable[..., Any] | None = None
    final: bool = True
    by_reference: bool = False


@dataclass(frozen=True)
class NodeSpec:
    """One node of the workflow."""

    name: str
    fn: Callable[..., dict[str, Any]]  # the pure node function (workflow/nodes.py)
    queue: str  # the Celery queue of its task, `osiris.<name>`
    staleness_checked: bool  # skipped once the batch is older than its ttl_s
    # Its dependencies from a process's resources: only what it uses, so a sidecar node never
    # builds the run store (nor imports lancedb).
    binds: Callable[[Resources, Binding], Mapping[str, Any]]


NODES = (
    NodeSpec(
        "query_market",
        nodes.query_market,
        DEFAULT_QUEUE,
        True,
        lambda r, b: {
            "default_symbol": r.settings.default_symbol,
            "stash": r.stash if b.by_reference else None,
            "portfolio": r.portfolio,
            "symbols": r.settings.symbols,
        },
    ),
    NodeSpec(
        "generate_proposal",
        nodes.generate_proposal,
        SIDECAR_QUEUE,
        True,
        lambda r, b: {
            "sidecar": r.llm,
            "budget": r.llm_budget,
            "portfolio": r.portfolio,
            "limits": r.limits,
            "max_length": r.settings.max_length,
        },
    ),
    NodeSpec(
        "risk_management",
        nodes.risk_management,
        DEFAULT_QUEUE,
        False,
        lambda r, b: {"store": r.store, "portfolio": r.portfolio, "limits": r.limits},
    ),
    NodeSpec(
        "evaluate_proposal",
        nodes.evaluate_proposal,
        SIDECAR_QUEUE,
        True,
        lambda r, b: {
            "sidecar": r.llm,
            "max_length": r.settings.max_length,
            "budget": r.llm_budget,
        },
    ),
    NodeSpec(
        "score_proposal",
        nodes.score_proposal,
        SIDECAR_QUEUE,
        True,
        lambda r, b: {"sidecar": r.llm, "budget": r.llm_budget},
    ),
    NodeSpec(
        "publish_events",
        nodes.publish_events,
        DEFAULT_QUEUE,
        False,
        lambda r, b: {"bus": r.bus, "speak": b.speak},
    ),
    NodeSpec(
        "record_run",
        nodes.record_run,
        DEFAULT_QUEUE,
        False,
        lambda r, b: {
            "store": r.store,
            "deadletter": r.deadletter,
            "stash": r.stash,
            "completions": r.completions,
            "outbox": r.outbox,
            "bus": r.bus,
            "final": b.final,
        },
    ),
)
NODE_NAMES = tuple(node.name for node in NODES)
_BY_NAME = {node.name: node for node in NODES}


def spec(name: str) -> NodeSpec:
    """The spec of node `name` (KeyError for an unknown node)."""
    return _BY_NAME[name]
