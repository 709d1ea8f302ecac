"""The bridge: market ticks on Redis Pub/Sub in, one Celery run per batch out.

Redis disconnects a Pub/Sub subscriber whose output buffer grows past its limit
(`client-output-buffer-limit pubsub 32mb 8mb 60`), and Pub/Sub has no replay, so the read loop
does nothing slow: it reads a message, validates it (`parse_tick`), appends the tick to its
group's buffer and, when a batch is due, hands the run's state to a submitter thread through a
queue. Only the submitter calls `submit` (Celery's `apply_async` does network I/O); runs that
queued up while it was busy go together, in one `submit_many` call (one round trip).

Batching
    Ticks are grouped per symbol (`group_by="symbol"`) or all in one buffer (`"none"`). A group
    whose buffer holds `ticks_per_proposal` ticks is due. With `max_wait_s`, a non-empty buffer
    whose first tick arrived `max_wait_s` ago is due too (checked every 0.1 s, with or without
    traffic). A due group becomes one run: `initial_state(ticks, run_id=new_run_id(),
    created_at=<clock() when the batch is formed>, ttl_s=proposal_ttl_s)`, its ticks held as an
    `EncodedList` (their JSON, a third of their dicts' memory while the run waits for the
    submitter; the task message carries the JSON as it is). A rejected tick is
    counted per reason, logged at most once per reason every 5 s (with a sample), and never
    enters a batch.

Backpressure (`max_inflight=N`)
    A run is in flight from the moment its batch is formed until the bridge sees
    `advice.generated` with its `run_id` (the bridge subscribes to that channel on the same
    connection), or until 10 minutes have passed (the run is then released with a warning, so
    a lost event cannot wedge the bridge). While N runs are in flight, a due group is not
    submitted: it waits in arrival order, and its buffer keeps only the freshest
    `ticks_per_proposal` ticks; each older tick it pushes out is dropped and counted as
    `ticks_coalesced`. As soon as a slot frees, the group that has waited longest is submitted
    with its freshest window. At any moment
    `ticks_received = ticks_rejected + ticks_batched + ticks_coalesced + ticks still buffered`.

Failures
    If Redis goes away the read loop logs the start of the gap, reconnects with exponential
    backoff (0.1 s doubling to 5 s), resubscribes, logs the gap's length and counts
    `reconnects`; ticks published during the gap are lost (Pub/Sub keeps nothing). A failed
    `submit` (broker down) is logged with its run_id, counted in `submit_failures` and retried
    with backoff (0.5 s doubling to 10 s); the batch is kept until it goes through or the
    bridge stops.

Stop (`stop()`, which the CLI calls on SIGINT/SIGTERM)
    The bridge stops reading, turns every non-empty buffer (partial or held back) into a run,
    ignoring `max_inflight`, with one log line per batch (run_id, tick count), and gives the
    submitter up to `drain_timeout_s` (10 s) to submit everything queued, retries included.
    Runs still unsubmitted then are logged one by one (run_id, tick count) and counted as
    `runs_abandoned`. It then logs the final counters, writes them to Redis and returns.

Counters
    `ticks_received`, `ticks_rejected` (and `ticks_rejected.<reason>`), `ticks_batched`,
    `ticks_coalesced`, `runs_submitted`, `submit_failures`, `runs_abandoned`, `reconnects` and
    the gauge `inflight`: logged every `stats_interval_s` and written to the Redis hash
    `osiris:bridge:stats` (with `status` and `updated_at`); `Bridge.counters` is a snapshot.
"""

from __future__ import annotations

import logging
import queue
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import orjson
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from .errors import BridgeError, ConfigError, TickRejected
from .ids import new_run_id, utc_iso
from .pubsub_backlog import backlog
from .serialization import EncodedList
from .settings import redact_url
from .state import initial_state
from .ticks import parse_tick

__all__ = ["ADVICE_CHANNEL", "STATS_KEY", "Bridge", "BridgeConfig", "BridgeCounters"]

logger = logging.getLogger(__name__)

