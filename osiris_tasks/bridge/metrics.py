"""The bridge's counters as Prometheus metrics on an HTTP `/metrics` endpoint."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

__all__ = ["BridgeCollector", "serve_metrics"]

PREFIX = "osiris_bridge_"
GAUGES = frozenset({"inflight"})
REJECTED = "ticks_rejected."


def _name(counter: str) -> str:
    return PREFIX + re.sub(r"[^a-zA-Z0-9_]", "_", counter)


class BridgeCollector(Collector):
    """Reads a counters snapshot at scrape time; per-reason rejections become one labelled
    family, `osiris_bridge_ticks_rejected_by_reason_total{reason=...}`."""

    def __init__(self, snapshot: Callable[[], Mapping[str, int]]):
        self._snapshot = snapshot

    def collect(self) -> Iterator:
        counters = dict(self._snapshot())
        by_reason = CounterMetricFamily(
            PREFIX + "ticks_rejected_by_reason", "ticks rejected, by reason", labels=["reason"]
        )
        for key, value in sorted(counters.items()):
            if key.startswith(REJECTED):
                by_reason.add_metric([key[len(REJECTED) :]], value)
            elif key in GAUGES:
                yield GaugeMetricFamily(_name(key), f"bridge {key}", value=value)
            else:
                yield CounterMetricFamily(_name(key), f"bridge {key}", value=value)
        yield by_reason


def serve_metrics(
    port: int, snapshot: Callable[[], Mapping[str, int]], addr: str = "127.0.0.1"
) -> None:
    """Serve `/metrics` for `snapshot` on `addr:port` from a daemon thread."""
    registry = CollectorRegistry()
    registry.register(BridgeCollector(snapshot))
    start_http_server(port, addr=addr, registry=registry)
