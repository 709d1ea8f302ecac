"""The bridge's configuration: what it reads, how it batches, how hard it may push the workers.

`BridgeConfig` is checked when it is built, so a bridge never starts with a setting it cannot
honour. What each setting does is told where it is used: batching and `max_inflight` in
`batcher`, `drain_timeout_s` in `submitter`, `stats_interval_s` in `stats`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from osiris_tasks.errors import ConfigError
from osiris_tasks.keys import BRIDGE_GROUP, MARKET_CHANNEL, MARKET_STREAM
from osiris_tasks.settings import (
    DEFAULT_STREAM_CLAIM_IDLE_S as CLAIM_IDLE_S,
)
from osiris_tasks.settings import STREAM_RETENTIONS, redacted_repr

__all__ = ["CLAIM_IDLE_S", "DRAIN_TIMEOUT_S", "SOURCES", "STREAM_RETENTIONS", "BridgeConfig"]

# At stop, how long the submitter may take by default to submit what is queued.
DRAIN_TIMEOUT_S = 10.0
# Where ticks come from: Redis Pub/Sub (the default, no replay) or a Redis Stream.
SOURCES = ("pubsub", "stream")


@dataclass(frozen=True, repr=False)
class BridgeConfig:
    """What the bridge reads, how it batches, and how hard it may push the workers (its repr
    redacts the Redis URL's password)."""

    redis_url: str
    market_channel: str = MARKET_CHANNEL
    ticks_per_proposal: int = 10
    max_wait_s: float | None = None
    group_by: Literal["symbol", "none"] = "symbol"
    default_symbol: str = "SPY"
    proposal_ttl_s: float | None = None
    max_inflight: int | None = None
    stats_interval_s: float = 10.0
    drain_timeout_s: float = DRAIN_TIMEOUT_S
    symbols: frozenset[str] | None = None  # OSIRIS_SYMBOLS: ticks of any other are rejected
    source: Literal["pubsub", "stream"] = "pubsub"
    market_stream: str = MARKET_STREAM
    stream_group: str = BRIDGE_GROUP
    consumer: str = "bridge"  # this bridge's name in the group: stable across its restarts
    claim_idle_s: float = CLAIM_IDLE_S
    stream_retention: Literal["acked", "maxlen"] = "acked"

    def __repr__(self) -> str:
        return redacted_repr(self)

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
        if self.source not in SOURCES:
            raise ConfigError(f"source must be one of {', '.join(SOURCES)}, not {self.source!r}")
        if self.stream_retention not in STREAM_RETENTIONS:
            raise ConfigError(f"stream retention must be one of {', '.join(STREAM_RETENTIONS)}")
        if self.claim_idle_s < 1:
            raise ConfigError("claim_idle_s must be at least 1 s")
        if self.stats_interval_s <= 0 or self.drain_timeout_s < 0:
            raise ConfigError("stats_interval_s must be positive, drain_timeout_s not negative")
