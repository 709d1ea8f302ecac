"""(g) In-process hot paths, each against the code it replaced, in this process, rounds
interleaved, CPU time (`time.process_time`):

- the broker's ack emulation: recording a delivered message as unacknowledged and acking it
  (`QoS.append` + `QoS.ack`, which every worker pays once per task), with
  `osiris_tasks.transport.broker.QoS` (one Lua script each) against kombu's own `QoS` (a MULTI/EXEC
  pipeline each) on the same channel class;
- consuming: taking a delivered message off its queue and acking it, CPU per message in the
  consumer, with our fetch (`transport/fetch.py`: one script moves the message into the unacked
  hash) against our transport with kombu's BRPOP-then-record (what it did before) and kombu's
  stock transport;
- submitting a run of 100 ticks: `submit_runs` (batches of 32, one round trip each) and
  `submit_run` against Celery's chain (`build_canvas(...).apply_async()`), on the broker
  configured as the bridge's is;
- validating a tick: `parse_tick` on a feed's plain ticks (msgspec decodes and checks them in
  one pass) against decoding (orjson) and the full validation it falls back to, and against
  decoding and the dict fast path (`_plain_tick`, what `parse_tick` did before msgspec).
"""

from __future__ import annotations

import itertools
import statistics
import time
from collections.abc import Callable

import kombu
import orjson
import redis
from kombu.transport import redis as kombu_redis

from osiris_tasks.domain import ticks
from osiris_tasks.settings import Settings
from osiris_tasks.tasks.canvas import build_canvas, submit_run, submit_runs
from osiris_tasks.tasks.celery_app import QUEUES, app, configure
from osiris_tasks.tools.sim import synthetic_ticks
from osiris_tasks.transport import broker
from osiris_tasks.workflow.state import initial_state

from .report import Report

NAME = "hotpaths"
QUEUE = "osiris.bench.qos"
# A task message of the pipeline's size (a run's state is a few KB).
PAYLOAD = {"state": "x" * 2000}
ROUNDS = 5
TICKS_PER_RUN, SUBMIT_BATCH = 100, 32


class _StockQoSChannel(broker.Channel):
    QoS = kombu_redis.QoS


class _StockQoSTransport(broker.Transport):
    Channel = _StockQoSChannel


class _BrpopChannel(broker.Channel):
    """Our channel consuming as kombu does: BRPOP, then `QoS.append` records the message."""

    _brpop_start = kombu_redis.Channel._brpop_start
    _brpop_read = kombu_redis.Channel._brpop_read


class _BrpopTransport(broker.Transport):
    Channel = _BrpopChannel


def _consume_cpu(redis_url: str, transport: type | None, messages: int) -> float:
    """CPU seconds per message of consuming (drain_events) and acking `messages` queued ones."""
    with (
        kombu.Connection(redis_url, transport=broker.Transport) as conn,
        conn.Producer() as producer,
    ):
        for _ in range(messages):
            producer.publish(PAYLOAD, routing_key=QUEUE)
    got = []
    with kombu.Connection(redis_url, transport=transport) as conn:
        consumer = conn.Consumer(
            [kombu.Queue(QUEUE)],
            accept=["json"],
            on_message=lambda message: (message.ack(), got.append(1)),
        )
        consumer.consume()
        started = time.process_time()
        while len(got) < messages:
            conn.drain_events(timeout=5)
        spent = time.process_time() - started
        consumer.cancel()
    return spent / messages


def _ack_cpu(redis_url: str, transport: type, messages: int) -> float:
    """CPU seconds per message of `append` then `ack` over `messages` delivered messages."""
    with kombu.Connection(redis_url, transport=transport) as conn:
        channel = conn.default_channel
        kombu.Queue(QUEUE, channel=channel).declare()
        with conn.Producer() as producer:
            for _ in range(messages):
                producer.publish(PAYLOAD, routing_key=QUEUE)
        delivered = [channel.basic_get(QUEUE, no_ack=False) for _ in range(messages)]
        for message in delivered:  # basic_get appended them: start from none unacknowledged
            channel.qos.ack(message.delivery_tag)
        started = time.process_time()
        for message in delivered:
            channel.qos.append(message, message.delivery_tag)
        for message in delivered:
            channel.qos.ack(message.delivery_tag)
        return (time.process_time() - started) / messages


def _cpu_per_item(fn: Callable[[], object], items: int) -> float:
    started = time.process_time()
    fn()
    return (time.process_time() - started) / items


def _medians(candidates: dict[str, Callable[[], float]]) -> dict[str, float]:
    """Each candidate's median over ROUNDS rounds, the candidates interleaved in every round."""
    spent: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(ROUNDS):
        for name, measure in candidates.items():
            spent[name].append(measure())
    return {name: statistics.median(values) for name, values in spent.items()}


