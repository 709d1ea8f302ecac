"""(g) The broker's ack emulation: CPU per delivered message to record it as unacknowledged
(`QoS.append`) and to acknowledge it (`QoS.ack`), with `osiris_tasks.broker.QoS` (one Lua
script each) against kombu's own `QoS` (a MULTI/EXEC pipeline each) on the same channel class
(`osiris_tasks.broker.Channel`, one redis-py client per pool), in this process, rounds
interleaved. Every worker pays both once per task."""

from __future__ import annotations

import statistics
import time

import kombu
import redis
from kombu.transport import redis as kombu_redis

from osiris_tasks import broker

from .report import Report

NAME = "broker"
QUEUE = "osiris.bench.qos"
# A task message of the pipeline's size (a run's state is a few KB).
PAYLOAD = {"state": "x" * 2000}
ROUNDS = 5


class _StockQoSChannel(broker.Channel):
    QoS = kombu_redis.QoS


class _StockQoSTransport(broker.Transport):
    Channel = _StockQoSChannel


def _cpu_per_message(redis_url: str, transport: type, messages: int) -> float:
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


def run(report: Report, *, messages: int, redis_url: str) -> None:
    spent: dict[type, list[float]] = {_StockQoSTransport: [], broker.Transport: []}
    for _ in range(ROUNDS):
        for transport, rounds in spent.items():
            rounds.append(_cpu_per_message(redis_url, transport, messages))
    client = redis.Redis.from_url(redis_url)
    left = client.hlen("unacked") + client.zcard("unacked_index") + client.llen(QUEUE)
    client.close()
    if left:
        raise RuntimeError(f"{left} messages or unacked entries left behind")
    stock = report.add(NAME, "kombu's QoS: append + ack, CPU per message",
                       statistics.median(spent[_StockQoSTransport]) * 1e6, "µs", messages=messages,
                       rounds=ROUNDS)
    report.add(NAME, "osiris_tasks.broker.QoS: append + ack, CPU per message",
               statistics.median(spent[broker.Transport]) * 1e6, "µs", baseline=stock,
               messages=messages, rounds=ROUNDS)
