"""The bridge's configuration: what it reads, how it batches, how hard it may push the workers.

`BridgeConfig` is checked when it is built, so a bridge never starts with a setting it cannot
honour. What each setting does is told where it is used: batching and `max_inflight` in
`batcher`, `drain_timeout_s` in `submitter`, `stats_interval_s` in `stats`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from osiris_tasks.errors import ConfigError
from osiris_tasks.keys import MARKET_CHANNEL
from osiris_tasks.settings import redacted_repr

__all__ = ["DRAIN_TIMEOUT_S", "BridgeConfig"]

# At stop, how long the submitter may take by default to submit what is queued.
DRAIN_TIMEOUT_S = 10.0


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
        if self.stats_interval_s <= 0 or self.drain_timeout_s < 0:
            raise ConfigError("stats_interval_s must be positive, drain_timeout_s not negative")
