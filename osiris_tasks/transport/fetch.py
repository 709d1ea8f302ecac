"""Reliable fetch for the Redis broker: a message leaves its queue and enters the unacked hash
in one step.

kombu's Redis consumer takes a message with BRPOP and records it as unacknowledged afterwards,
with a second command. A worker that dies between the two (SIGKILL, OOM, a lost connection
with the BRPOP reply in flight) loses the message: it is in neither the queue nor the unacked
hash, so the visibility timeout cannot bring it back (celery/celery#4354, #7950). A run lost
this way would leave no run record.

Here a consumer fetches with one Lua script (`FETCH`): it pops the first message of the
channel's queues, in kombu's fair-cycle and priority order, and writes it into the unacked
index and hash under a new delivery tag, atomically. From then on the
message is either still queued or restorable after the visibility timeout, whatever happens to
the worker. This also saves kombu's second command and sending the message body back to Redis.

A script cannot block, so an idle consumer waits with XREAD on one small stream per queue, the
queue's *bell* (`MAXLEN 1`), that every publish and every restore appends to; it fetches when a
bell rings, or after `brpop_timeout` at the latest (a message pushed by a client that rings no
bell, such as kombu's stock transport, still goes within that time). While fetches find
messages the consumer fetches again straight away. Every idle consumer of a queue wakes for a
message and one of them gets it: cheap with a few worker processes per queue.

Messages keep kombu's format in the queues and in the unacked hash, so kombu's restore paths
(visibility timeout, reject, shutdown) are unchanged; the unacked entry names the queue the
message came from (the default exchange, the queue as routing key), which is where a restore
puts it back. Queues consumed without acks (`no_ack`, such as Celery's control replies) are
popped by the same script without being recorded, as kombu does.

Where Redis refuses the script or the streams (an ACL without them, say), the channel logs a
warning and consumes with kombu's BRPOP from then on; publishes stop ringing once a ring fails.
"""

from __future__ import annotations

import logging
from time import monotonic, time
from typing import Any
from uuid import uuid4

import orjson
from kombu.transport import redis as kombu_redis
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import loads
from redis.exceptions import NoScriptError

from osiris_tasks import lua

__all__ = ["BELL_TTL_S", "FETCH", "FETCHED_TAG_PREFIX", "ReliableFetch"]

logger = logging.getLogger(__name__)

# Delivery tags of fetched messages: this prefix and a random hex id.
FETCHED_TAG_PREFIX = "osiris-fetch:"
# Entries kept in a queue's bell stream: a ring only needs the newest.
BELL_MAXLEN = 1
# A bell outlives its last ring by this long (temporary queues, such as Celery's control
# replies, would otherwise leave theirs behind); a consumer waiting on it is not disturbed.
BELL_TTL_S = 3600
# Bounds of an idle consumer's wait on its bells, whatever `brpop_timeout` says (0 would wait
# for good, and a message pushed without a ring would never go).
MIN_WAIT_MS, MAX_WAIT_MS = 1, 10_000

# Queue orders whose FETCH arguments a channel keeps (kombu's fair cycle makes one per queue).
FETCH_ARGS_CACHED = 64

# A fetched reply read this fraction of the visibility timeout after its fetch is checked
# against the unacked hash before delivery (a restore may have taken it back).
STALE_REPLY_FRACTION = 0.5

# The fetch script (`lua/fetch.lua`): loaded by SHA, sent as EVALSHA on the consumer's own
# connection, its reply read when the connection is readable.
FETCH = lua.source("fetch")


