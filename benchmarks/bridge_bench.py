"""(e) The tick bridge: how fast `osiris bridge` reads ticks off Redis Pub/Sub while it submits
runs, against a bare redis-py subscriber on the same Redis, and whether its memory stays flat.

Ticks are realistic (`synthetic_ticks` over three symbols, the JSON `osiris sim` publishes),
stored once in a Redis list and published *server-side* by a Lua script (`LRANGE` + `PUBLISH`),
so the publisher costs no Python and the consumers see exactly the bytes `osiris sim` sends.

Rate (a consumer's capacity): the consumer is subscribed but not reading while N ticks are
published (the bare subscriber waits on an event; the bridge process is SIGSTOPped), then it
drains the backlog; ticks/s = N / drain time. Three drains of each, interleaved (baseline,
bridge, baseline, ...): the figures are the medians, the rounds are in the figures' params.
A consumer that is never idle runs at the most it can sustain. For the burst, the Pub/Sub
output-buffer limit is lifted (`CONFIG SET client-output-buffer-limit "pubsub 0 0 0"`,
restored afterwards), so Redis holds the backlog instead of disconnecting the subscriber.

- baseline: `redis.Redis.from_url(url).pubsub(ignore_subscribe_messages=True)` and a
  `get_message(timeout=...)` loop that only counts (hiredis parser).
- measured: `python -m osiris_tasks.tools.cli bridge` in its own process, started as the Procfile
  and docker-compose.yml start it (glibc malloc, not the worker profiles' jemalloc: under
  jemalloc the bridge's RSS swung with each burst, +10 to +20 MB in four runs, against +0.2
  and -0.3 MB with glibc), `ticks_per_proposal` ticks per run, submitting every run with the
  real `submit_run` to the broker (no worker: the messages queue in Redis). Done when every
  run is in the broker's queues; then the bridge is stopped (SIGTERM) and its final counters
  (`osiris:bridge:stats`) must show no loss.

Sustained: the bridge again, ticks published at a steady 0.8 x the baseline's rate with the
default buffer limits; ticks lost = published - `ticks_received`.

Memory: the bridge reads M ticks (1M full) in ten bursts; after each, the benchmark stands in
for the workers (takes the queued runs off the broker, publishes their `advice.generated`) and
samples the bridge's RSS (`/proc/<pid>/status`); growth = the largest later sample - the
sample after the first 10 %.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import redis

from osiris_tasks.bridge.service import ADVICE_CHANNEL, STATS_KEY
from osiris_tasks.tasks.celery_app import QUEUES
from osiris_tasks.tools.processes import terminate
from osiris_tasks.tools.sim import synthetic_ticks

from .env import REPO, bench_settings, process_env, rss_mb
from .report import Figure, Report

__all__ = ["FULL", "QUICK", "TINY", "Sizes", "run"]

logger = logging.getLogger(__name__)

NAME = "bridge"
CHANNEL = "bench.market.ticks"
SYMBOLS = ("AAPL", "MSFT", "NVDA")
# The Redis list the stored tick payloads live in, and how many go in per RPUSH.
TICKS_KEY = "bench:bridge:ticks"
LOAD_CHUNK = 10_000
# Ticks one Lua call publishes (Redis serves no one else meanwhile: a few ms at most).
PUBLISH_CHUNK = 2_000
# The paced publisher publishes what is due every this many seconds.
PACE_INTERVAL_S = 0.01
# Drains of each consumer, interleaved; the figures are their medians.
RATE_ROUNDS = 3
# The sustained test publishes at this fraction of the bare subscriber's rate (the target).
SUSTAINED_FRACTION = 0.8
# How often progress (runs in the broker's queues) is polled, and how long without progress
# means the consumer has stopped (lost ticks, or died).
POLL_S = 0.005
STALL_S = 3.0
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0
# Memory is sampled after each tenth of the ticks; growth is measured from the first sample.
MEMORY_STEPS = 10
BUFFER_LIMIT, NO_BUFFER_LIMIT = "client-output-buffer-limit", "pubsub 0 0 0"

PUBLISH_SCRIPT = """
local ticks = redis.call('LRANGE', KEYS[1], ARGV[2], ARGV[3])
for i = 1, #ticks do redis.call('PUBLISH', ARGV[1], ticks[i]) end
return #ticks
"""


@dataclass(frozen=True)
class Sizes:
    burst_ticks: int  # ticks each consumer drains for the rate (also the stored ticks)
    sustained_s: float  # seconds of ticks published at 0.8 x the bare rate
    memory_ticks: int  # ticks the bridge reads while its RSS is sampled
    ticks_per_proposal: int  # ticks per run


QUICK = Sizes(burst_ticks=60_000, sustained_s=3.0, memory_ticks=100_000, ticks_per_proposal=100)
FULL = Sizes(burst_ticks=300_000, sustained_s=10.0, memory_ticks=1_000_000, ticks_per_proposal=100)
TINY = Sizes(burst_ticks=3_000, sustained_s=0.5, memory_ticks=3_000, ticks_per_proposal=10)


def full_runs(ticks: int, ticks_per_proposal: int) -> int:
    """Runs a bridge has submitted once it has read `ticks` ticks published round-robin over
    SYMBOLS: one buffer per symbol (`group_by="symbol"`), and only full buffers are submitted."""
    symbols = len(SYMBOLS)
    return sum(len(range(k, ticks, symbols)) // ticks_per_proposal for k in range(symbols))


# -- ticks ------------------------------------------------------------------------------------


def load_ticks(client: redis.Redis, count: int) -> int:
    """Store `count` synthetic tick payloads at TICKS_KEY (a multiple of len(SYMBOLS), so the
    round-robin survives publishing the list over and over); return how many."""
    count -= count % len(SYMBOLS)
    ticks = synthetic_ticks(SYMBOLS, seed=5, volatility=0.002)
    client.delete(TICKS_KEY)
    for start in range(0, count, LOAD_CHUNK):
        chunk = [orjson.dumps(t) for t in itertools.islice(ticks, min(LOAD_CHUNK, count - start))]
        client.rpush(TICKS_KEY, *chunk)
    return count


class Publisher:
    """Publishes the stored ticks on CHANNEL from inside Redis, cycling through the list."""

    def __init__(self, client: redis.Redis, stored: int):
        self._script = client.register_script(PUBLISH_SCRIPT)
        self._stored = stored
        self.published = 0

    def burst(self, count: int) -> None:
        """Publish `count` ticks as fast as Redis can."""
        target = self.published + count
        while self.published < target:
            self._publish(min(PUBLISH_CHUNK, target - self.published))

    def paced(self, rate_per_s: float, duration_s: float) -> float:
        """Publish `rate_per_s` ticks a second for `duration_s`; return the seconds it took."""
        started, start_count = time.perf_counter(), self.published
        while (elapsed := time.perf_counter() - started) < duration_s:
            due = int(rate_per_s * elapsed) - (self.published - start_count)
            while due > 0:
                due -= self._publish(min(PUBLISH_CHUNK, due))
            time.sleep(PACE_INTERVAL_S)
        return time.perf_counter() - started

    def _publish(self, count: int) -> int:
        first = self.published % self._stored
        last = min(first + count, self._stored) - 1
        sent = self._script(keys=[TICKS_KEY], args=[CHANNEL, first, last])
        self.published += sent
        return sent


@contextlib.contextmanager
def unlimited_pubsub_buffer(client: redis.Redis) -> Iterator[None]:
    """Redis keeps any Pub/Sub backlog (`pubsub 0 0 0`) in the block; the old limit after."""
    words = client.config_get(BUFFER_LIMIT)[BUFFER_LIMIT].split()
    limits = {words[i]: words[i + 1 : i + 4] for i in range(0, len(words), 4)}
    client.config_set(BUFFER_LIMIT, NO_BUFFER_LIMIT)
    try:
        yield
    finally:
        client.config_set(BUFFER_LIMIT, " ".join(["pubsub", *limits["pubsub"]]))


# -- consumers --------------------------------------------------------------------------------


def raw_drain(redis_url: str, publisher: Publisher, ticks: int) -> tuple[float, str]:
    """Seconds a bare redis-py subscriber takes to read `ticks` published while it waited;
    and the name of its RESP parser."""
    pubsub = redis.Redis.from_url(redis_url).pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(CHANNEL)
    pubsub.get_message(timeout=1.0)  # the subscribe confirmation: subscribed from here on
    parser = type(getattr(pubsub.connection, "_parser", None)).__name__
    go, result = threading.Event(), {}

    def drain() -> None:
        go.wait()
        started, seen = time.perf_counter(), 0
        while seen < ticks:
            if pubsub.get_message(timeout=STALL_S) is None:
                break
            seen += 1
        result.update(seen=seen, spent_s=time.perf_counter() - started)

    reader = threading.Thread(target=drain, name="bench-raw-subscriber")
    reader.start()
    try:
        publisher.burst(ticks)
    finally:
        go.set()
        reader.join()
        pubsub.close()
    if result["seen"] != ticks:
        raise RuntimeError(f"the bare subscriber read {result['seen']} of {ticks} ticks")
    return result["spent_s"], parser


class BridgeProcess:
    """`python -m osiris_tasks.tools.cli bridge` on CHANNEL as a subprocess; `with` stops it."""

    def __init__(self, redis_url: str, ticks_per_proposal: int):
        self._client = redis.Redis.from_url(redis_url)
        self._client.delete(STATS_KEY, *QUEUES)
        settings = bench_settings(redis_url, "http://unused", tempfile.gettempdir())
        # Open as long as the bridge runs: closed (and removed) by _shut_down().
        self._log = tempfile.NamedTemporaryFile(  # noqa: SIM115
            prefix="osiris-bench-bridge-", suffix=".log", delete=False, mode="w+"
        )
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "osiris_tasks.tools.cli",
                "bridge",
                "--redis_url",
                redis_url,
                "--market_channel",
                CHANNEL,
                "--ticks_per_proposal",
                str(ticks_per_proposal),
                "--log_level",
                "WARNING",
            ],
            cwd=REPO,
            env=process_env(settings),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_subscribed(self, timeout_s: float = START_TIMEOUT_S) -> None:
        """Until the bridge is subscribed to CHANNEL."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self.proc.poll() is None:
            if dict(self._client.pubsub_numsub(CHANNEL)).get(CHANNEL.encode()):
                return
            time.sleep(0.05)
        self._log.seek(0)
        raise RuntimeError("the bridge did not subscribe:\n" + self._log.read()[-4000:])

    def queued_runs(self) -> int:
        """Runs waiting in the broker's queues (no worker takes them)."""
        with self._client.pipeline(transaction=False) as pipe:
            for name in QUEUES:
                pipe.llen(name)
            return sum(pipe.execute())

    def wait_runs(self, runs: int) -> tuple[float, bool]:
        """Until `runs` runs are queued, or STALL_S pass without a new one: the perf_counter()
        time of the last new run, and whether all `runs` came."""
        seen, progressed = self.queued_runs(), time.perf_counter()
        while seen < runs and time.perf_counter() - progressed < STALL_S:
            time.sleep(POLL_S)
            if (now := self.queued_runs()) != seen:
                seen, progressed = now, time.perf_counter()
        if seen < runs:
            logger.info("the bridge stalled at %d of %d runs", seen, runs)
        return progressed, seen >= runs

    def complete_runs(self) -> int:
        """Stand in for the workers: take the queued runs off the broker and publish each
        one's `advice.generated` (which frees its in-flight slot in the bridge); how many."""
        with self._client.pipeline(transaction=True) as pipe:
            for name in QUEUES:
                pipe.lrange(name, 0, -1)
            pipe.delete(*QUEUES)
            *queues, _ = pipe.execute()
        run_ids = [orjson.loads(message)["headers"]["id"] for queue in queues for message in queue]
        with self._client.pipeline(transaction=False) as pipe:
            for run_id in run_ids:
                pipe.publish(ADVICE_CHANNEL, orjson.dumps({"run_id": run_id, "status": "done"}))
            pipe.execute()
        return len(run_ids)

    def pause(self) -> None:
        """SIGSTOP: the bridge reads nothing until resume()."""
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.proc.send_signal(signal.SIGCONT)

    def stop(self) -> dict[str, int]:
        """SIGTERM (the bridge drains and writes its counters to Redis); its final counters."""
        self._shut_down()
        stats = {k.decode(): v.decode() for k, v in self._client.hgetall(STATS_KEY).items()}
        if stats.get("status") != "stopped":
            raise RuntimeError(f"the bridge did not stop cleanly: {stats}")
        return {k: int(v) for k, v in stats.items() if v.isdigit()}

    def _shut_down(self) -> None:
        if self._log.closed:
            return
        if self.proc.poll() is None:
            self.resume()  # a stopped process would hold SIGTERM until continued
            terminate(self.proc, STOP_TIMEOUT_S)
        self._log.close()
        Path(self._log.name).unlink(missing_ok=True)

    def __enter__(self) -> BridgeProcess:
        return self

    def __exit__(self, *exc) -> None:
        self._shut_down()
        self._client.close()


