"""Thin Celery tasks: one per graph node, `osiris.<node>`, plus `osiris.speak` for TTS.

A task only rebuilds the state it was given (a chain's state, or a chord's parts merged with the
graph's reducers), calls the guarded node with this process's resources, and either returns the
new state, returns its part of a chord, retries a storage failure, or submits the continuation
a router chose.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from celery import Task, bootsteps
from celery.concurrency.prefork import TaskPool as PreforkPool
from celery.signals import (
    worker_init,
    worker_process_init,
    worker_process_shutdown,
    worker_ready,
    worker_shutdown,
)

from osiris_tasks.adapters.events import EventBus, EventOutbox
from osiris_tasks.adapters.join import RunJoin
from osiris_tasks.adapters.resources import Resources, redis_client
from osiris_tasks.adapters.tts import speak_assessment
from osiris_tasks.errors import EventError, JoinError, StoreError
from osiris_tasks.keys import DEFAULT_QUEUE
from osiris_tasks.obs import telemetry
from osiris_tasks.tasks.canvas import submit_after_join, submit_continuation, topology
from osiris_tasks.tasks.celery_app import app, drop_stale_bindings, settings_of, task_name
from osiris_tasks.workflow.binding import node_function
from osiris_tasks.workflow.graph import NODE_NAMES
from osiris_tasks.workflow.guard import guarded
from osiris_tasks.workflow.nodes import error_entry
from osiris_tasks.workflow.state import apply_update, apply_updates

__all__ = ["EventRelay", "JoinSweeper", "NodeTask", "resources", "speak", "sweep_overdue_joins"]

logger = logging.getLogger(__name__)
T = TypeVar("T")

# Storage failures (LanceDB commit conflicts, a briefly unwritable disk) are retried this often
# with this backoff before the run is recorded as failed (or dead-lettered).
STORE_MAX_RETRIES = 3
STORE_RETRY_BACKOFF_S = 2.0

RESULT_REPR_CHARS = 64
# A router or a parallel part that cannot reach the run's join in Redis (an outage) tries again
# for this long, with backoff doubling up to JOIN_RETRY_MAX_S, before its task fails; a sweeper
# then publishes and records the run after the join's deadline.
JOIN_RETRY_BUDGET_S = 30.0
JOIN_RETRY_MIN_S = 0.25
JOIN_RETRY_MAX_S = 2.0
# How often a worker of the default queue looks for overdue joins (a cheap ZRANGEBYSCORE).
JOIN_SWEEP_INTERVAL_S = 5.0
# How often a worker relays the event outbox (events an outage kept back; adapters/events.py).
OUTBOX_RELAY_INTERVAL_S = 1.0

_resources: Resources | None = None


def resources() -> Resources:
    """This process's resources, built on first use from the app's settings."""
    global _resources
    settings = settings_of(app)
    if _resources is None or _resources.settings is not settings:  # reconfigured (tests)
        _resources = Resources.from_settings(settings)
    return _resources


@worker_init.connect
def _trace_worker(sender: Any = None, **_: Any) -> None:
    telemetry.setup_worker(sender, settings_of(app))


@worker_ready.connect
def _load_store(sender: Any = None, **_: Any) -> None:
    """A worker that serves the store's nodes (the default queue) loads the run store when it
    starts rather than in its first run: importing lancedb takes ~1.3 s. Not in a prefork
    worker's parent, whose children would then fork with LanceDB's threads running (lancedb
    calls its fork support experimental); its children load it on first use."""
    removed = drop_stale_bindings(redis_client(settings_of(app).broker_url))
    if removed:
        logger.warning("dropped %d queue bindings of the old one-exchange layout", removed)
    queues = {queue.name for queue in getattr(sender.task_consumer, "queues", ())}
    if DEFAULT_QUEUE in queues and not isinstance(sender.pool, PreforkPool):
        resources().store  # noqa: B018 -- built for its side effect


@worker_process_init.connect
def _reset_after_fork(**_: Any) -> None:
    if _resources is not None:
        _resources.reset_after_fork()
    telemetry.setup(settings_of(app), telemetry.WORKER_SERVICE)


@worker_process_shutdown.connect
def _close(**_: Any) -> None:
    if _resources is not None:
        _resources.close()
    telemetry.shutdown()


@worker_shutdown.connect
def _flush_traces(**_: Any) -> None:
    telemetry.shutdown()


class NodeTask(Task):
    """Runs one graph node on a run's state."""

    max_retries = STORE_MAX_RETRIES
    # Flower shows the result's repr from the task-succeeded event: the start of the state
    # (run_id first) is enough there; the whole state is in LanceDB. Celery builds this repr
    # after every task, events on or off, and its cost grows with its length (docs/performance.md).
    resultrepr_maxsize = RESULT_REPR_CHARS
    node: str = ""

    def run_node(
        self, incoming: Any, run_id: str, base: Mapping | None = None, member: bool = False
    ) -> Any:
        telemetry.tag_run(run_id)
        state = self._incoming_state(incoming, base)
        final = self.request.retries >= self.max_retries
        fn = node_function(
            resources(), self.node, speak=_speak_fn(), final=final, by_reference=True
        )
        try:
            update = guarded(self.node, fn, reraise=() if final else (StoreError,))(state)
        except StoreError as exc:
            countdown = STORE_RETRY_BACKOFF_S * 2**self.request.retries * random.uniform(1, 2)
            logger.warning(
                "run_id=%s node=%s storage failed, retry in %.1f s: %s",
                run_id,
                self.node,
                countdown,
                exc,
            )
            raise self.retry(exc=exc, countdown=countdown) from exc
        if member:
            if not self.request.is_eager:  # eager: Celery's chord joins the parts
                self._arrive(state, update)
            return {"node": self.node, "update": update}
        new_state = apply_update(state, update)
        if self.node in topology().routers:
            return self._continue(new_state)
        return new_state

    def _continue(self, state: dict[str, Any]) -> Any:
        """Submit what the router chose, as new tasks (not `replace`, which hands this task's id
        to the last task of the branch, so Flower would lose one task of the run)."""
        eager, targets = self.request.is_eager, topology().route(self.node, state)
        deadline_s = settings_of(self.app).run_join_deadline_s
        result = _join_retrying(
            lambda: submit_continuation(
                self.app,
                targets,
                state,
                joins=resources().joins,
                join_deadline_s=deadline_s,
                eager=eager,
            ),
            state["run_id"],
            self.node,
        )
        return result.get() if eager else state  # eager: the final state

    def _arrive(self, state: dict[str, Any], update: Mapping[str, Any]) -> None:
        """Add this part's update to the run's join; the part that completes it publishes the
        rest of the path (then the join is forgotten)."""
        run_id, joins = state["run_id"], resources().joins
        parts = _join_retrying(lambda: joins.arrive(run_id, self.node, update), run_id, self.node)
        if parts is not None:
            submit_after_join(self.app, state, parts.items())
            joins.finish(run_id)

    @staticmethod
    def _incoming_state(incoming: Any, base: Mapping | None) -> dict[str, Any]:
        if isinstance(incoming, list):  # a chord's parts, joined onto the state they forked
            return apply_updates(base or {}, [(p["node"], p["update"]) for p in incoming])
        return dict(incoming)


