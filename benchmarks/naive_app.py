"""The naive baseline of the Celery benchmark: the run's shape (three steps, two in parallel,
two more) as no-op tasks on a Celery app left at its defaults (results stored in Redis, a
`celery worker` with no flags), passing a 2 KB state along. What a first cut of the pipeline
costs in Celery alone; run with `celery -A benchmarks.naive_app worker`."""

from __future__ import annotations

import os

import redis
from celery import Celery, chain, group

__all__ = ["DONE_KEY", "app", "naive_run"]

DONE_KEY = "bench:naive:done"
STATE = {"ticks": ["x" * 40] * 50}  # about 2 KB of JSON

app = Celery("naive", broker=os.environ.get("OSIRIS_REDIS_URL"),
             backend=os.environ.get("OSIRIS_REDIS_URL"))
_redis: redis.Redis | None = None


@app.task(name="naive.step")
def step(state):
    return state


@app.task(name="naive.join")
def join(states):
    return states[0]


@app.task(name="naive.done")
def done(state):
    global _redis
    if _redis is None:
        _redis = redis.Redis.from_url(app.conf.broker_url)
    _redis.incr(DONE_KEY)


def naive_run():
    """One run's canvas: step, step, step, (step | step), join, done."""
    return chain(step.si(STATE), step.s(), step.s(), group(step.s(), step.s()), join.s(),
                 done.s())