def check_no_loss(counters: dict[str, int], published: int) -> None:
    """Every published tick was read and batched, and every batch submitted."""
    batched, received = counters["ticks_batched"], counters["ticks_received"]
    problems = [f"received {received} of {published}"] if received != published else []
    if counters["ticks_rejected"] or counters["ticks_coalesced"]:
        problems.append(
            f"rejected {counters['ticks_rejected']}, coalesced {counters['ticks_coalesced']}"
        )
    if batched != received or counters["runs_abandoned"] or counters["submit_failures"]:
        problems.append(
            f"batched {batched}, abandoned {counters['runs_abandoned']}, "
            f"submit failures {counters['submit_failures']}"
        )
    if problems:
        raise RuntimeError("the bridge lost ticks: " + "; ".join(problems))


# -- figures ----------------------------------------------------------------------------------


def _bridge_drain(
    sizes: Sizes, redis_url: str, publisher: Publisher, ticks: int
) -> tuple[float, int, dict[str, int]]:
    """The bridge process draining a burst of `ticks` while submitting its runs: ticks/s, the
    runs it queued, and its final counters (checked for loss)."""
    per_run = sizes.ticks_per_proposal
    with BridgeProcess(redis_url, per_run) as bridge:
        bridge.wait_subscribed()
        bridge.pause()
        before = publisher.published
        publisher.burst(ticks)
        started = time.perf_counter()
        bridge.resume()
        finished, _ = bridge.wait_runs(full_runs(ticks, per_run))
        runs = bridge.queued_runs()
        counters = bridge.stop()
    check_no_loss(counters, publisher.published - before)
    return ticks / (finished - started), runs, counters