def _check_nothing_left(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    left = client.hlen("unacked") + client.zcard("unacked_index") + client.llen(QUEUE)
    client.close()
    if left:
        raise RuntimeError(f"{left} messages or unacked entries left behind")


def ack_emulation(report: Report, redis_url: str, messages: int) -> None:
    cpu = _medians(
        {
            name: lambda t=transport: _ack_cpu(redis_url, t, messages)
            for name, transport in (("stock", _StockQoSTransport), ("ours", broker.Transport))
        }
    )
    _check_nothing_left(redis_url)
    stock = report.add(
        NAME,
        "kombu's QoS: append + ack, CPU per message",
        cpu["stock"] * 1e6,
        "µs",
        messages=messages,
        rounds=ROUNDS,
    )
    report.add(
        NAME,
        "osiris_tasks.transport.broker.QoS: append + ack, CPU per message",
        cpu["ours"] * 1e6,
        "µs",
        baseline=stock,
        messages=messages,
        rounds=ROUNDS,
    )


def consuming(report: Report, redis_url: str, messages: int) -> None:
    cpu = _medians(
        {
            name: lambda t=transport: _consume_cpu(redis_url, t, messages)
            for name, transport in (
                ("stock", None),
                ("brpop", _BrpopTransport),
                ("fetch", broker.Transport),
            )
        }
    )
    _check_nothing_left(redis_url)
    stock = report.add(
        NAME,
        "consume + ack, kombu's stock transport (BRPOP, then a MULTI/EXEC "
        "records it), CPU per message",
        cpu["stock"] * 1e6,
        "µs",
        messages=messages,
        rounds=ROUNDS,
    )
    report.add(
        NAME,
        "consume + ack, our transport with BRPOP (then a script records it)",
        cpu["brpop"] * 1e6,
        "µs",
        baseline=stock,
        messages=messages,
        rounds=ROUNDS,
    )
    report.add(
        NAME,
        "consume + ack, our fetch (one script takes and records it)",
        cpu["fetch"] * 1e6,
        "µs",
        baseline=stock,
        messages=messages,
        rounds=ROUNDS,
    )


def submission(report: Report, redis_url: str, runs: int) -> None:
    configure(
        app,
        Settings.from_env({}, redis_url=redis_url, broker_url=redis_url, result_backend=redis_url),
    )
    feed = [
        dict(t)
        for t in itertools.islice(
            synthetic_ticks(("AAPL", "MSFT", "NVDA"), seed=5, volatility=0.002),
            TICKS_PER_RUN * runs,
        )
    ]
    client = redis.Redis.from_url(redis_url)

    def states() -> list[dict]:
        client.delete(*QUEUES)  # no worker: what one measurement queued goes before the next
        return [
            initial_state(feed[i * TICKS_PER_RUN : (i + 1) * TICKS_PER_RUN]) for i in range(runs)
        ]

    def chain() -> float:
        batch = states()
        return _cpu_per_item(
            lambda: [build_canvas(app, s).apply_async(ignore_result=True) for s in batch], runs
        )

    def one_by_one() -> float:
        batch = states()
        return _cpu_per_item(lambda: [submit_run(app, s) for s in batch], runs)

    def together() -> float:
        batch = states()
        return _cpu_per_item(
            lambda: [
                submit_runs(app, batch[i : i + SUBMIT_BATCH]) for i in range(0, runs, SUBMIT_BATCH)
            ],
            runs,
        )

    submit_run(app, states()[0])  # warm-up: connections, declarations
    cpu = _medians({"chain": chain, "one": one_by_one, "batch": together})
    queued = sum(client.llen(q) for q in QUEUES)
    client.delete(*QUEUES)
    client.close()
    if queued != runs:
        raise RuntimeError(f"{queued} of {runs} runs queued")
    chain_figure = report.add(
        NAME,
        f"run of {TICKS_PER_RUN} ticks submitted as Celery's "
        "chain (build_canvas().apply_async()), CPU per run",
        cpu["chain"] * 1000,
        "ms",
        runs=runs,
        rounds=ROUNDS,
    )
    report.add(
        NAME,
        "submit_run, CPU per run",
        cpu["one"] * 1000,
        "ms",
        baseline=chain_figure,
        runs=runs,
        rounds=ROUNDS,
    )
    report.add(
        NAME,
        f"submit_runs, batches of {SUBMIT_BATCH}, CPU per run",
        cpu["batch"] * 1000,
        "ms",
        baseline=chain_figure,
        runs=runs,
        rounds=ROUNDS,
    )


def tick_validation(report: Report, count: int) -> None:
    raw = [
        orjson.dumps(t)
        for t in itertools.islice(
            synthetic_ticks(("AAPL", "MSFT", "NVDA"), seed=5, volatility=0.002), count
        )
    ]
    decoded = [orjson.loads(r) for r in raw]

    def fast() -> float:
        return _cpu_per_item(
            lambda: [ticks.parse_tick(r, default_symbol="SPY") for r in raw], count
        )

    def full() -> float:
        return _cpu_per_item(lambda: [ticks._validate(d, "SPY", None) for d in decoded], count)

    def plain() -> float:
        return _cpu_per_item(lambda: [ticks._plain_tick(d) for d in decoded], count)

    def decode() -> float:
        return _cpu_per_item(lambda: [orjson.loads(r) for r in raw], count)

    cpu = _medians({"fast": fast, "full": full, "plain": plain, "decode": decode})
    baseline = report.add(
        NAME,
        "tick: decode (orjson) + full validation, CPU per tick",
        (cpu["decode"] + cpu["full"]) * 1e6,
        "µs",
        ticks=count,
        rounds=ROUNDS,
    )
    report.add(
        NAME,
        "tick: decode (orjson) + dict fast path (_plain_tick), CPU per tick",
        (cpu["decode"] + cpu["plain"]) * 1e6,
        "µs",
        baseline=baseline,
        ticks=count,
        rounds=ROUNDS,
    )
    report.add(
        NAME,
        "tick: parse_tick (msgspec decodes and checks), CPU per tick",
        cpu["fast"] * 1e6,
        "µs",
        baseline=baseline,
        ticks=count,
        rounds=ROUNDS,
    )


def run(report: Report, *, messages: int, runs: int, tick_count: int, redis_url: str) -> None:
    ack_emulation(report, redis_url, messages)
    consuming(report, redis_url, messages)
    submission(report, redis_url, runs)
    tick_validation(report, tick_count)
