"""Thin Celery tasks: one per graph node, `osiris.<node>`, plus `osiris.speak` for TTS.

A task only rebuilds the state it was given (a chain's state, or a chord's parts merged with the
graph's reducers), calls the guarded node with this process's resources, and either returns the
new state, returns its part of a chord, retries a storage failure, or submits the continuation
a router chose.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping
from typing import Any

from celery import Task
from celery.concurrency.prefork import TaskPool as PreforkPool
from celery.signals import (
    worker_init,
    worker_process_init,
    worker_process_shutdown,
    worker_ready,
    worker_shutdown,
)

from . import telemetry
from .canvas import submit_continuation, topology
from .celery_app import DEFAULT_QUEUE, app, settings_of
from .errors import StoreError
from .graph import NODE_NAMES
from .middleware import guarded, node_function
from .resources import Resources
from .state import apply_update, apply_updates
from .tts import speak_assessment

__all__ = ["NodeTask", "resources", "speak"]

logger = logging.getLogger(__name__)

# Storage failures (LanceDB commit conflicts, a briefly unwritable disk) are retried this often
# with this backoff before the run is recorded as failed (or dead-lettered).
STORE_MAX_RETRIES = 3
STORE_RETRY_BACKOFF_S = 2.0

RESULT_REPR_CHARS = 64

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
    # after every task, events on or off: 48 µs for a state at 64 characters against 176 µs
    # at 240 (ad hoc, 2026-12-04).
    resultrepr_maxsize = RESULT_REPR_CHARS
    node: str = ""

    def run_node(self, incoming: Any, run_id: str, base: Mapping | None = None,
                 member: bool = False) -> Any:
        telemetry.tag_run(run_id)
        state = self._incoming_state(incoming, base)
        final = self.request.retries >= self.max_retries
        fn = node_function(resources(), self.node, speak=_speak_fn(), final=final,
                           by_reference=True)
        try:
            update = guarded(self.node, fn, reraise=() if final else (StoreError,))(state)
        except StoreError as exc:
            countdown = STORE_RETRY_BACKOFF_S * 2 ** self.request.retries * random.uniform(1, 2)
            logger.warning("run_id=%s node=%s storage failed, retry in %.1f s: %s",
                           run_id, self.node, countdown, exc)
            raise self.retry(exc=exc, countdown=countdown) from exc
        if member:
            return {"node": self.node, "update": update}
        new_state = apply_update(state, update)
        if self.node in topology().routers:
            return self._continue(new_state)
        return new_state

    def _continue(self, state: dict[str, Any]) -> Any:
        """Submit what the router chose, as new tasks (not `replace`, which hands this task's id
        to the last task of the branch, so Flower would lose one task of the run)."""
        eager = self.request.is_eager
        result = submit_continuation(self.app, topology().route(self.node, state), state,
                                     eager=eager)
        return result.get() if eager else state  # eager: the final state

    @staticmethod
    def _incoming_state(incoming: Any, base: Mapping | None) -> dict[str, Any]:
        if isinstance(incoming, list):  # a chord's parts, joined onto the state they forked
            return apply_updates(base or {}, [(p["node"], p["update"]) for p in incoming])
        return dict(incoming)


def _speak_fn():
    if not settings_of(app).tts_enabled:
        return None
    return lambda **kwargs: speak.apply_async(kwargs=kwargs)


def _register(node: str) -> NodeTask:
    def run(self: NodeTask, incoming: Any, run_id: str, base: Mapping | None = None,
            member: bool = False) -> Any:
        return self.run_node(incoming, run_id, base=base, member=member)

    run.__name__ = node
    return app.task(run, name=f"osiris.{node}", base=NodeTask, bind=True, node=node)


NODE_TASKS = {node: _register(node) for node in NODE_NAMES}


@app.task(name="osiris.speak", ignore_result=True, acks_late=False)
def speak(run_id: str, transaction_id: str, text: str) -> dict:
    """Voice an assessment; never retried, never part of a run's outcome."""
    res = resources()
    return speak_assessment(res.bus, res.sidecar, run_id=run_id, transaction_id=transaction_id,
                            text=text, ack_timeout_s=res.settings.tts_ack_timeout_s)