def drain_rates(
    report: Report, sizes: Sizes, redis_url: str, publisher: Publisher, ticks: int
) -> Figure:
    """The baseline (a bare redis-py subscriber) and the bridge, each draining the same burst,
    RATE_ROUNDS times interleaved (one drain of each is at the mercy of the machine's noise):
    the medians; the baseline's figure is returned."""
    raw_rates, bridge_rates = [], []
    for _ in range(RATE_ROUNDS):
        spent_s, parser = raw_drain(redis_url, publisher, ticks)
        raw_rates.append(ticks / spent_s)
        rate, runs, counters = _bridge_drain(sizes, redis_url, publisher, ticks)
        bridge_rates.append(rate)
    raw = report.add(
        NAME,
        f"bare redis-py subscriber (get_message loop), drain rate, median of {RATE_ROUNDS}",
        statistics.median(raw_rates),
        "ticks/s",
        ticks=ticks,
        parser=parser,
        rates=[round(r) for r in raw_rates],
    )
    report.add(
        NAME,
        f"osiris bridge, {sizes.ticks_per_proposal} ticks per run, submitting runs, "
        f"drain rate, median of {RATE_ROUNDS}",
        statistics.median(bridge_rates),
        "ticks/s",
        baseline=raw,
        ticks=ticks,
        rates=[round(r) for r in bridge_rates],
        round_ratios=[
            round(bridge / bare, 2) for bridge, bare in zip(bridge_rates, raw_rates, strict=True)
        ],
        runs_queued=runs,
        counters=counters,
    )
    return raw


