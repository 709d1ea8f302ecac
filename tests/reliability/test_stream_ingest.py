"""Bridge SIGKILL under load, reading a Redis Stream: every tick written to the stream ends in
exactly one recorded run (0 lost, 0 twice), with the whole pipeline running.

`osiris bridge --source stream` runs as a process (as the Procfile starts it) in front of a real
worker. Ticks are written at a steady pace; mid-burst the bridge's process group is SIGKILLed,
ticks go on being written while it is down, and it is started again under the same consumer
name. Each tick carries a unique timestamp, so the recorded runs' `input_query` tells which
ticks they hold.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter

import orjson
import pytest
import redis
from conftest import REPO, settings_env, wait_for
from reliability_report import record

from osiris_tasks.keys import BRIDGE_GROUP
from osiris_tasks.store.runstore import RunStore

STREAM = "test:market:ticks"
SYMBOLS = ("AAPL", "MSFT", "NVDA")
TICKS, KILL_AT, RATE_PER_S = 600, 250, 200.0


def bridge(settings) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "osiris_tasks.tools.cli",
            "bridge",
            "--source",
            "stream",
            "--market_stream",
            STREAM,
            "--consumer",
            "bridge-1",
            "--max_wait_s",
            "0.5",
            "--stats_interval_s",
            "0.5",
        ],
        cwd=REPO,
        env=settings_env(settings),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def write(client: redis.Redis, first: int, last: int) -> None:
    """Ticks `first`..`last - 1`, paced at RATE_PER_S, each with a unique timestamp."""
    started = time.monotonic()
    for i in range(first, last):
        tick = {
            "symbol": SYMBOLS[i % 3],
            "close": 100.0 + i % 7,
            "volume": 1.0,
            "timestamp": 1.7e9 + i,
        }
        client.xadd(STREAM, {"tick": orjson.dumps(tick)})
        time.sleep(max(0.0, started + (i - first + 1) / RATE_PER_S - time.monotonic()))


def recorded_ticks(store: RunStore) -> tuple[Counter, Counter]:
    runs = list(store.iter_runs())
    stamps = Counter(t["timestamp"] for row in runs for t in orjson.loads(row["input_query"]))
    return stamps, Counter(row["run_id"] for row in runs)


@pytest.mark.integration
def test_bridge_sigkill_mid_burst_loses_and_repeats_no_tick(settings, worker_factory):
    worker = worker_factory(settings)
    client = redis.Redis.from_url(settings.redis_url)
    client.xgroup_create(STREAM, BRIDGE_GROUP, id="$", mkstream=True)
    store = RunStore(settings.lancedb_uri)
    first = bridge(settings)
    try:
        write(client, 0, KILL_AT)
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(10)
        held = client.xpending(STREAM, BRIDGE_GROUP)["pending"]
        write(client, KILL_AT, KILL_AT + 100)  # written while no bridge runs
        restarted_at = time.monotonic()
        second = bridge(settings)
        write(client, KILL_AT + 100, TICKS)
        wanted = Counter(1.7e9 + i for i in range(TICKS))
        try:
            wait_for(lambda: recorded_ticks(store)[0] == wanted, timeout_s=180, interval_s=0.5)
        except AssertionError:
            stamps, _ = recorded_ticks(store)
            raise AssertionError(
                f"lost {sorted(wanted - stamps)[:20]}, twice {sorted(stamps - wanted)[:20]}\n"
                + "".join(worker.output[-40:])
            ) from None
        took_s = time.monotonic() - restarted_at
        _, run_ids = recorded_ticks(store)
        assert max(run_ids.values()) == 1  # each run recorded once
        wait_for(lambda: client.xpending(STREAM, BRIDGE_GROUP)["pending"] == 0, timeout_s=10)
        second.send_signal(signal.SIGTERM)
        assert second.wait(30) == 0
    finally:
        for proc in (first, locals().get("second")):
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        store.close()
        client.close()
    record(
        "bridge SIGKILL under load (stream source)",
        ticks=TICKS,
        killed_after=KILL_AT,
        held_unacknowledged=held,
        written_while_down=100,
        runs=len(run_ids),
        lost=0,
        twice=0,
        all_recorded_after_restart_s=took_s,
    )
