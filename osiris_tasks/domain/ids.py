"""Run ids: unique across processes, sortable by creation time, safe in filters and URLs."""

from __future__ import annotations

import hashlib
import secrets
import time
from datetime import UTC, datetime

__all__ = ["new_run_id", "stream_run_id", "utc_iso"]


def new_run_id(now_s: float | None = None) -> str:
    """`run_YYYYMMDDTHHMMSSmmmZ_<16 hex>`: ms-resolution time, then 64 random bits."""
    now_s = time.time() if now_s is None else now_s
    stamp = datetime.fromtimestamp(now_s, UTC).strftime("%Y%m%dT%H%M%S")
    return f"run_{stamp}{int(now_s * 1000) % 1000:03d}Z_{secrets.token_hex(8)}"


def stream_run_id(stream: str, entry_ids: list[bytes] | list[str]) -> str:
    """The run id of a batch read from a Redis Stream: the same entries always give the same id
    (a batch formed again after a crash is recorded once). `run_<time of the first entry>Z_`
    then 64 bits of the SHA-256 of the stream's name and the entry ids, in order."""
    ids = [i if isinstance(i, bytes) else i.encode() for i in entry_ids]
    first_ms = int(ids[0].split(b"-", 1)[0])
    stamp = datetime.fromtimestamp(first_ms / 1000, UTC).strftime("%Y%m%dT%H%M%S")
    digest = hashlib.sha256(b"\n".join([stream.encode(), *ids])).hexdigest()[:16]
    return f"run_{stamp}{first_ms % 1000:03d}Z_{digest}"


def utc_iso(epoch_s: float | None = None) -> str:
    """`epoch_s` (default: now) as ISO 8601 UTC with milliseconds."""
    epoch_s = time.time() if epoch_s is None else epoch_s
    return datetime.fromtimestamp(epoch_s, UTC).isoformat(timespec="milliseconds")