ADVICE_CHANNEL = "advice.generated"
STATS_KEY = "osiris:bridge:stats"
# The group key of the single buffer when group_by="none".
ALL_SYMBOLS = "*"
# Longest the read loop blocks without checking stop, max_wait_s and in-flight expiry.
POLL_INTERVAL_S = 0.1
# Most messages the read loop takes straight from the connection between two get_message calls.
MAX_BUFFERED_READS = 1000
# A run with no advice.generated after this long is released from the in-flight set.
INFLIGHT_TIMEOUT_S = 600.0
# Reconnect backoff after losing Redis: doubles from MIN to MAX.
RECONNECT_MIN_S, RECONNECT_MAX_S = 0.1, 5.0
# Backoff between attempts to submit one run: doubles from MIN to MAX.
SUBMIT_BACKOFF_MIN_S, SUBMIT_BACKOFF_MAX_S = 0.5, 10.0
# Runs the submitter hands to `submit_many` at most at once (those queued when it gets to them).
MAX_SUBMIT_BATCH = 32
# At stop, how long the submitter may take by default to submit what is queued.
DRAIN_TIMEOUT_S = 10.0
# At most one log line per rejection reason per this many seconds.
REJECT_LOG_INTERVAL_S = 5.0
# Socket timeouts of the client the bridge builds for itself.
CONNECT_TIMEOUT_S, SOCKET_TIMEOUT_S = 2.0, 5.0
# The Pub/Sub connection PINGs Redis when idle this long, so a dead peer is noticed.
HEALTH_CHECK_INTERVAL_S = 15
REASON_KEY_CHARS = 40
# How much of a rejected message its log line shows.
SAMPLE_CHARS = 80