def sustained(
    report: Report, sizes: Sizes, redis_url: str, publisher: Publisher, raw: Figure
) -> None:
    """The bridge fed at 0.8 x the bare rate, default buffer limits: ticks lost."""
    rate = SUSTAINED_FRACTION * raw.value
    with BridgeProcess(redis_url, sizes.ticks_per_proposal) as bridge:
        bridge.wait_subscribed()
        before = publisher.published
        spent_s = publisher.paced(rate, sizes.sustained_s)
        published = publisher.published - before
        finished = time.perf_counter()
        last_run, caught_up = bridge.wait_runs(full_runs(published, sizes.ticks_per_proposal))
        counters = bridge.stop()
    lost = published - counters["ticks_received"]
    report.add(
        NAME,
        f"osiris bridge fed at {SUSTAINED_FRACTION}x the bare rate for "
        f"{sizes.sustained_s:g} s, default buffer limits: ticks lost",
        lost,
        "ticks",
        published=published,
        published_per_s=round(published / spent_s),
        caught_up=caught_up,
        catch_up_s=round(max(last_run - finished, 0.0), 3),
        counters=counters,
    )


def memory(report: Report, sizes: Sizes, redis_url: str, publisher: Publisher) -> None:
    """The bridge's RSS after each tenth of `memory_ticks`, its runs completed as workers would
    (`advice.generated`); growth after the first tenth, and its slope over the second half."""
    per_run = sizes.ticks_per_proposal
    step = sizes.memory_ticks // MEMORY_STEPS
    samples, completed = [], 0
    with BridgeProcess(redis_url, per_run) as bridge:
        bridge.wait_subscribed()
        idle_mb, before = rss_mb(bridge.proc.pid), publisher.published
        for done in range(step, step * MEMORY_STEPS + 1, step):
            publisher.burst(step)
            bridge.wait_runs(full_runs(done, per_run) - completed)
            completed += bridge.complete_runs()
            samples.append(round(rss_mb(bridge.proc.pid), 1))
        counters = bridge.stop()
    check_no_loss(counters, publisher.published - before)
    ticks, half = step * MEMORY_STEPS, MEMORY_STEPS // 2
    # Over the second half only: the first tenths still include warm-up.
    slope = (samples[-1] - samples[half - 1]) / (step * half) * 100_000
    report.add(
        NAME,
        f"osiris bridge RSS growth over {ticks} ticks (after the first 10%)",
        max(samples[1:]) - samples[0],
        "MB",
        idle_mb=round(idle_mb, 1),
        rss_mb=samples,
        mb_per_100k_ticks=round(slope, 2),
        runs_completed=completed,
        counters=counters,
    )


def run(report: Report, *, sizes: Sizes, redis_url: str) -> None:
    """Every bridge figure, against the Redis at `redis_url` (its Pub/Sub limit restored)."""
    client = redis.Redis.from_url(redis_url)
    try:
        stored = load_ticks(client, sizes.burst_ticks)
        publisher = Publisher(client, stored)
        with unlimited_pubsub_buffer(client):
            raw = drain_rates(report, sizes, redis_url, publisher, stored)
        sustained(report, sizes, redis_url, publisher, raw)
        with unlimited_pubsub_buffer(client):
            memory(report, sizes, redis_url, publisher)
        report.note(
            f"bridge: ticks published server-side (Lua); drain rates are bursts "
            f"read with client-output-buffer-limit '{NO_BUFFER_LIMIT}' (restored "
            "after); the bridge's runs queue in the broker with no worker, the memory "
            "run completes them by publishing advice.generated"
        )
    finally:
        client.delete(TICKS_KEY, STATS_KEY, *QUEUES)
        client.close()
