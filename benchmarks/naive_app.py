"""The naive baseline of the Celery benchmark: the run's shape (three steps, two in parallel,
two more) as no-op tasks on a Celery app left at its defaults (results stored in Redis, a
`celery worker` with no flags), passing a 2 KB state along. What a first cut of the pipeline
costs in Celery alone; run with `celery -A benchmarks.naive_app worker`."""

from __future__ import annotations

import os
from collections.abc import Callable

import redis
from celery import Celery, chain, group
from celery.canvas import Signature

__all__ = ["DONE_KEY", "app", "noop_chain", "noop_run", "submit"]

DONE_KEY = "bench:naive:done"
STATE = {"ticks": ["x" * 40] * 50}  # about 2 KB of JSON


def noop_chain(celery: Celery, prefix: str, done_key: str) -> Callable[[], Signature]:
    """Register `<prefix>.step`, `.join` and `.done` on `celery`; return what builds one run's
    canvas: step, step, step, (step | step), join, done (which counts the run in `done_key`)."""
    client: list[redis.Redis] = []

    @celery.task(name=f"{prefix}.step")
    def step(state):
        return state

    @celery.task(name=f"{prefix}.join")
    def join(states):
        return states[0]

    @celery.task(name=f"{prefix}.done")
    def done(state):
        if not client:
            client.append(redis.Redis.from_url(celery.conf.broker_url))
        client[0].incr(done_key)

    def run() -> Signature:
        return chain(
            step.si(STATE), step.s(), step.s(), group(step.s(), step.s()), join.s(), done.s()
        )

    return run


app = Celery(
    "naive", broker=os.environ.get("OSIRIS_REDIS_URL"), backend=os.environ.get("OSIRIS_REDIS_URL")
)
noop_run = noop_chain(app, "naive", DONE_KEY)


def submit() -> None:
    """Submit one run, as a first cut would: its result subscribed to (Celery's default)."""
    noop_run().apply_async()
