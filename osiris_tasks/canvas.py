"""The Celery canvas of a run, derived from the graph's topology.

The entry path (up to the first router) is one chain submitted by the bridge; the router's task
submits the continuation the router chose: a chord of parallel nodes joined at
their common successor, or a plain chain. Every signature carries `run_id` in its kwargs, so
Flower shows it and finds it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import cache
from typing import Any

from celery import Celery, chain, chord, group
from celery.backends.redis import RedisBackend
from celery.canvas import Signature
from kombu.utils.uuid import uuid

from . import telemetry
from .graph import NODE_NAMES, Topology, build_graph

__all__ = ["build_canvas", "continuation", "submit_continuation", "submit_run", "submit_runs",
           "task_name", "topology"]

STATE_ARGSREPR = "(<run state>,)"


def task_name(node: str) -> str:
    """The Celery task name of a graph node."""
    return f"osiris.{node}"


@cache
def topology() -> Topology:
    """The workflow's topology, read from the graph (node functions are irrelevant here)."""
    return Topology.from_graph(build_graph({name: _shape_only for name in NODE_NAMES}))


def _shape_only(state: Mapping[str, Any]) -> dict[str, Any]:
    return {}


def node_signature(
    app: Celery, node: str, run_id: str, *, state: Mapping | None = None,
    base: Mapping | None = None, member: bool = False,
) -> Signature:
    """`osiris.<node>`; immutable with `state` as its argument when given (a canvas's start)."""
    kwargs: dict[str, Any] = {"run_id": run_id}
    if base is not None:
        kwargs["base"] = dict(base)
    if member:
        kwargs["member"] = True
    options = {"argsrepr": STATE_ARGSREPR, "kwargsrepr": repr({"run_id": run_id})}
    if member and parts_need_results(app):
        options["ignore_result"] = False  # the chord's join reads the parts' stored results
    args = (dict(state),) if state is not None else ()
    return app.signature(task_name(node), args=args, kwargs=kwargs,
                         immutable=state is not None, **options)


def parts_need_results(app: Celery) -> bool:
    """Whether a chord's parts must store their results for its join: with every result
    backend but Redis. Redis's chord keeps each part's result in the chord's own list as the
    part finishes (`on_chord_part_return`, called whether or not the result is stored) and the
    join reads that list, so a stored copy would be written (one GET and one SET per part) and
    never read."""
    return not isinstance(app.backend, RedisBackend)


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


def submit_continuation(app: Celery, targets: Sequence[str], state: Mapping[str, Any], *,
                        eager: bool = False):
    """Publish `continuation(app, targets, state)`: the messages its `apply_async()` sends,
    built without the canvas (chain `prepare_steps`, group and chord cloning and freezing,
    result promises): 1.3–1.5 ms of CPU per run for the evaluators' chord, against 2.2–2.9 ms
    through the canvas (ad hoc, 300 runs of 100 ticks; a run's entry chain, sent the same way
    by `submit_run`, takes 0.48 ms).

    For a chord (Redis result backend): the chord's size is set on the backend, then each part
    goes with the chord's join as its `chord`, in the chord's group at its index; the join
    carries the rest of the path as its `chain`, and Redis's `on_chord_part_return` sends it
    when the last part is done, as with Celery's canvas. Eager (`eager`, or the app's
    `task_always_eager`) and other result backends get the canvas itself; its result is
    returned then (eager: the final state), None otherwise."""
    if eager or app.conf.task_always_eager or parts_need_results(app):
        return continuation(app, targets, state).apply_async()
    topo, run_id = topology(), state["run_id"]
    if len(targets) == 1:
        _send_path(app, topo.linear_from(targets[0]), run_id, state)
        return None
    path, group_id = topo.linear_from(topo.join_of(targets)), uuid()
    join = node_signature(app, path[0], run_id, base=state).set(
        task_id=uuid(), group_id=group_id, chain=_chain_option(app, path, run_id))
    app.backend.set_chord_size(group_id, len(targets))
    with app.producer_or_acquire() as producer, producer.batch():
        for index, target in enumerate(targets):
            node_signature(app, target, run_id, state=state, member=True).apply_async(
                chord=join, group_id=group_id, group_index=index, producer=producer)
    return None


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
        return _send_path(app, _entry_path(), run_id, state, task_id=run_id,
                          ignore_result=True, producer=producer)


def _send_path(app: Celery, path: Sequence[str], run_id: str, state: Mapping[str, Any],
               **options: Any):
    """Publish the chain of `path` on `state` as its first message: the first node's task,
    the rest in its `chain` option (the message a chain's `apply_async` sends)."""
    first = node_signature(app, path[0], run_id, state=state)
    return first.apply_async(chain=_chain_option(app, path, run_id), **options)


def _chain_option(app: Celery, path: Sequence[str], run_id: str) -> list[Signature]:
    """The `chain` option of `path`'s first task: the later nodes, last first (a stack)."""
    return [node_signature(app, node, run_id) for node in reversed(path[1:])]
