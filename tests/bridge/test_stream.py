"""The bridge reading a Redis Stream (`source="stream"`) on a real Redis: acknowledgement after
submission, batches formed again with their run_id, a dead bridge's entries taken over,
held entries kept, backpressure, stop, trimming.

Each test runs a `Bridge` in a thread; its `submit` appends to the test's own list. The
SIGKILL test with a real worker is in tests/reliability/test_stream_ingest.py.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager

import orjson
import redis
from conftest import wait_for

from osiris_tasks.bridge.service import ADVICE_CHANNEL, Bridge, BridgeConfig
from osiris_tasks.bridge.stream import StreamReader
from osiris_tasks.domain.ids import stream_run_id
from osiris_tasks.keys import BRIDGE_FORMED_PREFIX, BRIDGE_GROUP
from osiris_tasks.tools.sim import publish

STREAM = "test:market"
FORMED = f"{BRIDGE_FORMED_PREFIX}{STREAM}:{BRIDGE_GROUP}"


def tick(symbol: str = "AAPL", i: int = 0) -> dict:
    return {"symbol": symbol, "close": 100.0 + i, "volume": 10.0, "timestamp": 1.7e9 + i}


def config(redis_url: str, **overrides) -> BridgeConfig:
    values = {"source": "stream", "market_stream": STREAM, "consumer": "c1", "claim_idle_s": 30}
    return BridgeConfig(redis_url, **{**values, **overrides})


@contextmanager
def running(cfg: BridgeConfig, submit=None):
    runs: list[dict] = []
    bridge = Bridge(cfg, submit or runs.append)
    thread = threading.Thread(target=bridge.run, daemon=True)
    client = redis.Redis.from_url(cfg.redis_url)
    StreamReader(
        client, cfg.market_stream, cfg.stream_group, cfg.consumer, claim_idle_s=30
    ).ensure_group()
    thread.start()
    try:
        yield bridge, runs, client
    finally:
        bridge.stop()
        thread.join(20)
        client.close()
    assert not thread.is_alive()


def add(client: redis.Redis, ticks: list[dict]) -> list[str]:
    return [client.xadd(STREAM, {"tick": orjson.dumps(t)}).decode() for t in ticks]


def pending(client: redis.Redis, consumer: str | None = None) -> int:
    if consumer is None:
        return client.xpending(STREAM, BRIDGE_GROUP)["pending"]
    rows = client.xpending_range(STREAM, BRIDGE_GROUP, "-", "+", 10_000, consumername=consumer)
    return len(rows)


def test_runs_are_acknowledged_once_submitted_and_their_ids_come_from_the_entries(redis_url):
    with running(config(redis_url)) as (bridge, runs, client):
        ticks = [tick(s, i) for i in range(10) for s in ("AAPL", "MSFT", "NVDA")]
        ids = add(client, ticks)
        wait_for(lambda: len(runs) == 3, timeout_s=10)
        wait_for(lambda: pending(client) == 0, timeout_s=10)
        assert client.hlen(FORMED) == 0  # forgotten with the acknowledgement
    by_symbol = {
        s: [i for i, t in zip(ids, ticks, strict=True) if t["symbol"] == s]
        for s in ("AAPL", "MSFT", "NVDA")
    }
    assert {r["run_id"] for r in runs} == {stream_run_id(STREAM, v) for v in by_symbol.values()}
    assert bridge.counters["ticks_batched"] == 30


def test_the_sim_writes_the_stream_the_bridge_reads(redis_url):
    with running(config(redis_url, ticks_per_proposal=5)) as (_, runs, client):
        sent = publish(
            client,
            STREAM,
            (tick("AAPL", i) for i in range(20)),
            rate_per_s=None,
            duration_s=None,
            stream_maxlen=1000,
        )
        assert sent == 20
        wait_for(lambda: len(runs) == 4, timeout_s=10)


def test_rejected_entries_are_counted_and_acknowledged(redis_url):
    with running(config(redis_url)) as (bridge, runs, client):
        client.xadd(STREAM, {"tick": b"not json"})
        client.xadd(STREAM, {"price": b"1"})  # no tick field
        client.xadd(STREAM, {"tick": orjson.dumps({"symbol": "AAPL", "close": "NaN"})})
        wait_for(lambda: bridge.counters["ticks_rejected"] == 3, timeout_s=10)
        wait_for(lambda: pending(client) == 0, timeout_s=10)
    assert runs == []


def test_a_batch_formed_before_a_crash_is_formed_again_with_its_run_id(redis_url):
    """As a bridge leaves it when killed between writing a batch and acknowledging it."""
    client = redis.Redis.from_url(redis_url)
    StreamReader(client, STREAM, BRIDGE_GROUP, "c1", claim_idle_s=30).ensure_group()
    ids = add(client, [tick("AAPL", i) for i in range(13)])
    client.xreadgroup(BRIDGE_GROUP, "c1", {STREAM: ">"}, count=100)  # read, never acknowledged
    formed = ids[2:9]  # a max_wait batch of 7 (not the first 10 the count would make)
    run_id = stream_run_id(STREAM, formed)
    client.hset(FORMED, run_id, ",".join(formed))
    with running(config(redis_url)) as (bridge, runs, c):
        wait_for(lambda: len(runs) == 1, timeout_s=10)
        c.xadd(STREAM, {"tick": orjson.dumps(tick("AAPL", 20))})
        c.xadd(STREAM, {"tick": orjson.dumps(tick("AAPL", 21))})
        c.xadd(STREAM, {"tick": orjson.dumps(tick("AAPL", 22))})
        c.xadd(STREAM, {"tick": orjson.dumps(tick("AAPL", 23))})
        wait_for(lambda: len(runs) == 2, timeout_s=10)
        wait_for(lambda: pending(c) == 0, timeout_s=10)
        assert bridge.counters["runs_reformed"] == 1
        assert bridge.counters["ticks_reclaimed"] == 13
    assert runs[0]["run_id"] == run_id
    assert [t["close"] for t in runs[0]["ticks"]] == [100.0 + i for i in range(2, 9)]
    # the other six pending ticks and four new ones: one batch, nothing twice
    assert [t["close"] for t in runs[1]["ticks"]] == [
        100.0 + i for i in (0, 1, 9, 10, 11, 12, 20, 21, 22, 23)
    ]
    client.close()


def test_a_dead_bridges_entries_are_taken_over(redis_url):
    client = redis.Redis.from_url(redis_url)
    StreamReader(client, STREAM, BRIDGE_GROUP, "dead", claim_idle_s=30).ensure_group()
    add(client, [tick("AAPL", i) for i in range(10)])
    client.xreadgroup(BRIDGE_GROUP, "dead", {STREAM: ">"}, count=100)
    with running(config(redis_url, consumer="alive", claim_idle_s=1)) as (bridge, runs, c):
        wait_for(lambda: len(runs) == 1, timeout_s=10)
        wait_for(lambda: pending(c) == 0, timeout_s=10)
        # the dead consumer, holding nothing, is removed from the group at a later pass
        wait_for(
            lambda: [i["name"] for i in c.xinfo_consumers(STREAM, BRIDGE_GROUP)] == [b"alive"],
            timeout_s=10,
        )
    assert len(runs[0]["ticks"]) == 10
    client.close()


def test_a_live_bridge_keeps_the_entries_it_holds(redis_url):
    """A partial buffer held longer than claim_idle_s is not taken over by another bridge."""
    with running(config(redis_url, consumer="a", claim_idle_s=1)) as (a, runs_a, client):
        add(client, [tick("AAPL", i) for i in range(5)])
        wait_for(lambda: a.counters["ticks_received"] == 5, timeout_s=10)
        with running(config(redis_url, consumer="b", claim_idle_s=1)) as (b, runs_b, _):
            time.sleep(3.5)  # several claim passes of b, with a's entries held 3.5 s
            assert b.counters["ticks_reclaimed"] == 0
            assert pending(client, "a") == 5
        add(client, [tick("AAPL", i) for i in range(5, 10)])
        wait_for(lambda: len(runs_a) == 1, timeout_s=10)
    assert runs_b == []


def test_reading_pauses_while_max_inflight_runs_are_in_flight(redis_url):
    with running(config(redis_url, max_inflight=1, ticks_per_proposal=2)) as (bridge, runs, client):
        add(client, [tick("AAPL", i) for i in range(6)])
        wait_for(lambda: len(runs) == 1, timeout_s=10)
        time.sleep(0.5)
        assert len(runs) == 1  # the rest waits in the stream, nothing coalesced
        client.publish(ADVICE_CHANNEL, orjson.dumps({"run_id": runs[0]["run_id"]}))
        wait_for(lambda: len(runs) == 2, timeout_s=10)
        assert bridge.counters["ticks_coalesced"] == 0


def test_stop_leaves_a_partial_batch_pending_for_the_next_reader(redis_url):
    with running(config(redis_url)) as (bridge, runs, client):
        add(client, [tick("AAPL", i) for i in range(4)])
        wait_for(lambda: bridge.counters["ticks_received"] == 4, timeout_s=10)
    assert runs == [] and pending(client) == 4
    assert bridge.counters["ticks_left_pending"] == 4
    with running(config(redis_url)) as (_, runs, client):
        add(client, [tick("AAPL", i) for i in range(4, 10)])
        wait_for(lambda: len(runs) == 1, timeout_s=10)
        wait_for(lambda: pending(client) == 0, timeout_s=10)
    assert [t["close"] for t in runs[0]["ticks"]] == [100.0 + i for i in range(10)]


def test_failed_submissions_keep_the_entries_pending(redis_url):
    attempts = []

    def submit(state):
        attempts.append(state["run_id"])
        raise ConnectionError("broker down")

    with running(config(redis_url, drain_timeout_s=0.2), submit) as (bridge, _, client):
        add(client, [tick("AAPL", i) for i in range(10)])
        wait_for(lambda: attempts, timeout_s=10)
    assert pending(client) == 10  # never acknowledged: the next bridge submits them
    assert bridge.counters["runs_abandoned"] == 0
    assert client.hlen(FORMED) == 1  # and forms the same batch again


def test_acknowledged_entries_are_trimmed(redis_url):
    client = redis.Redis.from_url(redis_url)
    reader = StreamReader(client, STREAM, BRIDGE_GROUP, "c1", claim_idle_s=30)
    reader.ensure_group()
    pipe = client.pipeline()
    for i in range(1000):
        pipe.xadd(STREAM, {"tick": orjson.dumps(tick("AAPL", i))})
    pipe.execute()
    read = reader.read(block_ms=10)
    read += reader.read(block_ms=10)
    assert len(read) == 1000
    reader.ack([entry_id for entry_id, _ in read[:500]])
    reader.tend()  # trims what every group acknowledged, in whole nodes of 100 entries
    assert 500 <= client.xlen(STREAM) <= 600
    client.close()


def test_two_bridges_in_one_group_share_the_ticks_each_once(redis_url):
    """Redis hands each entry to one bridge: every tick lands in exactly one run, each run holds
    one symbol's ticks in stream order (a bridge's share of them, not consecutive ones)."""
    ticks = [tick(s, i) for i in range(40) for s in ("AAPL", "MSFT", "NVDA")]
    with (
        running(config(redis_url, consumer="a", max_wait_s=0.3)) as (_, runs_a, client),
        running(config(redis_url, consumer="b", max_wait_s=0.3)) as (_, runs_b, _),
    ):
        for start in range(0, len(ticks), 6):  # small writes, so both bridges get some
            add(client, ticks[start : start + 6])
            time.sleep(0.01)
        wait_for(lambda: sum(len(r["ticks"]) for r in runs_a + runs_b) == len(ticks), timeout_s=10)
        wait_for(lambda: pending(client) == 0, timeout_s=10)
    assert runs_a and runs_b  # both took a share
    seen = [(t["symbol"], t["close"]) for r in runs_a + runs_b for t in r["ticks"]]
    assert sorted(seen) == sorted((t["symbol"], t["close"]) for t in ticks)  # each tick once
    for run in runs_a + runs_b:
        assert len({t["symbol"] for t in run["ticks"]}) == 1
        stamps = [t["timestamp"] for t in run["ticks"]]
        assert stamps == sorted(stamps)