@dataclass(frozen=True)
class BridgeConfig:
    """What the bridge reads, how it batches, and how hard it may push the workers."""

    redis_url: str
    market_channel: str = "market.ticks"
    ticks_per_proposal: int = 10
    max_wait_s: float | None = None
    group_by: Literal["symbol", "none"] = "symbol"
    default_symbol: str = "SPY"
    proposal_ttl_s: float | None = None
    max_inflight: int | None = None
    stats_interval_s: float = 10.0
    drain_timeout_s: float = DRAIN_TIMEOUT_S

    def __post_init__(self) -> None:
        if self.ticks_per_proposal < 1:
            raise ConfigError("ticks_per_proposal must be at least 1")
        if self.group_by not in ("symbol", "none"):
            raise ConfigError(f"group_by must be 'symbol' or 'none', not {self.group_by!r}")
        if self.max_inflight is not None and self.max_inflight < 1:
            raise ConfigError("max_inflight must be at least 1 (or unset)")
        for name in ("max_wait_s", "proposal_ttl_s"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive (or unset)")
        if self.stats_interval_s <= 0 or self.drain_timeout_s < 0:
            raise ConfigError("stats_interval_s must be positive, drain_timeout_s not negative")


def reason_key(reason: str) -> str:
    """A stable counter key for a rejection reason: `not JSON: ...` -> `not_json`."""
    head = reason.split(":", 1)[0].lower()
    return re.sub(r"[^a-z]+", "_", head).strip("_")[:REASON_KEY_CHARS] or "other"


class BridgeCounters:
    """Thread-safe counters and gauges of a bridge; `snapshot()` is a flat dict for export."""

    NAMES = ("ticks_received", "ticks_rejected", "ticks_batched", "ticks_coalesced",
             "runs_submitted", "submit_failures", "runs_abandoned", "reconnects", "inflight")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values = dict.fromkeys(self.NAMES, 0)

    def incr(self, name: str, amount: int = 1) -> None:
        """Add `amount` to counter `name`."""
        with self._lock:
            self._values[name] = self._values.get(name, 0) + amount

    def set(self, name: str, value: int) -> None:
        """Set gauge `name`."""
        with self._lock:
            self._values[name] = value

    def reject(self, reason: str) -> None:
        """Count a rejected tick under `ticks_rejected` and `ticks_rejected.<reason key>`."""
        key = "ticks_rejected." + reason_key(reason)
        with self._lock:
            self._values["ticks_rejected"] += 1
            self._values[key] = self._values.get(key, 0) + 1

    def snapshot(self) -> dict[str, int]:
        """A copy of every counter and gauge."""
        with self._lock:
            return dict(self._values)


class _RejectionLog:
    """Logs a rejected tick at most once per reason per interval, with how many were skipped."""

    def __init__(self, interval_s: float = REJECT_LOG_INTERVAL_S):
        self._interval_s = interval_s
        self._last: dict[str, float] = {}
        self._skipped: dict[str, int] = {}

    def __call__(self, exc: TickRejected, raw: bytes) -> None:
        key, now = reason_key(exc.reason), time.monotonic()
        if now - self._last.get(key, -self._interval_s) < self._interval_s:
            self._skipped[key] = self._skipped.get(key, 0) + 1
            return
        self._last[key] = now
        logger.warning("tick rejected: %s; sample %r (%d more like it not logged)",
                       exc.reason, exc.sample or _sample(raw), self._skipped.pop(key, 0))


def _sample(raw: bytes | str) -> str:
    """The start of a message, printable and on one line."""
    text = raw[:SAMPLE_CHARS]
    text = text.decode("utf-8", "replace") if isinstance(text, bytes) else text
    return text.encode("unicode_escape").decode("ascii")


@dataclass
class _Job:
    """A run waiting for the submitter."""

    state: dict[str, Any]
    group: str
    why: str  # "full", "max_wait" or "stop"

    @property
    def run_id(self) -> str:
        return self.state["run_id"]


class _Batcher:
    """Buffers per group, the groups waiting for a slot, and the in-flight runs; no I/O."""

    def __init__(self, config: BridgeConfig, counters: BridgeCounters, *,
                 clock: Callable[[], float], dispatch: Callable[[_Job], None]):
        self._config, self._counters = config, counters
        self._clock, self._dispatch = clock, dispatch
        self._buffers: dict[str, deque] = {}
        self._started_at: dict[str, float] = {}  # clock() at a buffer's first tick
        self._due: dict[str, str] = {}  # group -> why; insertion order is waiting order
        self._inflight: dict[str, float] = {}  # run_id -> monotonic time it was formed

    def add(self, tick: dict[str, Any]) -> None:
        """Buffer a validated tick; submit its group's batch if it is due and a slot is free."""
        key = tick["symbol"] if self._config.group_by == "symbol" else ALL_SYMBOLS
        buffer = self._buffers.get(key)
        if buffer is None:
            buffer = self._buffers[key] = deque(maxlen=self._config.ticks_per_proposal)
            self._started_at[key] = self._clock()
        elif len(buffer) == buffer.maxlen:
            self._counters.incr("ticks_coalesced")  # held back: the oldest tick falls out
        buffer.append(tick)
        if len(buffer) == buffer.maxlen and self._due.get(key) != "full":
            self._due[key] = "full"
            self._dispatch_due()

    def flush_aged(self) -> None:
        """Mark buffers whose first tick is `max_wait_s` old as due, and submit what can be."""
        if self._config.max_wait_s is not None:
            oldest_start = self._clock() - self._config.max_wait_s
            for key, started_at in self._started_at.items():
                if started_at <= oldest_start and key not in self._due:
                    self._due[key] = "max_wait"
        self._dispatch_due()

    def release(self, run_id: str) -> None:
        """`run_id` finished: free its slot (unknown run ids are someone else's)."""
        if self._inflight.pop(run_id, None) is not None:
            self._counters.set("inflight", len(self._inflight))
            self._dispatch_due()

    def expire(self) -> None:
        """Release runs in flight for longer than INFLIGHT_TIMEOUT_S (a lost event)."""
        cutoff = time.monotonic() - INFLIGHT_TIMEOUT_S
        while self._inflight:
            run_id, formed_at = next(iter(self._inflight.items()))
            if formed_at > cutoff:
                break
            logger.warning("run_id=%s no %s within %.0f s; released from the in-flight set",
                           run_id, ADVICE_CHANNEL, INFLIGHT_TIMEOUT_S)
            self.release(run_id)

    def drain(self) -> None:
        """At stop: every non-empty buffer becomes a run now, whatever is in flight."""
        for key in [*self._due, *(k for k in self._buffers if k not in self._due)]:
            job = self._form(key, "stop")
            logger.info("run_id=%s batch of %d ticks (group %s) formed at stop",
                        job.run_id, len(job.state["ticks"]), key)
        self._due.clear()

    def _dispatch_due(self) -> None:
        limit = self._config.max_inflight
        while self._due and (limit is None or len(self._inflight) < limit):
            key = next(iter(self._due))
            self._form(key, self._due.pop(key))

    def _form(self, key: str, why: str) -> _Job:
        # Encoded now: a formed run may wait for the submitter through a burst, and its JSON
        # is a third of its dicts' memory (the message carries the JSON as it is).
        ticks = EncodedList(self._buffers.pop(key))
        del self._started_at[key]
        created_at = self._clock()
        state = initial_state(ticks, run_id=new_run_id(created_at), created_at=created_at,
                              ttl_s=self._config.proposal_ttl_s, copy_ticks=False)
        self._inflight[state["run_id"]] = time.monotonic()
        self._counters.incr("ticks_batched", len(ticks))
        self._counters.set("inflight", len(self._inflight))
        job = _Job(state, key, why)
        self._dispatch(job)
        return job


_CLOSE = object()  # tells the submitter thread that no more jobs will come


class _Submitter:
    """A thread that calls `submit` for each job, retrying failures with backoff; with
    `submit_many`, the jobs queued when it gets to them go together (up to MAX_SUBMIT_BATCH),
    and a failed batch is submitted again one job at a time."""

    def __init__(self, submit: Callable[[dict], None], counters: BridgeCounters,
                 submit_many: Callable[[list[dict]], object] | None = None):
        self._submit, self._submit_many, self._counters = submit, submit_many, counters
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._pending: dict[str, _Job] = {}  # queued or being retried, by run_id
        self._lock = threading.Lock()
        self._abort = threading.Event()
        self._thread = threading.Thread(target=self._work, name="osiris-bridge-submit",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()

    def put(self, job: _Job) -> None:
        """Queue `job` for submission (never blocks)."""
        with self._lock:
            self._pending[job.run_id] = job
        self._queue.put(job)

    def close(self, timeout_s: float) -> None:
        """Submit what is queued within `timeout_s`; log and count every run left over."""
        self._queue.put(_CLOSE)
        self._thread.join(timeout_s)
        self._abort.set()
        with self._lock:
            leftover, self._pending = list(self._pending.values()), {}
        for job in leftover:
            logger.error("run_id=%s NOT submitted: %d ticks (group %s) dropped at stop",
                         job.run_id, len(job.state["ticks"]), job.group)
        self._counters.incr("runs_abandoned", len(leftover))

    def _work(self) -> None:
        closing = False
        while not closing and (job := self._queue.get()) is not _CLOSE:
            jobs = [job]
            while self._submit_many is not None and len(jobs) < MAX_SUBMIT_BATCH:
                try:
                    job = self._queue.get_nowait()
                except queue.Empty:
                    break
                if job is _CLOSE:
                    closing = True
                    break
                jobs.append(job)
            if self._abort.is_set():
                return
            if len(jobs) == 1 or not self._submit_together(jobs):
                for job in jobs:
                    self._submit_until_done(job)

    def _submit_together(self, jobs: list[_Job]) -> bool:
        """One `submit_many` call for `jobs`; False if it failed (any of them may be out)."""
        try:
            self._submit_many([job.state for job in jobs])
        except Exception as exc:  # `submit_many` is the caller's: the jobs go one by one
            self._counters.incr("submit_failures")
            logger.warning("submitting %d runs together failed: %r; submitting them one by one",
                           len(jobs), exc)
            return False
        for job in jobs:
            self._done(job, 1)
        return True

    def _submit_until_done(self, job: _Job) -> None:
        delay_s, attempt = SUBMIT_BACKOFF_MIN_S, 1
        while not self._abort.is_set():
            try:
                self._submit(job.state)
            except Exception as exc:  # `submit` is the caller's: any failure is retried
                self._counters.incr("submit_failures")
                logger.warning("run_id=%s submit attempt %d failed (%d ticks): %r; retry in "
                               "%.1f s", job.run_id, attempt, len(job.state["ticks"]), exc,
                               delay_s)
                self._abort.wait(delay_s)
                delay_s, attempt = min(delay_s * 2, SUBMIT_BACKOFF_MAX_S), attempt + 1
                continue
            self._done(job, attempt)
            return

    def _done(self, job: _Job, attempt: int) -> None:
        self._counters.incr("runs_submitted")
        with self._lock:
            known = self._pending.pop(job.run_id, None) is not None
        level = logging.DEBUG if attempt == 1 and known and job.why == "full" else logging.INFO
        logger.log(level, "run_id=%s submitted: %d ticks (group %s, %s) after %d attempt(s)%s",
                   job.run_id, len(job.state["ticks"]), job.group, job.why, attempt,
                   "" if known else ", after stop had reported it as not submitted")


class _StatsReporter:
    """Logs the counters and writes them to the `osiris:bridge:stats` hash, periodically."""

    def __init__(self, client: redis.Redis, counters: BridgeCounters, interval_s: float):
        self._redis, self._counters, self._interval_s = client, counters, interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._work, name="osiris-bridge-stats",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        """Stop reporting periodically; report the final counters once."""
        self._stop.set()
        self._thread.join(SOCKET_TIMEOUT_S + CONNECT_TIMEOUT_S)
        self.report("stopped")

    def _work(self) -> None:
        while not self._stop.wait(self._interval_s):
            self.report("running")

    def report(self, status: str) -> None:
        """Log the counters and write them, with `status` and `updated_at`, to Redis."""
        counters = self._counters.snapshot()
        logger.info("bridge %s: %s", status, " ".join(f"{k}={v}" for k, v in counters.items()))
        fields = {**counters, "status": status, "updated_at": utc_iso()}
        try:
            with self._redis.pipeline(transaction=True) as pipe:
                pipe.delete(STATS_KEY).hset(STATS_KEY, mapping=fields).execute()
        except redis.RedisError as exc:
            logger.warning("counters not written to %s: %s", STATS_KEY, exc)


def _client_for(url: str) -> redis.Redis:
    """A client whose errors surface at once: the bridge does its own retrying."""
    return redis.Redis.from_url(
        url, socket_connect_timeout=CONNECT_TIMEOUT_S, socket_timeout=SOCKET_TIMEOUT_S,
        socket_keepalive=True, health_check_interval=HEALTH_CHECK_INTERVAL_S,
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

    def __init__(self, config: BridgeConfig, submit: Callable[[dict], None], *,
                 submit_many: Callable[[list[dict]], object] | None = None,
                 redis_client: redis.Redis | None = None, clock: Callable[[], float] = time.time):
        self._config = config
        self._owns_client = redis_client is None
        self._redis = _client_for(config.redis_url) if redis_client is None else redis_client
        self._counters = BridgeCounters()
        self._submitter = _Submitter(submit, self._counters, submit_many)
        self._batcher = _Batcher(config, self._counters, clock=clock,
                                 dispatch=self._submitter.put)
        self._stats = _StatsReporter(self._redis, self._counters, config.stats_interval_s)
        self._log_rejection = _RejectionLog()
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
        logger.info("bridge starting: %s ticks_per_proposal=%d group_by=%s max_wait_s=%s "
                    "max_inflight=%s proposal_ttl_s=%s", config.market_channel,
                    config.ticks_per_proposal, config.group_by, config.max_wait_s,
                    config.max_inflight, config.proposal_ttl_s)
        self._submitter.start()
        self._stats.start()
        try:
            self._read_until_stopped()
        finally:
            self._shutdown()

    def _stopping(self) -> bool:
        return self._stop.is_set() or (self._external_stop is not None
                                       and self._external_stop.is_set())

    def _read_until_stopped(self) -> None:
        pubsub = self._connect(lost_at=None)
        while pubsub is not None:
            try:
                self._pump(pubsub)
                break
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                logger.warning("lost Redis at %s (%s); ticks published until we are back are "
                               "lost", redact_url(self._config.redis_url), exc)
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
                logger.log(logging.WARNING if failures == 1 else logging.INFO,
                           "Redis unreachable (%s); attempt %d, next in %.1f s", exc,
                           failures, delay_s)
                self._batcher.flush_aged()
                self._sleep(delay_s)
                delay_s = min(delay_s * 2, RECONNECT_MAX_S)
                continue
            if lost_at is not None:
                self._counters.incr("reconnects")
                logger.warning("reconnected to Redis and resubscribed after a %.2f s gap "
                               "(%d failed attempts)", time.monotonic() - lost_at, failures)
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
        logger.info("subscribed to %s and %s on %s (parser %s)", self._config.market_channel,
                    ADVICE_CHANNEL, redact_url(self._config.redis_url), parser)
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
            tick = parse_tick(data, default_symbol=self._config.default_symbol)
        except TickRejected as exc:
            self._counters.reject(exc.reason)
            self._log_rejection(exc, data)
            return
        self._batcher.add(tick)

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
