"""(s) Stream ingestion: how fast `osiris bridge --source stream` takes ticks off a Redis Stream
through a consumer group while it submits runs and acknowledges their entries, against a bare
`XREADGROUP` + `XACK` consumer on the same Redis; and how soon a restarted bridge acknowledges.

Ticks are the JSON `osiris sim` writes (`synthetic_ticks` over three symbols), stored once in a
Redis list and appended to the stream *server-side* by a Lua script (`LRANGE` + `XADD`), so the
producer costs no Python.

Rate (a consumer's capacity): N entries are written while the consumer is not reading, then it
drains them; ticks/s = N / drain time, drained = every entry read and acknowledged (the group's
pending count back to 0, its lag 0). Three drains of each, interleaved (bare, bridge, ...),
each on a fresh stream: the medians.

- baseline: redis-py, `XREADGROUP COUNT 1000` then one `XACK` of the ids it got, in a loop.
- measured: `python -m osiris_tasks.tools.cli bridge --source stream` in its own process,
  `ticks_per_proposal` ticks per run, every run submitted with the real `submit_run` to the
  broker (no worker: the messages queue in Redis) before its entries are acknowledged. It is
  started first and SIGSTOPped while the backlog is written. No loss: every entry acknowledged,
  every tick batched, the runs queued = the full batches.

Restart: a bridge that held B entries (read, never acknowledged: as a SIGKILLed bridge leaves
them) is started again under the same consumer name; the figure is the time from `Popen` to
the first of those entries acknowledged (the process's start-up included). Three restarts:
the median.
"""

from __future__ import annotations

import logging
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import redis

from osiris_tasks.bridge.service import STATS_KEY
from osiris_tasks.keys import BRIDGE_FORMED_PREFIX, BRIDGE_GROUP
from osiris_tasks.tasks.celery_app import QUEUES
from osiris_tasks.tools.processes import terminate

from .bridge_bench import SYMBOLS, TICKS_KEY, full_runs, load_ticks
from .env import REPO, bench_settings, process_env
from .report import Report

__all__ = ["FULL", "QUICK", "TINY", "Sizes", "run"]

logger = logging.getLogger(__name__)

NAME = "stream"
STREAM = "bench:market:ticks"
CONSUMER = "bench-bridge"
ROUNDS = 3
# Entries one Lua call appends.
APPEND_CHUNK = 2_000
POLL_S = 0.002
START_TIMEOUT_S = 60.0
DRAIN_TIMEOUT_S = 300.0

APPEND_SCRIPT = """
local ticks = redis.call('LRANGE', KEYS[1], ARGV[2], ARGV[3])
for i = 1, #ticks do redis.call('XADD', ARGV[1], '*', 'tick', ticks[i]) end
return #ticks
"""


@dataclass(frozen=True)
class Sizes:
    burst_ticks: int  # entries each consumer drains
    restart_held: int  # entries a killed bridge held, for the restart figure
    ticks_per_proposal: int


QUICK = Sizes(burst_ticks=60_000, restart_held=2_000, ticks_per_proposal=100)
FULL = Sizes(burst_ticks=300_000, restart_held=10_000, ticks_per_proposal=100)
TINY = Sizes(burst_ticks=3_000, restart_held=300, ticks_per_proposal=10)


def fresh_stream(client: redis.Redis, append, count: int) -> None:
    """STREAM with the consumer group at its start and `count` stored ticks appended."""
    client.delete(STREAM, f"{BRIDGE_FORMED_PREFIX}{STREAM}:{BRIDGE_GROUP}", STATS_KEY, *QUEUES)
    client.xgroup_create(STREAM, BRIDGE_GROUP, id="0", mkstream=True)
    if count:
        append_ticks(append, count)


def append_ticks(append, count: int) -> None:
    for first in range(0, count, APPEND_CHUNK):
        append(keys=[TICKS_KEY], args=[STREAM, first, min(first + APPEND_CHUNK, count) - 1])


def drained(client: redis.Redis, count: int) -> bool:
    """Every one of `count` entries read by the group and acknowledged."""
    group = client.xinfo_groups(STREAM)[0]
    return group["entries-read"] == count and group["pending"] == 0


def bare_drain(client: redis.Redis, append, count: int) -> float:
    """Seconds a bare XREADGROUP + XACK loop takes to drain `count` entries."""
    fresh_stream(client, append, count)
    started, seen = time.perf_counter(), 0
    while seen < count:
        reply = client.xreadgroup(BRIDGE_GROUP, "bare", {STREAM: ">"}, count=1000)
        ids = [entry_id for entry_id, _ in reply[0][1]] if reply else []
        if ids:
            client.xack(STREAM, BRIDGE_GROUP, *ids)
        seen += len(ids)
    return time.perf_counter() - started


class StreamBridge:
    """`osiris bridge --source stream` on STREAM as a subprocess; `stop()` ends it."""

    def __init__(self, redis_url: str, ticks_per_proposal: int):
        settings = bench_settings(redis_url, "http://unused", tempfile.gettempdir())
        self._log = tempfile.NamedTemporaryFile(  # noqa: SIM115 (closed by stop())
            prefix="osiris-bench-stream-", suffix=".log", delete=False, mode="w+"
        )
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "osiris_tasks.tools.cli",
                "bridge",
                "--redis_url",
                redis_url,
                "--source",
                "stream",
                "--market_stream",
                STREAM,
                "--consumer",
                CONSUMER,
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

    def wait_joined(self, client: redis.Redis) -> None:
        """Until the bridge is a consumer of the group (it has read once)."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline and self.proc.poll() is None:
            names = [c["name"] for c in client.xinfo_consumers(STREAM, BRIDGE_GROUP)]
            if CONSUMER.encode() in names:
                return
            time.sleep(0.02)
        raise RuntimeError("the bridge did not join the group:\n" + self.output())

    def output(self) -> str:
        self._log.seek(0)
        return self._log.read()[-4000:]

    def stop(self) -> dict[str, int]:
        """SIGTERM; its final counters."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            terminate(self.proc, 30.0)
        self._log.close()
        Path(self._log.name).unlink(missing_ok=True)
        return {}


