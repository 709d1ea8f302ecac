"""The bridge: market ticks on Redis Pub/Sub (or a Redis Stream) in, one Celery run per batch out.

Redis disconnects a Pub/Sub subscriber whose output buffer grows past its limit
(`client-output-buffer-limit pubsub 32mb 8mb 60`), and Pub/Sub has no replay, so the read loop
does nothing slow: it reads a message, validates it (`parse_tick`), appends the tick to its
group's buffer and, when a batch is due, hands the run's state to a submitter thread through a
queue. The parts live beside this module: `config` (`BridgeConfig`), `batcher` (batching and
backpressure, no I/O), `submitter` (the thread that calls `submit`, and its retries) and
`stats` (counters, rejected-tick logging, the stats hash).

Failures
    If Redis goes away the read loop logs the start of the gap, reconnects with exponential
    backoff (0.1 s doubling to 5 s), resubscribes, logs the gap's length and counts
    `reconnects`; ticks published during the gap are lost (Pub/Sub keeps nothing). A failed
    `submit` is the submitter's to retry.

From a Redis Stream (`source="stream"`, see `stream`)
    The same batching, from a consumer group: a tick is acknowledged once its run is with the
    broker, a dead bridge's entries are taken over, and a batch formed before a crash is formed
    again with the same run_id. Losing Redis loses nothing: the stream keeps what is published.

Stop (`stop()`, which the CLI calls on SIGINT/SIGTERM)
    The bridge stops reading, has the batcher turn every non-empty buffer into a run, gives the
    submitter up to `drain_timeout_s` to submit everything queued, then logs the final
    counters, writes them to Redis and returns.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable

import orjson
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from osiris_tasks.bridge.batcher import Batcher
from osiris_tasks.bridge.config import BridgeConfig
from osiris_tasks.bridge.pubsub_backlog import backlog
from osiris_tasks.bridge.stats import BridgeCounters, RejectionLog, StatsReporter
from osiris_tasks.bridge.stats import reason_key as reason_key  # importable from here, as before
from osiris_tasks.bridge.stream import Entry, StreamReader, tick_data
from osiris_tasks.bridge.submitter import Submitter
from osiris_tasks.domain.ticks import parse_tick
from osiris_tasks.errors import BridgeError, TickRejected
from osiris_tasks.keys import ADVICE_CHANNEL
from osiris_tasks.keys import BRIDGE_STATS_KEY as STATS_KEY
from osiris_tasks.settings import redact_url

__all__ = ["ADVICE_CHANNEL", "STATS_KEY", "Bridge", "BridgeConfig", "BridgeCounters"]

logger = logging.getLogger(__name__)

# Longest the read loop blocks without checking stop, max_wait_s and in-flight expiry.
POLL_INTERVAL_S = 0.1
# Parsed in place of a stream entry without a `tick` field: rejected, as not JSON.
_NO_TICK_FIELD = b"\x00"
# Most messages the read loop takes straight from the connection between two get_message calls.
MAX_BUFFERED_READS = 1000
# Reconnect backoff after losing Redis: doubles from MIN to MAX.
RECONNECT_MIN_S, RECONNECT_MAX_S = 0.1, 5.0
# Socket timeouts of the client the bridge builds for itself.
CONNECT_TIMEOUT_S, SOCKET_TIMEOUT_S = 2.0, 5.0
# The Pub/Sub connection PINGs Redis when idle this long, so a dead peer is noticed.
HEALTH_CHECK_INTERVAL_S = 15


def _client_for(url: str) -> redis.Redis:
    """A client whose errors surface at once: the bridge does its own retrying."""
    return redis.Redis.from_url(
        url,
        socket_connect_timeout=CONNECT_TIMEOUT_S,
        socket_timeout=SOCKET_TIMEOUT_S,
        socket_keepalive=True,
        health_check_interval=HEALTH_CHECK_INTERVAL_S,
        retry=Retry(NoBackoff(), 0),
    )


class Bridge:
    """Reads ticks from Redis Pub/Sub and submits one run per batch (see the module docstring).

    `submit(state)` starts a run (the CLI passes `lambda state: submit_run(app, state)`); it is
    called from a submitter thread. With `submit_many(states)` (the CLI passes `submit_runs`),
    the runs queued for the submitter go in one call (one round trip to the broker), up to
    MAX_SUBMIT_BATCH; if it raises, each of them goes through `submit` (a run it had published
    is then published twice and recorded once: its run_id keys its task and its record).

    By default the bridge builds its Redis client from `config.redis_url`; a `redis_client`
    passed instead must not decode responses and should not retry (`retry=Retry(NoBackoff(),
    0)`), or redis-py reconnects behind the bridge's back and the gap goes uncounted. `clock`
    stamps each batch's `created_at`. A Bridge runs once.
    """

    def __init__(
        self,
        config: BridgeConfig,
        submit: Callable[[dict], None],
        *,
        submit_many: Callable[[list[dict]], object] | None = None,
        redis_client: redis.Redis | None = None,
        clock: Callable[[], float] = time.time,
    ):
        self._config = config
        self._owns_client = redis_client is None
        self._redis = _client_for(config.redis_url) if redis_client is None else redis_client
        self._counters = BridgeCounters()
        self._reader: StreamReader | None = None
        self._backlog: deque[Entry] = deque()  # read from the stream, waiting for a slot
        self._parse_tick = functools.partial(
            parse_tick, default_symbol=config.default_symbol, symbols=config.symbols
        )
        hooks = {}
        if config.source == "stream":
            self._reader = StreamReader(
                self._redis,
                config.market_stream,
                config.stream_group,
                config.consumer,
                claim_idle_s=config.claim_idle_s,
                retention=config.stream_retention,
            )
            hooks = {"before": self._mark_formed, "after": self._ack_jobs, "durable": True}
        self._submitter = Submitter(submit, self._counters, submit_many, **hooks)
        self._batcher = Batcher(
            config,
            self._counters,
            clock=clock,
            dispatch=self._submitter.put,
            stream=config.market_stream if config.source == "stream" else None,
        )
        self._stats = StatsReporter(
            self._redis,
            self._counters,
            config.stats_interval_s,
            close_timeout_s=SOCKET_TIMEOUT_S + CONNECT_TIMEOUT_S,
        )
        self._log_rejection = RejectionLog()
        self._stop = threading.Event()
        self._external_stop: threading.Event | None = None
        self._market = config.market_channel.encode()
        self._advice = ADVICE_CHANNEL.encode()

    @property
    def counters(self) -> dict[str, int]:
        """A snapshot of the counters (see `BridgeCounters`)."""
        return self._counters.snapshot()

    def stop(self) -> None:
        """Ask `run()` to stop; returns at once. Safe to call from a signal handler."""
        self._stop.set()

    def run(self, stop: threading.Event | None = None) -> None:
        """Read and batch until `stop()` is called or `stop` is set; then drain and return."""
        self._external_stop = stop
        config = self._config
        logger.info(
            "bridge starting: %s ticks_per_proposal=%d group_by=%s max_wait_s=%s "
            "max_inflight=%s proposal_ttl_s=%s",
            config.market_channel
            if self._reader is None
            else f"stream {config.market_stream} group {config.stream_group} "
            f"consumer {config.consumer}",
            config.ticks_per_proposal,
            config.group_by,
            config.max_wait_s,
            config.max_inflight,
            config.proposal_ttl_s,
        )
        self._submitter.start()
        self._stats.start()
        try:
            if self._reader is None:
                self._read_until_stopped()
            else:
                self._read_stream_until_stopped()
        finally:
            self._shutdown()

    def _stopping(self) -> bool:
        return self._stop.is_set() or (
            self._external_stop is not None and self._external_stop.is_set()
        )

    def _read_until_stopped(self) -> None:
        pubsub = self._connect(lost_at=None)
        while pubsub is not None:
            try:
                self._pump(pubsub)
                break
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                logger.warning(
                    "lost Redis at %s (%s); ticks published until we are back are lost",
                    redact_url(self._config.redis_url),
                    exc,
                )
                self._close(pubsub)
                pubsub = self._connect(lost_at=time.monotonic())
        self._close(pubsub)

    def _connect(self, *, lost_at: float | None) -> redis.client.PubSub | None:
        """Subscribe, retrying with backoff; None if stopped first."""
        delay_s, failures = RECONNECT_MIN_S, 0
        while not self._stopping():
            try:
                pubsub = self._subscribe()
            except redis.AuthenticationError as exc:
                raise BridgeError(f"Redis refused our credentials: {exc}") from exc
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                failures += 1
                logger.log(
                    logging.WARNING if failures == 1 else logging.INFO,
                    "Redis unreachable (%s); attempt %d, next in %.1f s",
                    exc,
                    failures,
                    delay_s,
                )
                self._batcher.flush_aged()
                self._sleep(delay_s)
                delay_s = min(delay_s * 2, RECONNECT_MAX_S)
                continue
            if lost_at is not None:
                self._counters.incr("reconnects")
                logger.warning(
                    "reconnected to Redis and resubscribed after a %.2f s gap (%d failed attempts)",
                    time.monotonic() - lost_at,
                    failures,
                )
            return pubsub
        return None

    def _subscribe(self) -> redis.client.PubSub:
        pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
        try:
            pubsub.subscribe(self._config.market_channel, ADVICE_CHANNEL)
        except redis.RedisError:
            self._close(pubsub)
            raise
        parser = type(getattr(pubsub.connection, "_parser", None)).__name__
        logger.info(
            "subscribed to %s and %s on %s (parser %s)",
            self._config.market_channel,
            ADVICE_CHANNEL,
            redact_url(self._config.redis_url),
            parser,
        )
        return pubsub

    def _pump(self, pubsub: redis.client.PubSub) -> None:
        """The hot loop: nothing here may block longer than POLL_INTERVAL_S."""
        next_housekeeping = 0.0
        while not self._stopping():
            message = pubsub.get_message(timeout=POLL_INTERVAL_S)
            if message is not None:
                self._on_message(message["channel"], message["data"])
                self._read_buffered(pubsub)
            now = time.monotonic()
            if now >= next_housekeeping:
                self._batcher.flush_aged()
                self._batcher.expire()
                next_housekeeping = now + POLL_INTERVAL_S

    def _read_buffered(self, pubsub: redis.client.PubSub) -> None:
        """Messages already on hand, read without `get_message`'s per-message cost."""
        market, on_tick = self._market, self._on_tick
        for reply in backlog(pubsub, MAX_BUFFERED_READS):
            if isinstance(reply, list) and reply[0] == b"message":
                if reply[1] == market:  # a tick: the common case, one call less
                    on_tick(reply[2])
                else:
                    self._on_message(reply[1], reply[2])
            else:
                pubsub.handle_message(reply, ignore_subscribe_messages=True)

    def _on_message(self, channel: bytes, data: bytes) -> None:
        if channel == self._market:
            self._on_tick(data)
        elif channel == self._advice:
            self._on_advice(data)

    def _on_tick(self, data: bytes) -> None:
        self._counters.incr("ticks_received")
        try:
            tick = parse_tick(
                data, default_symbol=self._config.default_symbol, symbols=self._config.symbols
            )
        except TickRejected as exc:
            self._counters.reject(exc.reason)
            self._log_rejection(exc, data)
            return
        self._batcher.add(tick)

    # -- the stream source ----------------------------------------------------------------------

    def _read_stream_until_stopped(self) -> None:
        lost_at: float | None = None
        delay_s, failures = RECONNECT_MIN_S, 0
        while not self._stopping():
            try:
                self._stream_session(lost_at, failures)
                return
            except redis.AuthenticationError as exc:
                raise BridgeError(f"Redis refused our credentials: {exc}") from exc
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                failures += 1
                if lost_at is None:
                    lost_at = time.monotonic()
                    logger.warning(
                        "lost Redis at %s (%s); the stream keeps what is published meanwhile",
                        redact_url(self._config.redis_url),
                        exc,
                    )
                self._batcher.flush_aged()
                self._sleep(delay_s)
                delay_s = min(delay_s * 2, RECONNECT_MAX_S)

    def _stream_session(self, lost_at: float | None, failures: int) -> None:
        """Join the group, take back this consumer's pending entries, then read until stopped."""
        reader = self._reader
        reader.ensure_group()
        advice = self._redis.pubsub(ignore_subscribe_messages=True)
        try:
            advice.subscribe(ADVICE_CHANNEL)
            if lost_at is not None:
                self._counters.incr("reconnects")
                logger.warning(
                    "reconnected to Redis after a %.2f s gap (%d failed attempts)",
                    time.monotonic() - lost_at,
                    failures,
                )
            self._on_returned(reader.own_pending())
            self._pump_stream(reader, advice)
        finally:
            self._close(advice)

    def _pump_stream(self, reader: StreamReader, advice: redis.client.PubSub) -> None:
        """The stream's hot loop. While `max_inflight` runs are in flight nothing is batched:
        entries already read wait in `_backlog` (held, so no one takes them over), the rest in
        the stream."""
        block_ms, next_housekeeping = int(POLL_INTERVAL_S * 1000), 0.0
        while not self._stopping():
            now = time.monotonic()
            if now >= next_housekeeping:
                self._read_advice(advice, timeout_s=0)
                self._batcher.flush_aged()
                self._batcher.expire()
                self._on_returned(reader.tend())
                next_housekeeping = now + POLL_INTERVAL_S
            if self._full():
                self._read_advice(advice, timeout_s=POLL_INTERVAL_S)
            elif self._backlog:
                self._on_entries([])
            else:
                self._on_entries(reader.read(block_ms))

    def _full(self) -> bool:
        limit = self._config.max_inflight
        return limit is not None and self._batcher.inflight >= limit

    def _read_advice(self, advice: redis.client.PubSub, *, timeout_s: float) -> None:
        while (message := advice.get_message(timeout=timeout_s)) is not None:
            self._on_advice(message["data"])
            timeout_s = 0

    def _on_entries(self, entries: list[Entry]) -> None:
        """New entries (after those waiting in `_backlog`): each a tick to batch, or rejected
        (and acknowledged at once); at `max_inflight` the rest wait in `_backlog`."""
        if self._config.max_inflight is None:
            self._batch_entries(entries)
            return
        backlog = self._backlog
        backlog.extend(entries)
        while backlog and not self._full():
            self._batch_entries([backlog.popleft()])

    def _batch_entries(self, entries: list[Entry]) -> None:
        """The stream's hot path: decode, validate and batch each entry's tick."""
        parse, add, rejected = self._parse_tick, self._batcher.add, []
        for entry_id, fields in entries:
            try:
                tick = parse(tick_data(fields) or _NO_TICK_FIELD)
            except TickRejected as exc:
                self._reject(exc, fields)
                rejected.append(entry_id)
                continue
            add(tick, entry_id)
        self._counters.incr("ticks_received", len(entries))
        if rejected:
            self._reader.ack(rejected)

    def _reject(self, exc: TickRejected, fields: list[bytes] | None) -> None:
        if tick_data(fields) is None:
            exc = TickRejected("stream entry has no 'tick' field", sample=repr(fields)[:80])
        self._counters.reject(exc.reason)
        self._log_rejection(exc, tick_data(fields) or b"")

    def _on_returned(self, entries: list[Entry]) -> None:
        """Entries read before (a restart, or a dead bridge's): a formed batch is formed again
        as it was, with its run_id; the rest are batched like new ticks."""
        if not entries:
            return
        self._counters.incr("ticks_reclaimed", len(entries))
        gone = [entry_id for entry_id, fields in entries if not fields]
        if gone:
            logger.error(
                "%d entries of %s were trimmed before anyone acknowledged them: their ticks "
                "are lost (raise OSIRIS_MARKET_STREAM_MAXLEN)",
                len(gone),
                self._config.market_stream,
            )
            self._counters.incr("ticks_trimmed", len(gone))
            self._reader.ack(gone)
        live = [(entry_id, fields) for entry_id, fields in entries if fields]
        formed: dict[str, list[Entry]] = {}
        fresh: list[Entry] = []
        for entry, run_id in zip(live, self._reader.formed_of([e[0] for e in live]), strict=True):
            (formed.setdefault(run_id, []) if run_id else fresh).append(entry)
        for run_id, batch in formed.items():
            self._reform(run_id, batch)
        self._on_entries(fresh)

    def _reform(self, run_id: str, batch: list[Entry]) -> None:
        ticks, entry_ids = [], []
        self._counters.incr("ticks_received", len(batch))
        for entry_id, fields in batch:
            try:
                ticks.append(self._parse_tick(tick_data(fields) or _NO_TICK_FIELD))
            except TickRejected as exc:
                self._reject(exc, fields)
                continue
            entry_ids.append(entry_id)
        dropped = [entry_id for entry_id, _ in batch if entry_id not in entry_ids]
        if ticks:
            self._counters.incr("runs_reformed")
            logger.info("run_id=%s formed again from %d stream entries", run_id, len(ticks))
            self._batcher.reform(run_id, ticks, [*entry_ids, *dropped])
        elif dropped:
            self._reader.ack(dropped)

    def _mark_formed(self, jobs: list) -> None:
        self._reader.mark_formed((job.run_id, job.entry_ids) for job in jobs if job.entry_ids)

    def _ack_jobs(self, jobs: list) -> None:
        self._reader.ack(
            [entry_id for job in jobs for entry_id in job.entry_ids],
            [job.run_id for job in jobs if job.entry_ids],
        )

    # -- advice ----------------------------------------------------------------------------------

    def _on_advice(self, data: bytes) -> None:
        try:
            run_id = orjson.loads(data).get("run_id")
        except (orjson.JSONDecodeError, AttributeError):
            logger.debug("ignored a %s message that is not a JSON object", ADVICE_CHANNEL)
            return
        if isinstance(run_id, str):
            self._batcher.release(run_id)

    def _sleep(self, delay_s: float) -> None:
        """Sleep without waiting on a lock, so `stop()` from a signal handler cannot deadlock."""
        deadline = time.monotonic() + delay_s
        while not self._stopping() and (left := deadline - time.monotonic()) > 0:
            time.sleep(min(left, POLL_INTERVAL_S))

    def _shutdown(self) -> None:
        if self._backlog:
            self._counters.incr("ticks_left_pending", len(self._backlog))
            self._backlog.clear()
        self._batcher.drain()
        self._submitter.close(self._config.drain_timeout_s)
        self._stats.close()
        if self._owns_client:
            self._redis.close()

    @staticmethod
    def _close(pubsub: redis.client.PubSub | None) -> None:
        if pubsub is not None:
            try:
                pubsub.close()
            except (redis.RedisError, OSError):
                logger.debug("closing a broken Pub/Sub connection failed", exc_info=True)
