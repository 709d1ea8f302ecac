"""The floor of the Celery benchmark: the naive chain's canvas (the run's shape as no-op tasks,
passing the same 2 KB state) on the pipeline's own Celery configuration (`celery_config()`:
its Redis transport and reliable fetch, its result backend, JSON by orjson, results ignored,
acks late) and threads workers. What 7 Celery tasks per run cost with no work in them, as this
project runs Celery. Run with
`celery -A benchmarks.floor_app worker -Q osiris.default --pool threads --concurrency 2`."""

from __future__ import annotations

from celery import Celery

from osiris_tasks.settings import Settings
from osiris_tasks.tasks.celery_app import celery_config
from osiris_tasks.transport.serialization import register_serializer

from .naive_app import noop_chain

__all__ = ["DONE_KEY", "app", "noop_run", "submit"]

DONE_KEY = "bench:floor:done"

register_serializer()
app = Celery("floor")
app.config_from_object(celery_config(Settings.from_env()))
noop_run = noop_chain(app, "floor", DONE_KEY)


def submit() -> None:
    """Submit one run (the canvas's results registered as pending, as a client's are)."""
    noop_run().apply_async()
