"""The long-lived clients a process needs, built once from settings and shared by its tasks."""

from __future__ import annotations

from dataclasses import dataclass

import redis

from .deadletter import DeadLetter
from .events import EventBus
from .portfolio import Portfolio
from .risk import RiskLimits
from .settings import Settings
from .sidecar import SidecarClient
from .store import DEFAULT_SEEN_TTL_S, RunStore

__all__ = ["Resources", "redis_client"]

REDIS_SOCKET_TIMEOUT_S = 5.0
REDIS_CONNECT_TIMEOUT_S = 3.0
REDIS_HEALTH_CHECK_INTERVAL_S = 30
# A row's seen mark outlives this many visibility timeouts (a redelivered write comes after one).
SEEN_TTL_VISIBILITY_TIMEOUTS = 4


def redis_client(url: str) -> redis.Redis:
    """A Redis client with bounded timeouts, so a dead server fails calls instead of hanging."""
    return redis.Redis.from_url(
        url,
        socket_timeout=REDIS_SOCKET_TIMEOUT_S,
        socket_connect_timeout=REDIS_CONNECT_TIMEOUT_S,
        health_check_interval=REDIS_HEALTH_CHECK_INTERVAL_S,
    )


@dataclass
class Resources:
    """Redis, the sidecar client, the run store and what is built on them."""

    settings: Settings
    redis: redis.Redis
    sidecar: SidecarClient
    store: RunStore
    portfolio: Portfolio
    bus: EventBus
    deadletter: DeadLetter
    limits: RiskLimits

    @classmethod
    def from_settings(cls, settings: Settings) -> Resources:
        client = redis_client(settings.redis_url)
        return cls(
            settings=settings,
            redis=client,
            sidecar=SidecarClient.from_settings(settings),
            store=RunStore(
                settings.lancedb_uri, redis=client,
                seen_ttl_s=max(DEFAULT_SEEN_TTL_S, SEEN_TTL_VISIBILITY_TIMEOUTS
                               * settings.visibility_timeout_s),
                maintain_every_commits=settings.store_maintain_every_commits,
                cleanup_older_than_s=settings.store_cleanup_older_than_s),
            portfolio=Portfolio(client, default_nav=settings.nav,
                                default_daily_pnl=settings.daily_pnl),
            bus=EventBus(client),
            deadletter=DeadLetter(client),
            limits=RiskLimits(settings.max_position_size_pct, settings.max_daily_loss_pct),
        )

    def reset_after_fork(self) -> None:
        """Drop connections inherited from a parent process."""
        self.redis.connection_pool.reset()
        self.sidecar.reset_after_fork()
        self.store.reset_after_fork()

    def close(self) -> None:
        self.sidecar.close()
        self.store.close()
        self.redis.close()