class ReliableFetch(kombu_redis.Channel):
    """kombu's Redis channel consuming with `FETCH` and bells instead of BRPOP."""

    _fetch_sha: str | None = None
    _fetch_waits = False  # the last fetch found nothing: wait on the bells next
    _pending: tuple[str, list[str]] | None = None  # the command in flight, its queues
    _bell_ids: dict[str, bytes] | None = None
    _fetch_args_cache: dict[tuple[Any, ...], tuple[list[str], list[str], list[bytes]]] | None = None
    _no_ack_queues: frozenset[str] = frozenset()
    _brpop_only = False  # Redis refused the script or the streams: kombu's BRPOP from now on
    bells = True  # rings go with publishes and restores (off once Redis refused one)

    def bell_key(self, queue: str) -> str:
        """The key of `queue`'s bell stream, with the global key prefix."""
        return f"{self.global_keyprefix}{queue}{self.sep}bell"

    def rings(self, queue: str) -> list[tuple[Any, ...]]:
        """The commands ringing `queue`'s bell, as (redis-py method name, *arguments)."""
        if not self.bells:
            return []
        bell = self.bell_key(queue)
        return [("xadd", bell, {"r": ""}, "*", BELL_MAXLEN, False), ("expire", bell, BELL_TTL_S)]

    def ring_failed(self, exc: Exception) -> None:
        """A ring was refused: publish without them (consumers still poll every wait)."""
        if self.bells:
            self.bells = False
            logger.warning(
                "ringing a queue's bell failed (%s): publishing without bells; "
                "idle consumers take such messages within their wait",
                exc,
            )

    def basic_consume(self, queue: str, no_ack: bool, *args: Any, **kwargs: Any) -> Any:
        if no_ack or not self.ack_emulation:
            self._no_ack_queues = self._no_ack_queues | {queue}
        return super().basic_consume(queue, no_ack, *args, **kwargs)

    def _basic_cancel(self, consumer_tag: str) -> Any:
        queue = self._tag_to_queue.get(consumer_tag)
        ret = super()._basic_cancel(consumer_tag)
        if queue is not None and queue not in self._active_queues:
            self._no_ack_queues = self._no_ack_queues - {queue}
        return ret

    def _do_restore_message(
        self, payload: Any, exchange: str, routing_key: str, pipe: Any, leftmost: bool = False
    ) -> None:
        super()._do_restore_message(payload, exchange, routing_key, pipe, leftmost)
        for queue in self._lookup(exchange, routing_key):
            for name, *args in self.rings(queue):
                getattr(pipe, name)(*args)

    def _brpop_start(self, timeout: float | None = None) -> None:
        if self._brpop_only:
            return super()._brpop_start(timeout)
        queues = self._queue_cycle.consume(len(self.active_queues))
        if not queues:
            return None
        if self._fetch_waits:
            command = self._wait_command(queues, self.brpop_timeout if timeout is None else timeout)
        else:
            command = self._fetch_command(queues)
        connection = self.client.connection
        self._in_poll = connection
        self._brpop_sent_at = monotonic()
        connection.send_command(*command)
        return None

    def _fetch_command(self, queues: list[str]) -> list[Any]:
        if self._fetch_sha is None:
            self._fetch_sha = self._create_client().script_load(FETCH)
        order, keys, names = self._fetch_args(tuple(queues), self._no_ack_queues)
        self._pending = ("FETCH", order)
        return [
            "EVALSHA",
            self._fetch_sha,
            len(keys),
            *keys,
            time(),
            FETCHED_TAG_PREFIX + uuid4().hex,
            *names,
        ]

    def _fetch_args(
        self,
        queues: tuple[str, ...],
        no_ack: frozenset[str],
    ) -> tuple[list[str], list[str], list[bytes]]:
        """For `FETCH` over `queues`: each list key's queue, the keys, the queue names as
        ARGV. Built once per queue order (the fair cycle repeats a few), not per fetch."""
        if self._fetch_args_cache is None or len(self._fetch_args_cache) > FETCH_ARGS_CACHED:
            self._fetch_args_cache = {}
        args = self._fetch_args_cache.get((queues, no_ack))
        if args is None:
            prefix = self.global_keyprefix
            pairs = [
                (self._q_for_pri(queue, pri), queue)
                for pri in self.priority_steps
                for queue in queues
            ]
            keys = [
                prefix + self.unacked_index_key,
                prefix + self.unacked_key,
                *(prefix + key for key, _ in pairs),
            ]
            names = [b"" if queue in no_ack else orjson.dumps(queue) for _, queue in pairs]
            args = self._fetch_args_cache[(queues, no_ack)] = (
                [queue for _, queue in pairs],
                keys,
                names,
            )
        return args

    def _wait_command(self, queues: list[str], timeout: float | None) -> list[Any]:
        if self._bell_ids is None:
            self._bell_ids = {}
        bells = [self.bell_key(queue) for queue in queues]
        self._pending = ("XREAD", bells)
        ids = [self._bell_ids.get(bell, b"0-0") for bell in bells]
        wait_ms = min(max(int((timeout or 0) * 1000), MIN_WAIT_MS), MAX_WAIT_MS)
        return ["XREAD", "COUNT", 1, "BLOCK", wait_ms, "STREAMS", *bells, *ids]

    def _brpop_read(self, **options: Any) -> bool:
        if self._pending is None:  # kombu's BRPOP is in flight (or nothing is)
            return super()._brpop_read(**options)
        kind, names = self._pending
        self._pending = None
        try:
            try:
                # A command name without a response callback: the reply as Redis sent it.
                reply = self.client.parse_response(
                    self.client.connection, f"OSIRIS_{kind}", **options
                )
            except self.connection_errors:
                self.client.connection.disconnect()
                raise
            except self.ResponseError as exc:
                self._refused(kind, exc)
                raise kombu_redis.Empty() from None
            if kind == "XREAD":
                self._rang(reply)
                raise kombu_redis.Empty()
            if not reply:
                self._fetch_waits = True
                raise kombu_redis.Empty()
            return self._deliver_fetched(reply, names)
        finally:
            self._in_poll = None
            self._flush_brpop_reauth()

    def _deliver_fetched(self, reply: list[Any], names: list[str]) -> bool:
        position, tag, raw = reply
        queue = names[position - 1]
        self._queue_cycle.rotate(queue)
        try:
            payload = loads(bytes_to_str(raw))
            properties = payload["properties"]
        except (ValueError, TypeError, KeyError) as exc:
            # Not a kombu message: nothing can run it. Dropped, not restored forever.
            logger.error(
                "dropping a message in queue %s that is not a kombu message (%s): %.200r",
                queue,
                exc,
                raw,
            )
            if tag:
                self.qos.forget(bytes_to_str(tag))
            raise kombu_redis.Empty() from None
        if tag:
            tag = properties["delivery_tag"] = bytes_to_str(tag)
            if self._restored_meanwhile(tag):
                raise kombu_redis.Empty()
        self.connection._deliver(payload, queue)
        return True

    def _restored_meanwhile(self, tag: str) -> bool:
        """Whether the visibility timeout has restored this message while its reply waited
        unread (kombu pauses reading while the worker has no credit): then it is back in its
        queue, and delivering this copy too would run it twice."""
        if monotonic() - self._brpop_sent_at < self.visibility_timeout * STALE_REPLY_FRACTION:
            return False
        if self._create_client().hexists(self.global_keyprefix + self.unacked_key, tag):
            return False
        logger.warning(
            "a fetched message waited unread past the visibility timeout and was "
            "restored to its queue meanwhile: not delivering this copy (tag %s)",
            tag,
        )
        return True

    def _poll_error(self, type: str, **options: Any) -> None:
        if type == "BRPOP" and self._pending is not None:
            self._brpop_read(**options)  # our reply, read by our parser (a message is kept)
            return
        super()._poll_error(type, **options)

    def _rang(self, reply: Any) -> None:
        """Note the newest entry of each bell that rang; the next poll fetches."""
        self._fetch_waits = False
        # A map under RESP3, a list of pairs under RESP2.
        for bell, entries in reply.items() if isinstance(reply, dict) else reply or ():
            self._bell_ids[bytes_to_str(bell)] = entries[-1][0]

    def _refused(self, kind: str, exc: Exception) -> None:
        if kind == "FETCH" and isinstance(exc, NoScriptError):
            self._fetch_sha = None  # Redis lost its script cache (a restart): load it again
            return
        self._brpop_only = True
        logger.warning(
            "Redis refused the reliable fetch's %s (%s): consuming with kombu's "
            "BRPOP, which loses a message whose worker dies while taking it",
            kind,
            exc,
        )
