"""Batches that drive the reference sidecar to each outcome, ways to watch a run finish, and
what workers printed and recorded."""

from __future__ import annotations

import re
import threading
import time
from collections import Counter

import orjson
import redis
from conftest import wait_for

from osiris_tasks.settings import Settings
from osiris_tasks.store.runstore import ADVICE_TABLE, RunStore

NOW = time.time()


def ticks(closes, symbol="AAPL", start=None, volume=100.0):
    start = NOW if start is None else start
    return [
        {"symbol": symbol, "close": c, "volume": volume, "timestamp": start + i}
        for i, c in enumerate(closes)
    ]


# Zig-zag, no net move: weak signal, the reference policy sizes well under the 1 % limit.
ACCEPTED_BATCH = ticks([100, 101, 100, 101, 100, 101, 100, 101, 100, 100])
# The same zig-zag, long enough to travel by reference (tickstash.py) on the Celery path.
LARGE_ACCEPTED_BATCH = ticks([100, 101] * 30 + [100])
# A steady climb with little noise: strong signal, sized over the limit -> rejected.
REJECTED_BATCH = ticks([100 + 0.1 * i for i in range(10)])


class EventListener:
    """Collects Pub/Sub messages on `channels` in a thread, subscribed before the run starts."""

    def __init__(self, url: str, *channels: str):
        self._client = redis.Redis.from_url(url)
        self._pubsub = self._client.pubsub(ignore_subscribe_messages=True)
        self._pubsub.subscribe(*channels)
        self.messages: list[tuple[str, dict]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._listen, daemon=True)
        self._thread.start()

    def _listen(self) -> None:
        while not self._stop.is_set():
            message = self._pubsub.get_message(timeout=0.1)
            if message:
                self.messages.append((message["channel"].decode(), orjson.loads(message["data"])))

    def of(self, run_id: str, channel: str | None = None) -> list[dict]:
        return [
            m
            for c, m in self.messages
            if m.get("run_id") == run_id and (channel is None or c == channel)
        ]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self._pubsub.close()
        self._client.close()


def tick_series(symbol: str, n: int, start_close: float = 100.0) -> list[dict]:
    """n zig-zag ticks of `symbol` from now on."""
    return ticks([start_close + (i % 2) for i in range(n)], symbol=symbol, start=time.time())


# -- what workers printed and what they recorded -----------------------------------------------

# `Task osiris.score_proposal[<id>] received` / `... succeeded in 0.4s: ...`
TASK_LINE = re.compile(r"Task (osiris\.\w+)\[([^\]]+)\] (received|succeeded|failed|retry)")
# `... [<pid>] run_id=... recorded status=...` and `... risk verdict ...`: a LanceDB write.
WRITE_LINE = re.compile(r"\[(\d+)\] run_id=\S+ (?:recorded status=|risk verdict)")


def task_events(output: list[str]) -> list[tuple[str, str, str]]:
    """(task name, task id, what) for every task line a worker printed."""
    return [m.groups() for line in list(output) if (m := TASK_LINE.search(line))]


def unfinished(output: list[str]) -> dict[str, str]:
    """Task id -> name of tasks the worker received and never finished."""
    received, finished = {}, set()
    for name, task_id, what in task_events(output):
        if what == "received":
            received[task_id] = name
        else:
            finished.add(task_id)
    return {tid: name for tid, name in received.items() if tid not in finished}


def received_ids(output: list[str]) -> set[str]:
    return {tid for _, tid, what in task_events(output) if what == "received"}


def recorded_ids(store: RunStore) -> Counter:
    return Counter(row["run_id"] for row in store.iter_runs())


def wait_recorded(store: RunStore, run_ids, timeout_s: float, *workers) -> float:
    """Wait until every run in `run_ids` has its row; return when (monotonic). On a timeout
    the error names the missing runs and shows what the `workers` printed last."""
    wanted = set(run_ids)
    try:
        wait_for(lambda: wanted <= set(recorded_ids(store)), timeout_s=timeout_s, interval_s=0.3)
    except AssertionError as exc:
        tails = ["".join(w.output[-40:]) for w in workers]
        missing = sorted(wanted - set(recorded_ids(store)))
        raise AssertionError(
            f"{len(missing)} run(s) never recorded: {missing}\n" + "\n---\n".join(tails)
        ) from exc
    return time.monotonic()


def assert_each_recorded_once(store: RunStore, run_ids) -> None:
    """Exactly one `orchestrator_runs` row and one `advice` row per run, and nothing else."""
    assert recorded_ids(store) == Counter(run_ids)
    advice = {r: len(store.get_advice(r)) for r in run_ids}
    odd = {
        r: (n, store.get_run(r)["status"], store.get_run(r)["error_message"])
        for r, n in advice.items()
        if n != 1
    }
    assert not odd, f"runs without exactly one advice row (count, status, error): {odd}"
    assert store.count(ADVICE_TABLE) == len(run_ids)


def own_settings(url: str, sidecar_url: str, tmp_path, **changes) -> Settings:
    """Settings for a test's own Redis (broker and backend too), sidecar and LanceDB directory,
    with a short sidecar budget unless `changes` say otherwise."""
    values = {"sidecar_retry_budget_s": 5.0, "sidecar_read_timeout_s": 5.0, **changes}
    return Settings.from_env(
        {},
        redis_url=url,
        broker_url=url,
        result_backend=url,
        sidecar_url=sidecar_url,
        lancedb_uri=str(tmp_path / "lancedb"),
        **values,
    )