def bridge_drain(client: redis.Redis, append, redis_url: str, sizes: Sizes) -> tuple[float, int]:
    """Seconds the bridge takes to drain `burst_ticks` entries, and the runs it queued."""
    count = sizes.burst_ticks
    fresh_stream(client, append, 0)
    bridge = StreamBridge(redis_url, sizes.ticks_per_proposal)
    try:
        bridge.wait_joined(client)
        bridge.proc.send_signal(signal.SIGSTOP)
        append_ticks(append, count)
        started = time.perf_counter()
        bridge.proc.send_signal(signal.SIGCONT)
        deadline = started + DRAIN_TIMEOUT_S
        while not drained(client, count):
            if time.perf_counter() > deadline or bridge.proc.poll() is not None:
                raise RuntimeError("the bridge did not drain the stream:\n" + bridge.output())
            time.sleep(POLL_S)
        spent_s = time.perf_counter() - started
    finally:
        bridge.stop()
    with client.pipeline(transaction=False) as pipe:
        for name in QUEUES:
            pipe.llen(name)
        runs = sum(pipe.execute())
    expected = full_runs(count, sizes.ticks_per_proposal)
    if runs != expected:
        raise RuntimeError(f"the bridge queued {runs} runs, not {expected}")
    stats = {k.decode(): v.decode() for k, v in client.hgetall(STATS_KEY).items()}
    if int(stats.get("ticks_received", -1)) != count or int(stats.get("ticks_rejected", 1)):
        raise RuntimeError(f"the bridge's counters show a loss: {stats}")
    return spent_s, runs


def restart_to_first_ack(client: redis.Redis, append, redis_url: str, sizes: Sizes) -> float:
    """Seconds from starting a bridge again to its first acknowledgement of an entry it held."""
    fresh_stream(client, append, sizes.restart_held)
    client.xreadgroup(BRIDGE_GROUP, CONSUMER, {STREAM: ">"}, count=sizes.restart_held)
    held = client.xpending(STREAM, BRIDGE_GROUP)["pending"]
    bridge = StreamBridge(redis_url, sizes.ticks_per_proposal)
    try:
        deadline = bridge.started + START_TIMEOUT_S
        while client.xpending(STREAM, BRIDGE_GROUP)["pending"] >= held:
            if time.perf_counter() > deadline or bridge.proc.poll() is not None:
                raise RuntimeError("the restarted bridge acknowledged nothing:\n" + bridge.output())
            time.sleep(POLL_S)
        return time.perf_counter() - bridge.started
    finally:
        bridge.stop()


def run(report: Report, *, sizes: Sizes, redis_url: str) -> None:
    """Every stream figure, against the Redis at `redis_url`."""
    client = redis.Redis.from_url(redis_url)
    try:
        load_ticks(client, max(sizes.burst_ticks, sizes.restart_held))
        append = client.register_script(APPEND_SCRIPT)
        count = sizes.burst_ticks - sizes.burst_ticks % len(SYMBOLS)
        sizes = Sizes(count, sizes.restart_held, sizes.ticks_per_proposal)
        bare_rates, bridge_rates, runs = [], [], 0
        for _ in range(ROUNDS):
            bare_rates.append(count / bare_drain(client, append, count))
            spent_s, runs = bridge_drain(client, append, redis_url, sizes)
            bridge_rates.append(count / spent_s)
        bare = report.add(
            NAME,
            f"bare XREADGROUP + XACK consumer, drain rate, median of {ROUNDS}",
            statistics.median(bare_rates),
            "ticks/s",
            ticks=count,
            rates=[round(r) for r in bare_rates],
        )
        report.add(
            NAME,
            f"osiris bridge --source stream, {sizes.ticks_per_proposal} ticks per run, "
            f"submitting runs, acknowledging after submit, drain rate, median of {ROUNDS}",
            statistics.median(bridge_rates),
            "ticks/s",
            baseline=bare,
            ticks=count,
            rates=[round(r) for r in bridge_rates],
            round_ratios=[round(b / a, 2) for b, a in zip(bridge_rates, bare_rates, strict=True)],
            runs_queued=runs,
            lost=0,
        )
        restarts = [restart_to_first_ack(client, append, redis_url, sizes) for _ in range(ROUNDS)]
        report.add(
            NAME,
            f"bridge restarted holding {sizes.restart_held} unacknowledged entries: start to "
            f"first acknowledgement, median of {ROUNDS}",
            statistics.median(restarts),
            "s",
            restarts_s=[round(r, 2) for r in restarts],
        )
        report.note(
            "stream: entries appended server-side (Lua XADD); the bridge's runs queue in the "
            "broker with no worker; restart time includes the process's start-up"
        )
    finally:
        client.delete(TICKS_KEY, STREAM, STATS_KEY, *QUEUES)
        client.close()
