"""Run ids: unique across processes, sortable by creation time, safe in filters and URLs."""

from __future__ import annotations

import secrets
import time
from datetime import UTC, datetime

__all__ = ["new_run_id", "utc_iso"]


def new_run_id(now_s: float | None = None) -> str:
    """`run_YYYYMMDDTHHMMSSmmmZ_<16 hex>`: ms-resolution time, then 64 random bits."""
    now_s = time.time() if now_s is None else now_s
    stamp = datetime.fromtimestamp(now_s, UTC).strftime("%Y%m%dT%H%M%S")
    return f"run_{stamp}{int(now_s * 1000) % 1000:03d}Z_{secrets.token_hex(8)}"


def utc_iso(epoch_s: float | None = None) -> str:
    """`epoch_s` (default: now) as ISO 8601 UTC with milliseconds."""
    epoch_s = time.time() if epoch_s is None else epoch_s
    return datetime.fromtimestamp(epoch_s, UTC).isoformat(timespec="milliseconds")
