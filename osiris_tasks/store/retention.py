"""Retention: rows older than `OSIRIS_RETENTION_DAYS` leave the tables, archived to Parquet first
when `OSIRIS_ARCHIVE_DIR` is set, so a table does not grow forever.

Which rows: those whose `timestamp` (when the row was recorded, ISO 8601 UTC, which sorts as
text) is before the cut-off, in `orchestrator_runs`, `advice` and `fills`. The completion cache
(`completions`) is kept: backtests replay from it, whatever its age.

Archive: `<archive_dir>/<table>/<table>-<cut-off>-<rows>.parquet`, written in full (to a
temporary name, then renamed) before a row is deleted; a failed archive deletes nothing.
Deleting marks rows in deletion files; the compaction that follows in the same maintenance pass
rewrites the fragments they were in.

Run by the store's maintenance (`RunStore(retention_s=...)`, every maintenance pass), or at will
with `osiris runs expire`.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow.parquet as pq

from osiris_tasks.domain.ids import utc_iso

if TYPE_CHECKING:
    from lancedb.table import LanceTable

__all__ = ["RETAINED_TABLES", "cutoff_iso", "expire_table"]

log = logging.getLogger(__name__)

# The tables retention applies to (completions are a cache backtests replay from: kept).
RETAINED_TABLES = ("orchestrator_runs", "advice", "fills")
# Rows read per batch while archiving.
ARCHIVE_BATCH_ROWS = 10_000


def cutoff_iso(older_than_s: float, now_s: float | None = None) -> str:
    """The ISO timestamp before which rows are expired."""
    return utc_iso((time.time() if now_s is None else now_s) - older_than_s)


def expire_table(
    handle: LanceTable, *, before: str, archive_dir: str | None = None
) -> dict[str, Any]:
    """Delete `handle`'s rows recorded before `before` (ISO), archived first if `archive_dir`;
    return what was done."""
    where = f"timestamp < '{_checked(before)}'"
    started = time.perf_counter()
    rows = handle.count_rows(where)
    archived = None
    if rows:
        if archive_dir is not None:
            archived = str(_archive(handle, where, rows, before, Path(archive_dir)))
        handle.delete(where)
        log.info(
            "%s: expired %d rows recorded before %s (archive: %s)",
            handle.name,
            rows,
            before,
            archived,
        )
    return {
        "table": handle.name,
        "expired_rows": rows,
        "before": before,
        "archive": archived,
        "seconds": time.perf_counter() - started,
    }


def _checked(iso: str) -> str:
    """`iso` if it is a timestamp of ours (it goes into a filter as text)."""
    if not iso[:4].isdigit() or any(c in iso for c in "'\\\"; "):
        raise ValueError(f"not an ISO timestamp: {iso!r}")
    return iso


def _archive(handle: LanceTable, where: str, rows: int, before: str, archive_dir: Path) -> Path:
    """Write the rows matching `where` to one Parquet file; its path."""
    folder = archive_dir / handle.name
    folder.mkdir(parents=True, exist_ok=True)
    stamp = before.replace(":", "").replace("-", "").split(".")[0]
    path = folder / f"{handle.name}-{stamp}-{rows}.parquet"
    partial = path.with_suffix(".parquet.partial")
    reader = handle.search().where(where).limit(rows).to_batches(ARCHIVE_BATCH_ROWS)
    writer = None
    try:
        for batch in reader:
            if writer is None:
                writer = pq.ParquetWriter(partial, batch.schema, compression="zstd")
            writer.write_batch(batch)
    finally:
        if writer is not None:
            writer.close()
    os.replace(partial, path)
    return path
