"""A run's parallel step (the evaluators) joined in Redis, not by Celery's chord counter.

Why not Celery's chord: with the Redis result backend a chord's join is sent by the part whose
`on_chord_part_return` completes the chord's counter. If Redis restarts while a part finishes,
that call raises, Celery fails the part, the join fails with a `ChordError`, and the run's last
nodes (publishing, recording) never run: a run lost without a record or a log line naming it
(celery#3363; celery#2911 for chords left hanging by a killed worker). Here:

* The router opens the join before it sends the parts: a hash per run with the state the parts
  fork from and the nodes expected, and the join's deadline in a sorted set.
* A part, done, adds its update to the hash in one script call (`lua/join_arrive.lua`;
  idempotent: a redelivered part writes the same field). The call that completes the set takes
  the join and publishes the rest of the path with the merged state; once that is published,
  the join is removed (`finish`).
* Sweepers (every worker of the default queue, `tasks.JoinSweeper`) take joins past their
  deadline (`lua/join_take_overdue.lua`): a part whose message was lost, a part that could not
  reach Redis in time, a completing part that died before publishing. The sweeper publishes
  the rest of the path itself, with the parts that arrived and an error naming each part that
  did not. So the run is published and recorded whatever became of its
  parts, with a status that says so.

Recording is idempotent by run_id and each event is published once per run, so the rare double
continuation (a part completing its join while a sweeper takes it) still ends in one record.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import redis

from osiris_tasks import lua
from osiris_tasks.errors import JoinError
from osiris_tasks.keys import JOIN_PREFIX
from osiris_tasks.keys import JOINS_DUE_KEY as DUE_KEY
from osiris_tasks.transport.serialization import dumps, loads

__all__ = ["OverdueJoin", "RunJoin"]

logger = logging.getLogger(__name__)

# A join's hash outlives its deadline by far, so that sweepers that were down for a while still
# find it; it is deleted as soon as its run's continuation is published.
JOIN_TTL_S = 7 * 24 * 3600
# How long a sweeper holds an overdue join it took before another sweeper may take it again.
SWEEP_LEASE_S = 60.0
# Most overdue joins one sweep takes.
SWEEP_BATCH = 50
_PART = "part:"


class OverdueJoin(NamedTuple):
    """An overdue join a sweeper took: the state its parts forked from, the nodes expected,
    and the updates of those that arrived."""

    run_id: str
    base: dict[str, Any]
    nodes: list[str]
    parts: dict[str, dict[str, Any]]


class RunJoin:
    """Joins of runs' parallel steps, in Redis (see the module docstring)."""

    def __init__(self, client: redis.Redis):
        self._redis = client
        self._arrive = lua.script(client, "join_arrive")
        self._take = lua.script(client, "join_take_overdue")

    def open(
        self, run_id: str, base: Mapping[str, Any], nodes: Sequence[str], deadline_s: float
    ) -> None:
        """Expect `nodes`' updates for `run_id`, forked from `base`, within `deadline_s`."""
        key = JOIN_PREFIX + run_id
        try:
            with self._redis.pipeline(transaction=True) as pipe:
                pipe.hset(
                    key,
                    mapping={
                        "base": dumps(dict(base)),
                        "nodes": ",".join(nodes),
                        "size": len(nodes),
                    },
                )
                pipe.expire(key, JOIN_TTL_S)
                pipe.zadd(DUE_KEY, {run_id: time.time() + deadline_s})
                pipe.execute()
        except redis.RedisError as exc:
            raise JoinError(f"could not open the join: {exc}", run_id=run_id) from exc

    def arrive(
        self, run_id: str, node: str, update: Mapping[str, Any]
    ) -> dict[str, dict[str, Any]] | None:
        """Add `node`'s update; every part's update (by node) to the one call that completes
        the join, None to the others (still waiting, or taken or gone already)."""
        try:
            reply = self._arrive(keys=[JOIN_PREFIX + run_id], args=[node, dumps(dict(update))])
        except redis.RedisError as exc:
            raise JoinError(
                f"{node} could not reach its join: {exc}", run_id=run_id, node=node
            ) from exc
        outcome = reply[0].decode()
        if outcome != "complete":
            logger.log(
                logging.INFO if outcome == "gone" else logging.DEBUG,
                "run_id=%s %s reached its join: %s",
                run_id,
                node,
                outcome,
            )
            return None
        return {reply[i].decode(): loads(reply[i + 1]) for i in range(1, len(reply), 2)}

    def finish(self, run_id: str) -> None:
        """Forget a join whose continuation is published; if Redis fails here, a sweeper
        publishes it again later (recorded once all the same)."""
        try:
            with self._redis.pipeline(transaction=True) as pipe:
                pipe.zrem(DUE_KEY, run_id)
                pipe.delete(JOIN_PREFIX + run_id)
                pipe.execute()
        except redis.RedisError as exc:
            logger.warning("run_id=%s join left to the sweeper, not removed: %s", run_id, exc)

    def overdue(self, *, now_s: float | None = None, limit: int = SWEEP_BATCH) -> list[str]:
        """run_ids of joins past their deadline (at most `limit`)."""
        now_s = time.time() if now_s is None else now_s
        return [r.decode() for r in self._redis.zrangebyscore(DUE_KEY, "-inf", now_s, 0, limit)]

    def take_overdue(
        self, run_id: str, *, now_s: float | None = None, lease_s: float = SWEEP_LEASE_S
    ) -> OverdueJoin | None:
        """Take `run_id`'s join if it is overdue and no other sweeper holds it; None if not.
        The sweeper holds it for `lease_s`: if it dies before `finish`, another takes it."""
        now_s = time.time() if now_s is None else now_s
        reply = self._take(
            keys=[DUE_KEY, JOIN_PREFIX + run_id], args=[run_id, now_s, now_s + lease_s]
        )
        if reply is None:
            return None
        if not reply:
            logger.error(
                "run_id=%s join overdue and its state gone (expired): not recoverable", run_id
            )
            return None
        fields = {reply[i].decode(): reply[i + 1] for i in range(0, len(reply), 2)}
        parts = {k[len(_PART) :]: loads(v) for k, v in fields.items() if k.startswith(_PART)}
        return OverdueJoin(
            run_id, loads(fields["base"]), fields["nodes"].decode().split(","), parts
        )
