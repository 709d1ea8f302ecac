"""Node functions bound to a process's resources, as the registry says each node binds them:
what the in-process runner compiles and what each Celery task calls."""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING

from osiris_tasks.workflow.guard import NodeFn, guarded
from osiris_tasks.workflow.registry import NODES, Binding, spec

if TYPE_CHECKING:
    from osiris_tasks.adapters.resources import Resources

__all__ = ["bind_nodes", "node_function"]


def node_function(
    res: Resources, name: str, *, speak=None, final: bool = True, by_reference: bool = False
) -> NodeFn:
    """Node `name` with this process's dependencies bound (not yet guarded). Binds only what
    that node uses. With `by_reference` (the Celery path), a large batch's ticks leave the
    state for Redis."""
    node = spec(name)
    binding = Binding(speak=speak, final=final, by_reference=by_reference)
    return partial(node.fn, **node.binds(res, binding))


def bind_nodes(
    res: Resources,
    *,
    speak=None,
    final: bool = True,
    reraise: tuple[type[BaseException], ...] = (),
) -> dict[str, NodeFn]:
    """Every node of the graph, bound to `res` and guarded."""
    return {
        node.name: guarded(
            node.name, node_function(res, node.name, speak=speak, final=final), reraise=reraise
        )
        for node in NODES
    }
