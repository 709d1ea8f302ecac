"""The book the risk gate decides against: NAV and daily P&L, from Redis or settings."""

from __future__ import annotations

import logging
from typing import Any

import redis

from osiris_tasks.domain.numbers import parse_finite
from osiris_tasks.keys import DAILY_PNL_KEY as PNL_KEY
from osiris_tasks.keys import NAV_KEY

__all__ = ["NAV_KEY", "PNL_KEY", "Portfolio"]

logger = logging.getLogger(__name__)

# Kept by an external book; when absent the settings' OSIRIS_NAV / OSIRIS_DAILY_PNL apply.


class Portfolio:
    """Reads NAV and daily P&L; a value it cannot read is `None`, which the gate rejects."""

    def __init__(self, client: redis.Redis | None, *, default_nav: float, default_daily_pnl: float):
        self._redis = client
        self._defaults = (default_nav, default_daily_pnl)

    def snapshot(self, run_id: str | None = None) -> dict[str, Any]:
        """`{"nav", "daily_pnl", "source"}` as of now."""
        nav, pnl = self._defaults
        if self._redis is None:
            return {"nav": nav, "daily_pnl": pnl, "source": "settings"}
        try:
            raw_nav, raw_pnl = self._redis.mget(NAV_KEY, PNL_KEY)
        except redis.RedisError as exc:
            logger.error("run_id=%s portfolio unreadable from Redis: %s", run_id, exc)
            return {"nav": None, "daily_pnl": None, "source": "unavailable"}
        source = "redis" if raw_nav is not None or raw_pnl is not None else "settings"
        return {
            "nav": nav if raw_nav is None else parse_finite(raw_nav),
            "daily_pnl": pnl if raw_pnl is None else parse_finite(raw_pnl),
            "source": source,
        }