def _join_retrying(call: Callable[[], T], run_id: str, node: str) -> T:
    """`call()`, tried again on `JoinError` (Redis unreachable) for `JOIN_RETRY_BUDGET_S`."""
    deadline, delay_s = time.monotonic() + JOIN_RETRY_BUDGET_S, JOIN_RETRY_MIN_S
    while True:
        try:
            return call()
        except JoinError as exc:
            if time.monotonic() + delay_s > deadline:
                logger.error(
                    "run_id=%s node=%s gave up reaching the run's join; a sweeper "
                    "records the run after the join's deadline: %s",
                    run_id,
                    node,
                    exc,
                )
                raise
            logger.warning(
                "run_id=%s node=%s join unreachable, retry in %.2f s: %s",
                run_id,
                node,
                delay_s,
                exc,
            )
            time.sleep(delay_s)
            delay_s = min(delay_s * 2, JOIN_RETRY_MAX_S)


def sweep_overdue_joins(celery: Any, joins: RunJoin, deadline_s: float) -> list[str]:
    """Publish the rest of every run whose join is past its deadline, with the parts that
    arrived and an error for each that did not; returns their run_ids."""
    swept = []
    for run_id in joins.overdue():
        join = joins.take_overdue(run_id)
        if join is None:  # another sweeper has it, or it finished meanwhile
            continue
        missing = [node for node in join.nodes if node not in join.parts]
        updates = [*join.parts.items(), *(_lost_part(run_id, node, deadline_s) for node in missing)]
        logger.error(
            "run_id=%s join overdue, parts missing: %s; publishing the rest of the run",
            run_id,
            ",".join(missing) or "none (its continuation was lost)",
        )
        submit_after_join(celery, join.base, updates)
        joins.finish(run_id)
        swept.append(run_id)
    return swept


