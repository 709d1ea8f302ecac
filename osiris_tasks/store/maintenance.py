"""Keeping a LanceDB table small and fast while it is appended to: compaction, old-version
cleanup, scalar indices.

Every append makes one data fragment and one table version. Left alone, reads slow down with the
fragment count (each query opens every fragment) and the disk fills with versions (each
version's manifest lists every fragment, so n appends leave O(n^2) bytes of manifests).
`optimize_table` undoes both: it merges small fragments, deletes versions older than
`cleanup_older_than_s` with the files only they used, and brings the scalar indices up to date
with the rows appended since the last run (rows not indexed yet are still found, by a scan).

Safe while other processes append, as long as the cleanup cut-off is longer than any commit
takes: a compaction commits as a rewrite of the fragments it read, which lance rebases over
concurrent appends; the appends' rows are never part of it. Cleanup keeps the latest version
and every version newer than the cut-off, and never deletes files no version refers to (an
append in flight) until they are a week old. But it does delete older manifests, and a writer
that chose its version number before they went commits into the freed number, below the
latest version, where no reader looks (lance-format/lance#3718; seen here with a cut-off of 0 s
and three processes on a loaded machine: 3 of 22 runs lost one batch, `add()` returning
normally). So `Settings` refuses a cut-off under 60 s; 0 is for a store with one writer only.
A reader still on a version older than the cut-off fails and reopens (`RunStore` retries it).

`RunStore.maintain()` runs this under a lock, so one process does it at a time (the writers'
scheduled runs in a maintenance process of their own: see `maintenance_schedule.py`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from lancedb.index import BTree

if TYPE_CHECKING:
    from lancedb.table import LanceTable

__all__ = ["ensure_indices", "log_optimized", "optimize_table", "table_stats"]

log = logging.getLogger(__name__)


def ensure_indices(handle: LanceTable, columns: tuple[str, ...]) -> list[str]:
    """Create a BTREE index on each of `columns` that has none; return the columns indexed now."""
    indexed = {column for index in handle.list_indices() for column in index.columns}
    created = []
    for column in columns:
        if column not in indexed:
            handle.create_index(column, config=BTree(), replace=False)
            created.append(column)
    return created


def table_stats(handle: LanceTable) -> dict[str, Any]:
    """Rows, fragments, versions, indices and the bytes of the latest version's data files."""
    stats = handle.stats()
    return {
        "rows": stats["num_rows"],
        "fragments": stats["fragment_stats"]["num_fragments"],
        "versions": len(handle.list_versions()),
        "indices": stats["num_indices"],
        "data_bytes": stats["total_bytes"],
    }


def optimize_table(
    handle: LanceTable,
    *,
    cleanup_older_than_s: float,
    index_columns: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Index, compact and clean up `handle`; return its stats before and after, and the time."""
    started = time.perf_counter()
    before = table_stats(handle)
    created = ensure_indices(handle, index_columns)
    handle.optimize(cleanup_older_than=timedelta(seconds=cleanup_older_than_s))
    after = table_stats(handle)
    return {
        "table": handle.name,
        "seconds": time.perf_counter() - started,
        "before": before,
        "after": after,
        "indices_created": created,
    }


def log_optimized(done: Mapping[str, Any], where: str) -> None:
    """Log what `optimize_table` did (it may have run in another process)."""
    before, after = done["before"], done["after"]
    log.info(
        "optimized %s %s in %.2f s: fragments %s -> %s, versions %s -> %s, new indices %s",
        done["table"],
        where,
        done["seconds"],
        before["fragments"],
        after["fragments"],
        before["versions"],
        after["versions"],
        done["indices_created"] or "none",
    )
