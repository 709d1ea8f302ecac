"""Keeping a LanceDB table small and fast while it is appended to: compaction, old-version
cleanup, scalar indices.

Every append makes one data fragment and one table version. Left alone, reads slow down with the
fragment count (each query opens every fragment) and the disk fills with versions (each
version's manifest lists every fragment, so n appends leave O(n^2) bytes of manifests).
`optimize_table` undoes both, with lance's own API (pylance, the version of the lance core that
lancedb embeds): it merges small fragments into fragments of up to `TARGET_ROWS_PER_FRAGMENT`
rows, deletes versions older than `cleanup_older_than_s` with the files only they used, and
brings the scalar indices up to date with the rows appended since the last run (rows not
indexed yet are still found, by a scan). Full fragments are left alone, so a pass costs the
same at 10k rows as at 1M.

Safe while other processes append: a compaction commits as a rewrite of the fragments it
read, which lance rebases over concurrent appends; the appends' rows are never part of it.
Cleanup keeps the latest version and every version newer than the cut-off, and never deletes
files no version refers to (an append in flight) until they are a week old. But it does delete
older manifests, and a commit can write its manifest into a number freed that way, below the
latest version, where no reader looks, `add()` returning normally (lance-format/lance#3718;
seen here with a cut-off of 0 s and three processes on a loaded machine: 3 of 22 runs lost one
batch; `tests/store/test_stalled_commit.py` makes it happen every time).

When that can happen: a lance commit loads the latest version N, stamps its manifest with the
time and writes it as N+1 only if no file has that name. For the name to be free again,
another commit must have written N+1 after this one loaded N, and cleanup must have deleted it
(stamped before the cut-off, no longer the latest) before this one writes. So the two commits'
spans, from loading (or stamping) to writing, add up to more than the cut-off, less however far
the other writer's clock runs behind the cleaner's. `RunStore` checks every commit that took more
than a tenth of the cut-off (`VERIFY_FRACTION`): it looks the keys up in the latest version and
appends the missing rows again (`RunStore._commit`). What is left: a quicker commit can lose its
rows if another commit to the same table took nine tenths of the cut-off and a cleanup ran
between the two writes. `Settings` refuses a cut-off under 60 s, which keeps the checks rare
and that case to commits stalled for 54 s or more (clocks agreeing); with 0, every commit is
checked.
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

from osiris_tasks.store.retention import expire_table

if TYPE_CHECKING:
    from lancedb.table import LanceTable

__all__ = ["ensure_indices", "log_optimized", "optimize_table", "table_stats"]

log = logging.getLogger(__name__)

# Compaction merges fragments smaller than this into fragments of at most this many rows and
# leaves full ones alone, so a pass rewrites at most this many rows however large the table
# (lancedb's `optimize()` aims at 1M-row fragments: it rewrote the growing newest one at every
# pass, 0.46 s at 10k runs and 4.1 s at 100k). Its pages are copied, not re-encoded
# (`try_binary_copy`): a pass at 100k runs takes 0.3-0.5 s, for data files 17 % larger.
TARGET_ROWS_PER_FRAGMENT = 20_000


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
    expire_before: str | None = None,
    archive_dir: str | None = None,
) -> dict[str, Any]:
    """Expire (with `expire_before`: `retention.py`), index, compact and clean up `handle`;
    return its stats before and after, and the time."""
    started = time.perf_counter()
    before = table_stats(handle)
    expired = (
        expire_table(handle, before=expire_before, archive_dir=archive_dir)
        if expire_before is not None
        else None
    )
    created = ensure_indices(handle, index_columns)
    dataset = handle.to_lance()
    dataset.optimize.compact_files(
        target_rows_per_fragment=TARGET_ROWS_PER_FRAGMENT, compaction_mode="try_binary_copy"
    )
    dataset = handle.to_lance()  # the compaction's version
    dataset.cleanup_old_versions(older_than=timedelta(seconds=cleanup_older_than_s))
    dataset.optimize.optimize_indices()
    handle.checkout_latest()
    after = table_stats(handle)
    return {
        "table": handle.name,
        "seconds": time.perf_counter() - started,
        "before": before,
        "after": after,
        "indices_created": created,
        "expired": expired,
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
