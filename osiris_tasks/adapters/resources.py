"""The long-lived clients a process needs, built once from settings and shared by its tasks.

The run store is built on first use: it loads lancedb and pyarrow (~1.3 s and ~90 MB of a
worker's RSS, measured), which a worker that only calls the sidecar never needs.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import redis

from osiris_tasks.adapters.completions import CompletionCache, CompletionStage
from osiris_tasks.adapters.deadletter import DeadLetter
from osiris_tasks.adapters.events import EventBus, EventOutbox
from osiris_tasks.adapters.join import RunJoin
from osiris_tasks.adapters.llm import ChatCompletionsBackend
from osiris_tasks.adapters.portfolio import BookConfig, Portfolio
from osiris_tasks.adapters.sidecar import SidecarClient
from osiris_tasks.adapters.tickstash import TickStash
from osiris_tasks.domain.budget import LLMBudget
from osiris_tasks.domain.risk import RiskLimits
from osiris_tasks.settings import Settings
from osiris_tasks.store.claims import DEFAULT_SEEN_TTL_S

if TYPE_CHECKING:
    from osiris_tasks.store.runstore import RunStore

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
    """Redis, the sidecar client, the run store and what is built on them (the portfolio, the
    event bus, the dead-letter list, the tick stash, the runs' joins)."""

    settings: Settings
    redis: redis.Redis
    sidecar: SidecarClient
    portfolio: Portfolio
    bus: EventBus
    outbox: EventOutbox
    deadletter: DeadLetter
    limits: RiskLimits
    stash: TickStash
    joins: RunJoin
    # The LLM nodes' backend: the sidecar's client itself, or an OpenAI-compatible server's.
    llm: SidecarClient | ChatCompletionsBackend
    # Completions on their way to the cache's table (record_run stages them).
    completions: CompletionStage
    _store: RunStore | None = field(default=None, repr=False)
    _store_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def llm_budget(self) -> LLMBudget:
        """Each run's LLM budget, from settings."""
        return LLMBudget(self.settings.llm_max_tokens_per_run, self.settings.llm_deadline_s)

    @property
    def store(self) -> RunStore:
        """The run store, built (and lancedb imported) on first use, once per process."""
        if self._store is None:
            with self._store_lock:
                if self._store is None:
                    self._store = self._build_store()
        return self._store

    def wrap_store(self, wrap: Callable[[RunStore], RunStore]) -> None:
        """Put `wrap(store)` in the run store's place, for every node that uses it (a backtest
        batches its writes this way)."""
        self._store = wrap(self.store)

    def _build_store(self) -> RunStore:
        settings = self.settings
        return _run_store(
            settings.lancedb_uri,
            redis=self.redis,
            seen_ttl_s=max(
                DEFAULT_SEEN_TTL_S, SEEN_TTL_VISIBILITY_TIMEOUTS * settings.visibility_timeout_s
            ),
            maintain_every_commits=settings.store_maintain_every_commits,
            cleanup_older_than_s=settings.store_cleanup_older_than_s,
            retention_s=settings.retention_s,
            archive_dir=settings.archive_dir,
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> Resources:
        client = redis_client(settings.redis_url)
        cache = CompletionCache(settings.llm_cache, memory_rows=settings.llm_cache_memory_rows)
        sidecar = SidecarClient.from_settings(settings)
        if settings.llm_backend == "sidecar":
            sidecar.cache = cache
        resources = cls(
            settings=settings,
            redis=client,
            sidecar=sidecar,
            portfolio=Portfolio(
                client,
                default_nav=settings.nav,
                default_daily_pnl=settings.daily_pnl,
                mode=settings.book,
                config=BookConfig(
                    fill_at=settings.book_fill_at,
                    slippage_bps=settings.book_slippage_bps,
                    fee_bps=settings.book_fee_bps,
                    session_start_hour=settings.book_session_start_hour,
                    max_daily_loss_pct=settings.max_daily_loss_pct,
                ),
            ),
            bus=EventBus(
                client,
                stream=settings.events_stream,
                stream_maxlen=settings.events_stream_maxlen,
            ),
            outbox=EventOutbox(client),
            deadletter=DeadLetter(client),
            limits=RiskLimits(
                settings.max_position_size_pct,
                settings.max_daily_loss_pct,
                settings.max_symbol_position_pct,
                settings.max_gross_exposure_pct,
                settings.max_orders_per_minute,
            ),
            stash=TickStash(client, min_ticks=settings.ticks_by_reference_min),
            joins=RunJoin(client),
            llm=(
                ChatCompletionsBackend.from_settings(settings, cache)
                if settings.llm_backend == "openai"
                else sidecar
            ),
            completions=CompletionStage(client, lambda: resources.store, settings.lancedb_uri),
        )
        if settings.llm_cache_uri in (None, settings.lancedb_uri):
            cache.use_store(lambda: resources.store, resources.completions)
        else:  # the cache of another store (a backtest replaying live runs' completions)
            cache.use_store(functools.cache(lambda: _run_store(settings.llm_cache_uri)))
        return resources

    def reset_after_fork(self) -> None:
        """Drop connections inherited from a parent process."""
        self.redis.connection_pool.reset()
        self.sidecar.reset_after_fork()
        if self.llm is not self.sidecar:
            self.llm.reset_after_fork()
        self._store_lock = threading.Lock()
        if self._store is not None:
            self._store.reset_after_fork()

    def close(self) -> None:
        if self._store is not None:
            self.completions.flush()  # what this process staged is written before it goes
        self.sidecar.close()
        if self.llm is not self.sidecar:
            self.llm.close()
        if self._store is not None:
            self._store.close()
        self.redis.close()


def _run_store(uri: str, **options) -> RunStore:
    """A run store (lancedb imported here, on first use)."""
    from osiris_tasks.store.runstore import RunStore

    return RunStore(uri, **options)