def _lost_part(run_id: str, node: str, deadline_s: float) -> tuple[str, dict[str, Any]]:
    """The update of a part that never reached its join: a `JoinError` entry."""
    exc = JoinError(
        f"no outcome within the join's deadline ({deadline_s:g} s): its task was lost or "
        "could not reach Redis",
        run_id=run_id,
        node=node,
    )
    return node, {"errors": [error_entry(node, exc)]}


class JoinSweeper(bootsteps.StartStopStep):
    """In a worker that consumes the default queue: every `JOIN_SWEEP_INTERVAL_S`, publish the
    rest of the runs whose join is overdue (`adapters/join.py`), so a lost part never loses its run.
    Runs on the worker's timer (in the main process, whatever the pool), with a Redis client
    of its own."""

    requires = {"celery.worker.components:Timer"}

    def __init__(self, worker: Any, **kwargs: Any):
        super().__init__(worker, **kwargs)
        self._tref: Any = None
        self._joins: RunJoin | None = None

    def start(self, worker: Any) -> None:
        if DEFAULT_QUEUE not in worker.app.amqp.queues.consume_from:
            return
        self._joins = RunJoin(redis_client(settings_of(worker.app).redis_url))
        self._tref = worker.timer.call_repeatedly(
            JOIN_SWEEP_INTERVAL_S, self._sweep, args=(worker,)
        )

    def _sweep(self, worker: Any) -> None:
        try:
            sweep_overdue_joins(
                worker.app, self._joins, settings_of(worker.app).run_join_deadline_s
            )
        except Exception:  # never the worker's end: the next sweep tries again
            logger.exception("sweeping overdue joins failed")

    def stop(self, worker: Any) -> None:
        if self._tref is not None:
            self._tref.cancel()
            self._tref = None


app.steps["worker"].add(JoinSweeper)


class EventRelay(bootsteps.StartStopStep):
    """In a worker that consumes the default queue: every `OUTBOX_RELAY_INTERVAL_S`, publish
    the events an outage kept back (`adapters/events.EventOutbox`); one relay at a time across
    workers. On the worker's timer, with a Redis client of its own."""

    requires = {"celery.worker.components:Timer"}

    def __init__(self, worker: Any, **kwargs: Any):
        super().__init__(worker, **kwargs)
        self._tref: Any = None
        self._outbox: EventOutbox | None = None
        self._bus: EventBus | None = None

    def start(self, worker: Any) -> None:
        if DEFAULT_QUEUE not in worker.app.amqp.queues.consume_from:
            return
        settings = settings_of(worker.app)
        client = redis_client(settings.redis_url)
        self._outbox = EventOutbox(client)
        self._bus = EventBus(
            client, stream=settings.events_stream, stream_maxlen=settings.events_stream_maxlen
        )
        self._tref = worker.timer.call_repeatedly(OUTBOX_RELAY_INTERVAL_S, self._relay)

    def _relay(self) -> None:
        try:
            self._outbox.relay(self._bus)
        except EventError as exc:  # Redis still away: the next pass tries again
            logger.warning("relaying the event outbox failed: %s", exc.message)
        except Exception:  # never the worker's end
            logger.exception("relaying the event outbox failed")

    def stop(self, worker: Any) -> None:
        if self._tref is not None:
            self._tref.cancel()
            self._tref = None


app.steps["worker"].add(EventRelay)


def _speak_fn():
    if not settings_of(app).tts_enabled:
        return None
    return lambda **kwargs: speak.apply_async(kwargs=kwargs)


def _register(node: str) -> NodeTask:
    def run(
        self: NodeTask,
        incoming: Any,
        run_id: str,
        base: Mapping | None = None,
        member: bool = False,
    ) -> Any:
        return self.run_node(incoming, run_id, base=base, member=member)

    run.__name__ = node
    return app.task(run, name=task_name(node), base=NodeTask, bind=True, node=node)


for _node in NODE_NAMES:
    _register(_node)


@app.task(name="osiris.speak", ignore_result=True, acks_late=False)
def speak(run_id: str, transaction_id: str, text: str) -> dict:
    """Voice an assessment; never retried, never part of a run's outcome."""
    res = resources()
    return speak_assessment(
        res.bus,
        res.sidecar,
        run_id=run_id,
        transaction_id=transaction_id,
        text=text,
        ack_timeout_s=res.settings.tts_ack_timeout_s,
    )
