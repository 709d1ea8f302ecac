"""The Celery canvas of a run, derived from the graph's topology.

The entry path (up to the first router) is one chain submitted by the bridge; the router's task
submits the continuation the router chose: parallel nodes joined in Redis at their common
successor (`adapters/join.py`), or a plain chain. Celery's canvas itself (a chord) serves eager
mode, the tests of the wiring. Every signature carries `run_id` in its kwargs, so Flower shows
it and finds it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from functools import cache
from typing import Any

from celery import Celery, chain, chord, group
from celery.canvas import Signature

from osiris_tasks.adapters.join import RunJoin
from osiris_tasks.obs import telemetry
from osiris_tasks.tasks.celery_app import task_name
from osiris_tasks.workflow.graph import NODE_NAMES, Topology, build_graph
from osiris_tasks.workflow.state import apply_updates

__all__ = [
    "build_canvas",
    "continuation",
    "submit_after_join",
    "submit_continuation",
    "submit_run",
    "submit_runs",
    "task_name",
    "topology",
]

STATE_ARGSREPR = "(<run state>,)"


@cache
def topology() -> Topology:
    """The workflow's topology, read from the graph (node functions are irrelevant here)."""
    return Topology.from_graph(build_graph({name: _shape_only for name in NODE_NAMES}))


def _shape_only(state: Mapping[str, Any]) -> dict[str, Any]:
    return {}


def node_signature(
    app: Celery,
    node: str,
    run_id: str,
    *,
    state: Mapping | None = None,
    base: Mapping | None = None,
    member: bool = False,
) -> Signature:
    """`osiris.<node>`; immutable with `state` as its argument when given (a canvas's start)."""
    kwargs: dict[str, Any] = {"run_id": run_id}
    if base is not None:
        kwargs["base"] = dict(base)
    if member:
        kwargs["member"] = True
    options = {"argsrepr": STATE_ARGSREPR, "kwargsrepr": repr({"run_id": run_id})}
    args = (dict(state),) if state is not None else ()
    return app.signature(
        task_name(node), args=args, kwargs=kwargs, immutable=state is not None, **options
    )


def _path(app: Celery, nodes: Sequence[str], run_id: str, first: Signature) -> Signature:
    rest = [node_signature(app, node, run_id) for node in nodes[1:]]
    return chain(first, *rest) if rest else first


@cache
def _entry_path() -> tuple[str, ...]:
    """The nodes a run starts with: the entry node through the first router."""
    topo = topology()
    return tuple(topo.linear_from(topo.entry))


def build_canvas(app: Celery, state: Mapping[str, Any]) -> Signature:
    """The chain a new run starts with: the entry node through the first router."""
    run_id, path = state["run_id"], _entry_path()
    first = node_signature(app, path[0], run_id, state=state).set(task_id=run_id)
    return _path(app, path, run_id, first)


def continuation(app: Celery, targets: Sequence[str], state: Mapping[str, Any]) -> Signature:
    """What runs after a router chose `targets` for `state`."""
    topo, run_id = topology(), state["run_id"]
    if len(targets) == 1:
        path = topo.linear_from(targets[0])
        return _path(app, path, run_id, node_signature(app, path[0], run_id, state=state))
    join = topo.join_of(targets)
    header = group(node_signature(app, t, run_id, state=state, member=True) for t in targets)
    path = topo.linear_from(join)
    return _path(app, path, run_id, chord(header, node_signature(app, join, run_id, base=state)))


def submit_continuation(
    app: Celery,
    targets: Sequence[str],
    state: Mapping[str, Any],
    *,
    joins: RunJoin | None = None,
    join_deadline_s: float = 0.0,
    eager: bool = False,
):
    """Publish what runs after a router chose `targets` for `state`.

    One target: the chain of its path, as one message. Parallel targets: their join is opened
    in Redis (`joins`, see `adapters/join.py`: not Celery's chord, whose counter loses the run when
    Redis restarts as a part finishes), then each part is published with the state; the part
    that completes the join publishes the rest (`submit_after_join`). Eager (`eager`, or the
    app's `task_always_eager`: tests of the wiring) gets Celery's canvas, run in place; its
    result (the final state) is returned then, None otherwise."""
    if eager or app.conf.task_always_eager:
        return continuation(app, targets, state).apply_async()
    run_id = state["run_id"]
    if len(targets) == 1:
        _send_path(app, topology().linear_from(targets[0]), run_id, state)
        return None
    if joins is None:
        raise ValueError("parallel targets need the run joins")
    topology().join_of(targets)  # fails here, before anything is sent, if there is none
    joins.open(run_id, state, targets, join_deadline_s)
    with app.producer_or_acquire() as producer, producer.batch():
        for target in targets:
            node_signature(app, target, run_id, state=state, member=True).apply_async(
                producer=producer
            )
    return None


def submit_after_join(
    app: Celery, state: Mapping[str, Any], parts: Iterable[tuple[str, Mapping[str, Any]]]
) -> dict[str, Any]:
    """Publish the path after a join: `state` (what the parts forked from) with the parts'
    `(node, update)` pairs merged as LangGraph merges a parallel step. Returns that state."""
    parts = list(parts)
    merged = apply_updates(state, parts)
    path = topology().linear_from(topology().join_of([node for node, _ in parts]))
    _send_path(app, path, state["run_id"], merged)
    return merged


def submit_run(app: Celery, state: Mapping[str, Any]):
    """Submit a run's canvas in its root span; returns its AsyncResult, whose id is the run_id
    (no result is stored for it: nothing subscribes to it, nothing waits on it)."""
    return _send_entry(app, state)


def submit_runs(app: Celery, states: Sequence[Mapping[str, Any]]) -> list:
    """Submit several runs' canvases with one round trip to the broker (kombu's publish batch;
    a transport without one publishes them one by one). Raises if the batch failed, when any
    number of its runs may have been published; the caller submits them again, and a run
    published twice is recorded once (its run_id is its task id and its record's key)."""
    with app.producer_or_acquire() as producer, producer.batch():
        return [_send_entry(app, state, producer) for state in states]


def _send_entry(app: Celery, state: Mapping[str, Any], producer: Any = None):
    """Publish `build_canvas(app, state)` in the run's root span. The message is the one that
    chain's `apply_async` sends — the first node's task, the rest of the path in its `chain` —
    built without the chain's cloning and freezing of every step (a third of a submission's
    CPU): the later steps get their task ids when they are published, as every later step of
    a Celery chain does. Eager mode (tests of the canvas's wiring) gets the chain itself: it
    runs the whole chain in place and returns the last step's result."""
    run_id = state["run_id"]
    with telemetry.batch_span(run_id, len(state.get("ticks", ()))):
        if app.conf.task_always_eager:
            return build_canvas(app, state).apply_async(ignore_result=True)
        return _send_path(
            app, _entry_path(), run_id, state, task_id=run_id, ignore_result=True, producer=producer
        )


def _send_path(
    app: Celery, path: Sequence[str], run_id: str, state: Mapping[str, Any], **options: Any
):
    """Publish the chain of `path` on `state` as its first message: the first node's task,
    the rest in its `chain` option (the message a chain's `apply_async` sends)."""
    first = node_signature(app, path[0], run_id, state=state)
    return first.apply_async(chain=_chain_option(app, path, run_id), **options)


def _chain_option(app: Celery, path: Sequence[str], run_id: str) -> list[Signature]:
    """The `chain` option of `path`'s first task: the later nodes, last first (a stack)."""
    return [node_signature(app, node, run_id) for node in reversed(path[1:])]
