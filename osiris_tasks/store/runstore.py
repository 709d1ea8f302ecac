"""The LanceDB audit trail: one row per run, one row per risk decision.

`RunStore` is the only module that talks to LanceDB; lancedb, pyarrow, OS and Redis errors
become `StoreError` here, once.

Guarantees, and what they rest on:

* **Idempotent writes.** `record_runs` / `record_advice_many` append each row only if its key
  (`run_id` / `advice_id`) is absent: the writer claims the keys, asks which of them exist (one
  `IN (...)` query), appends the absent rows in one commit, then releases the keys. A key another
  writer has claimed is waited for, then checked again. LanceDB's own `merge_insert` is not
  idempotent across concurrent writers, hence the claims. With a `redis` client a claim is a
  `SET NX PX` in Redis (`claims.py`), which holds across processes and hosts, and a key's first
  write skips the query (its "seen" mark proves no row can exist); without one a
  `threading.Lock` per store holds within one process only, so **several writer processes need
  `redis`**.
* **A dead writer's claims lapse in seconds.** A claim lives `claim_ttl_s` (5 s) and its writer
  renews it every third of that while it writes, so a long write keeps its keys, and a writer
  killed mid-write (SIGKILL, OOM) holds them at most 5 s: its task, redelivered only after the
  broker's visibility timeout, finds them free.
* **Group commit.** `record_run` / `record_advice` (one row) hand the row to a per-table
  committer (`group_commit.py`): the first waiting thread writes every row queued so far in one
  commit, the others wait for it. Threads sharing a store (a `--pool threads` worker) thus batch
  their writes with no added latency, and a call still returns only once its row is committed
  (or raises).
* **A slow commit is checked.** A commit that took more than a tenth of
  `cleanup_older_than_s` may have landed in a version number cleanup had just freed, below the
  latest version, where no reader looks (lance-format/lance#3718): the writer looks its keys up
  in the latest version and appends the missing rows again, still holding their claims
  (`RunStore._commit`; `maintenance.py` says what is left).
* **Maintenance.** Every append makes a fragment and a version; every
  `maintain_every_commits` commits to a table (counted in Redis across processes), the store
  runs `maintain()` on a background thread (`maintenance_schedule.py`): compaction, cleanup of
  versions older than `cleanup_older_than_s`, index update (`maintenance.py`), under a
  non-blocking lock so one process does it at a time. The thread hands the work to a
  maintenance process of the store's own (`maintenance_process.py`), so the memory a
  compaction takes is never the writer's.
* **Table creation is serialized** under the same kind of lock: lance turns a losing
  concurrent `create_table` into an overwrite, which can silently erase a row another process
  has just appended.
* **Commit conflicts are retried here.** Concurrent appends to one table occasionally fail
  after lance's own retries; every LanceDB call is retried up to `max_attempts` times with
  jittered exponential backoff, reopening the table in between.
* **Reads see other processes' writes**: the connection checks for a newer table version on
  every read (`read_consistency_interval=0`).

Tables are created on first use, by reads as well as writes, with BTREE indices on their keys
(and `orchestrator_runs.timestamp`, for `recent_runs`); their schemas, and the key checks that
keep filters safe, are in `schema.py`.
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import timedelta
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

import lancedb
import pyarrow as pa
from lancedb.query import ColumnOrdering
from redis.exceptions import RedisError

from osiris_tasks.domain.ids import utc_iso
from osiris_tasks.errors import StoreError
from osiris_tasks.settings import DEFAULT_STORE_CLEANUP_OLDER_THAN_S as DEFAULT_CLEANUP_OLDER_THAN_S
from osiris_tasks.store.claims import (
    DEFAULT_SEEN_TTL_S,
    LOCK_PREFIX,
    Claim,
    RedisClaims,
    ids_text,
    one_run_id,
    release_lock,
)
from osiris_tasks.store.group_commit import GroupCommit, Pending
from osiris_tasks.store.maintenance import (
    ensure_indices,
    log_optimized,
    optimize_table,
    table_stats,
)
from osiris_tasks.store.maintenance_process import MaintenanceProcess
from osiris_tasks.store.maintenance_schedule import (
    DEFAULT_MAINTAIN_EVERY_COMMITS,
    MAINTAIN_LOCK_TTL_S,
    MaintenanceSchedule,
    maintenance_lock_name,
)
from osiris_tasks.store.retention import RETAINED_TABLES, cutoff_iso, expire_table
from osiris_tasks.store.schema import (
    ADVICE_SCHEMA,
    ADVICE_TABLE,
    COMPLETIONS_TABLE,
    FILLS_TABLE,
    KEY_PATTERN,
    RUNS_SCHEMA,
    RUNS_TABLE,
    TABLES,
    arrow_rows,
    check_key,
    check_table,
    in_filter,
)

if TYPE_CHECKING:
    import redis
    from lancedb.table import LanceTable

__all__ = [
    "ADVICE_SCHEMA",
    "ADVICE_TABLE",
    "KEY_PATTERN",
    "MAINTAIN_LOCK_TTL_S",
    "RUNS_SCHEMA",
    "RUNS_TABLE",
    "RunStore",
    "maintenance_lock_name",
]

log = logging.getLogger(__name__)
T = TypeVar("T")

# Longest a writer waits for a key another writer has claimed (and the TTL of the
# table-creation lock).
DEFAULT_LOCK_TIMEOUT_S = 60.0
# A key's claim expires this long after its writer last renewed it (every third of it).
DEFAULT_CLAIM_TTL_S = 5.0
# LanceDB's per-connection caches (index data; metadata of every table version read). The
# defaults (6 GiB + 1 GiB) let a long-lived worker grow ~110-130 MB per 1k runs (measured):
# every commit is a new version and read_consistency_interval=0 reads each one. The caps are
# estimates, not RSS (a worker grew ~5 MB per 1k runs at 16 MiB each), and Lance keeps
# entries of versions long cleaned up until a cap evicts them (lance-format/lance#1983), so
# the caps are small and the connection is dropped after each maintenance run (see
# `RunStore.maintain`). Measured, two A/B pairs of 10k runs: the worker's RSS ~20-30 MB lower,
# its growth after the first 1k runs not measurably smaller.
INDEX_CACHE_BYTES = 2 * 1024 * 1024
METADATA_CACHE_BYTES = 2 * 1024 * 1024
# Attempts per LanceDB operation before giving up with StoreError.
DEFAULT_MAX_ATTEMPTS = 6
# Backoff before retry n is BACKOFF_BASE_S * 2**(n-1), capped, times a jitter in [0.5, 1.5).
BACKOFF_BASE_S = 0.05
BACKOFF_MAX_S = 2.0
# Most rows in one commit (and one existence query); a bigger batch is written in chunks.
MAX_BATCH_ROWS = 500
# Wait before claiming again keys another writer holds: doubling from MIN to MAX.
CLAIM_POLL_MIN_S = 0.01
CLAIM_POLL_MAX_S = 0.2
# Scheduled maintenance runs in a process of the store's own (`maintenance_process.py`),
# replaced after this many runs and stopped after this long without one.
MAINTENANCE_PROCESS_RUNS = 10
MAINTENANCE_PROCESS_IDLE_S = 60.0
# A commit that took longer than this fraction of the cleanup window is checked afterwards (its
# rows may be missing from the latest version: lance-format/lance#3718, `RunStore._commit`).
# An unchecked commit can be lost only if another commit took the other 90 % (`maintenance.py`);
# checking every commit would add an indexed query to each.
VERIFY_FRACTION = 0.1
# recent_runs looks for the newest rows this far back first, then in the whole table.
RECENT_WINDOWS_S = (60.0, 3600.0)
# What lance raises for commit conflicts, creation races and I/O trouble: worth a retry.
_RETRYABLE = (OSError, RuntimeError, ValueError, pa.ArrowException)


def _backoff_s(attempt: int) -> float:
    """Sleep before retrying after failed attempt number `attempt` (1-based)."""
    return min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2 ** (attempt - 1)) * random.uniform(0.5, 1.5)


class RunStore:
    """Reads and idempotently writes the `advice` and `orchestrator_runs` tables at `uri`.

    Safe to share between threads, whose single-row writes are then committed together. After
    `fork()` call `reset_after_fork()` in the child. Pass `redis` whenever more than one process
    writes to `uri` (see the module docstring).
    """

    def __init__(
        self,
        uri: str,
        *,
        redis: redis.Redis | None = None,
        lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S,
        claim_ttl_s: float = DEFAULT_CLAIM_TTL_S,
        seen_ttl_s: float = DEFAULT_SEEN_TTL_S,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        maintain_every_commits: int = DEFAULT_MAINTAIN_EVERY_COMMITS,
        cleanup_older_than_s: float = DEFAULT_CLEANUP_OLDER_THAN_S,
        retention_s: float | None = None,
        archive_dir: str | None = None,
    ):
        self.uri = uri
        self._retention_s, self._archive_dir = retention_s, archive_dir
        self._redis = redis
        self._lock_timeout_s = lock_timeout_s
        self._claimer = (
            None
            if redis is None
            else RedisClaims(redis, uri=uri, claim_ttl_s=claim_ttl_s, seen_ttl_s=seen_ttl_s)
        )
        self._max_attempts = max(1, max_attempts)
        self._maintain_every_commits = max(0, maintain_every_commits)
        self._cleanup_older_than_s = cleanup_older_than_s
        self._verify_after_s = cleanup_older_than_s * VERIFY_FRACTION
        self.reset_after_fork()

    # -- writes ---------------------------------------------------------------------------

    def record_advice(self, row: Mapping[str, Any]) -> bool:
        """Append one risk decision; False (and no write) if its `advice_id` is already there."""
        return self._record_one(ADVICE_TABLE, row)

    def record_run(self, row: Mapping[str, Any], *, recheck: bool = False) -> bool:
        """Append one run; False (and no write) if its `run_id` is already there.

        `recheck` (a replay of a row whose earlier write may have landed long ago) looks the key
        up even where its seen mark says it was never written.
        """
        if recheck:
            return self._write(RUNS_TABLE, arrow_rows(RUNS_TABLE, [row]), recheck=True)[0]
        return self._record_one(RUNS_TABLE, row)

    def record_advice_many(self, rows: Iterable[Mapping[str, Any]]) -> list[bool]:
        """Append the risk decisions whose `advice_id` is absent; per row, whether it was."""
        return self._record_many(ADVICE_TABLE, list(rows))

    def record_runs(self, rows: Iterable[Mapping[str, Any]]) -> list[bool]:
        """Append the runs whose `run_id` is absent, in as few commits as `MAX_BATCH_ROWS`
        allows; per row, whether it was appended (a key repeated in `rows` is written once)."""
        return self._record_many(RUNS_TABLE, list(rows))

    def record_completions(self, rows: Iterable[Mapping[str, Any]]) -> list[bool]:
        """Append the completions whose `completion_key` is absent (the cache keeps a request's
        first answer); per row, whether it was appended."""
        return self._record_many(COMPLETIONS_TABLE, list(rows))

    def record_fills(self, rows: Iterable[Mapping[str, Any]]) -> list[bool]:
        """Append the paper book's fills whose `fill_id` is absent; per row, whether it was."""
        return self._record_many(FILLS_TABLE, list(rows))

    def fills(self, run_id: str | None = None) -> list[dict]:
        """The fills of the run `run_id` (every fill if None), oldest first."""
        ordered = [ColumnOrdering(column_name="timestamp", ascending=True)]
        if run_id is None:
            return self._query(FILLS_TABLE, None, lambda q: q.order_by(ordered))
        where = f"run_id = '{check_key(run_id, 'run_id')}'"
        return self._query(FILLS_TABLE, run_id, lambda q: q.where(where).order_by(ordered))

    def _record_one(self, table: str, row: Mapping[str, Any]) -> bool:
        data = arrow_rows(table, [row])
        key, run_id = data[TABLES[table].key][0].as_py(), data["run_id"][0].as_py()
        return self._committers[table].submit(Pending(key, run_id, data))

    def _record_many(self, table: str, rows: list[Mapping[str, Any]]) -> list[bool]:
        written: list[bool] = []
        for start in range(0, len(rows), MAX_BATCH_ROWS):
            data = arrow_rows(table, rows[start : start + MAX_BATCH_ROWS])
            written += self._write(table, data)
        return written

    def _write_pending(self, table: str, batch: list[Pending]) -> list[bool]:
        """A group commit's write: the queued rows in one batch."""
        return self._write(table, pa.concat_tables([pending.data for pending in batch]))

    def _write(self, table: str, data: pa.Table, *, recheck: bool = False) -> list[bool]:
        """Append the rows of `data` whose key is absent, claiming keys as they come free;
        `recheck` looks every key up, even one its seen mark says was never written."""
        keys, run_ids = data[TABLES[table].key].to_pylist(), data["run_id"].to_pylist()
        first: dict[str, int] = {}
        for index, key in enumerate(keys):
            first.setdefault(key, index)
        written = [False] * len(keys)
        waiting, poll_s = list(first), CLAIM_POLL_MIN_S
        deadline = time.monotonic() + self._lock_timeout_s
        while waiting:
            with self._claims(table, waiting, run_ids) as claim:
                if claim.held:
                    rows = data.take([first[key] for key in claim.held])
                    fresh = frozenset() if recheck else claim.fresh
                    append = partial(self._append_absent, table, rows, fresh, set())
                    for key in self._retry(table, one_run_id(run_ids), append):
                        written[first[key]] = True
            claimed = set(claim.held)
            waiting = [key for key in waiting if key not in claimed]
            if waiting:
                if time.monotonic() > deadline:
                    raise StoreError(
                        f"{len(waiting)} key(s) of {table} still claimed by another "
                        f"writer after {self._lock_timeout_s}s",
                        run_id=one_run_id(run_ids),
                    )
                time.sleep(poll_s * random.uniform(0.5, 1.5))
                poll_s = min(CLAIM_POLL_MAX_S, poll_s * 2)
        log.debug("%s: %s of %s row(s) new %s", table, sum(written), len(keys), ids_text(run_ids))
        return written

    def _append_absent(
        self, table: str, rows: pa.Table, fresh: frozenset[str], tried: set[str]
    ) -> list[str]:
        """Append the rows whose key is not in `table` yet, in one commit; their keys.

        The caller holds every key's claim, so no other writer can add one in between. Keys in
        `fresh` were never written (`claims.py`) and are not looked up, on a first attempt
        only: an attempt that raised may still have committed (the error came after lance's
        commit), so `tried` collects the keys each attempt appended, a retry looks every key
        up, and a key it finds that an earlier attempt appended is this write's too.
        """
        keys = rows[TABLES[table].key].to_pylist()
        handle = self._table(table)
        present = _present(handle, table, [key for key in keys if tried or key not in fresh])
        landed = [key for key in keys if key in present and key in tried]
        absent = [index for index, key in enumerate(keys) if key not in present]
        tried.update(keys[index] for index in absent)
        if absent:
            self._commit(table, handle, rows.take(absent))
        return [keys[index] for index in absent] + landed

    def _commit(self, table: str, handle: LanceTable, rows: pa.Table) -> None:
        """Append `rows` in one commit; after a slow one, append again the rows the latest
        version lacks (lance-format/lance#3718), until none is missing.

        A commit that took longer than `VERIFY_FRACTION` of the cleanup window may have
        written its manifest into a version number cleanup had just freed, below the latest
        version, where no reader looks: `add()` returns normally and the rows are gone. A
        faster commit can land there only if another commit to the table took the rest of the
        window (`maintenance.py` has the reasoning). The handle reads the latest version
        (`read_consistency_interval=0`), and the caller holds the keys' claims, so no other
        writer adds them meanwhile and none is written twice.
        """
        key_column = TABLES[table].key
        for _ in range(self._max_attempts):
            started = time.monotonic()
            handle.add(rows)
            took_s = time.monotonic() - started
            self._schedule.count_commit(table)
            if took_s <= self._verify_after_s:
                return
            keys = rows[key_column].to_pylist()
            present = _present(handle, table, keys)
            rows = rows.filter(pa.array([key not in present for key in keys], pa.bool_()))
            if rows.num_rows == 0:
                return
            log.warning(
                "%s: %s row(s) of a commit that took %.1f s are missing from the latest version "
                "(lance-format/lance#3718), appending them again %s",
                table,
                rows.num_rows,
                took_s,
                ids_text(rows["run_id"].to_pylist()),
            )
        raise StoreError(
            f"{table}: {rows.num_rows} row(s) still missing from the latest version after "
            f"{self._max_attempts} slow commits (lance-format/lance#3718)",
            run_id=one_run_id(rows["run_id"].to_pylist()),
        )

    # -- reads ----------------------------------------------------------------------------

    def get_run(self, run_id: str) -> dict | None:
        """The run's row, or None if it was never recorded."""
        where = f"run_id = '{check_key(run_id, 'run_id')}'"
        rows = self._query(RUNS_TABLE, run_id, lambda q: q.where(where).limit(1))
        return rows[0] if rows else None

    def get_completion(self, key: str) -> dict | None:
        """The cached completion under `key`, or None."""
        where = f"completion_key = '{check_key(key, 'completion_key')}'"
        rows = self._query(COMPLETIONS_TABLE, None, lambda q: q.where(where).limit(1))
        return rows[0] if rows else None

    def completion_columns(self, columns: list[str], limit: int) -> pa.Table:
        """`columns` of at most `limit` cached completions, in storage order (a cache's
        in-memory copy is loaded from this)."""
        return self._retry(
            COMPLETIONS_TABLE,
            None,
            lambda: self._table(COMPLETIONS_TABLE).search().select(columns).limit(limit).to_arrow(),
        )

    def get_advice(self, run_id: str) -> list[dict]:
        """Every risk decision recorded for the run, oldest first."""
        where = f"run_id = '{check_key(run_id, 'run_id')}'"
        oldest_first = [ColumnOrdering(column_name="timestamp", ascending=True)]
        return self._query(ADVICE_TABLE, run_id, lambda q: q.where(where).order_by(oldest_first))

    def recent_runs(self, limit: int = 20) -> list[dict]:
        """The `limit` most recently recorded runs, newest first by `timestamp`.

        Two steps, so whole rows are read only for the runs returned: the newest `run_id`s
        (from `run_id` and `timestamp` alone, looking `RECENT_WINDOWS_S` back first, where the
        timestamp index narrows the scan, then in the whole table), then those rows.
        """
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise StoreError(f"limit must be a non-negative int, not {limit!r}")
        if limit == 0:
            return []
        newest = self._retry(RUNS_TABLE, None, lambda: self._newest_run_ids(limit))
        if not newest:
            return []
        rows = self._query(
            RUNS_TABLE, None, lambda q: q.where(in_filter("run_id", newest)).limit(len(newest))
        )
        rank = {run_id: index for index, run_id in enumerate(newest)}
        return sorted(rows, key=lambda row: rank[row["run_id"]])

    def _newest_run_ids(self, limit: int) -> list[str]:
        newest_first = [ColumnOrdering(column_name="timestamp", ascending=False)]
        handle = self._table(RUNS_TABLE)
        for window_s in (*RECENT_WINDOWS_S, None):
            query = handle.search().select(["run_id", "timestamp"])
            if window_s is not None:
                query = query.where(f"timestamp >= '{utc_iso(time.time() - window_s)}'")
            top = query.order_by(newest_first).limit(limit).to_arrow()
            # Enough rows in the window: no older row can be among the newest `limit`.
            if top.num_rows >= limit or window_s is None:
                return top["run_id"].to_pylist()
        raise AssertionError("unreachable: the last window is the whole table")

    def count(self, table: str) -> int:
        """Number of rows in `table` (one of `TABLES`)."""
        check_table(table)
        return self._retry(table, None, lambda: self._table(table).count_rows())

    def iter_runs(self, batch_size: int = 1000) -> Iterator[dict]:
        """Every run, in storage order, read `batch_size` rows at a time from one version."""
        reader = self._retry(
            RUNS_TABLE, None, lambda: self._table(RUNS_TABLE).search().to_batches(batch_size)
        )
        try:
            for batch in reader:
                yield from batch.to_pylist()
        except _RETRYABLE as exc:
            raise StoreError(f"reading {RUNS_TABLE} failed: {exc}") from exc

    def _query(self, table: str, run_id: str | None, shape: Callable[[Any], Any]) -> list[dict]:
        """Rows of `table` from a query that `shape` narrows, as plain dicts."""
        return self._retry(table, run_id, lambda: shape(self._table(table).search()).to_list())

    # -- maintenance ----------------------------------------------------------------------

    def maintain(
        self, table: str | None = None, *, in_process: bool = True
    ) -> list[dict[str, Any]]:
        """Compact, clean up and index `table` (default: both); what was done, per table.
        With `in_process=False`, the store's maintenance process does the work.

        A table another process (or thread) is maintaining right now is skipped, not waited
        for. Safe while other processes append (see `maintenance.py`).
        """
        names = list(TABLES) if table is None else [table]
        optimize = self._optimize_here if in_process else self._optimize_there
        done = []
        for name in names:
            check_table(name)
            with self._maintenance_lock(name) as held:
                if not held:
                    log.info("%s: maintenance already running elsewhere, skipped", name)
                    continue
                done.append(self._retry(name, None, partial(optimize, name)))
                log_optimized(done[-1], "here" if in_process else "in the maintenance process")
        self._drop_connection()  # its caches hold entries of the versions just cleaned up
        return done

    def _optimize_here(self, name: str) -> dict[str, Any]:
        return optimize_table(
            self._table(name),
            cleanup_older_than_s=self._cleanup_older_than_s,
            index_columns=TABLES[name].indexed,
            **self._expiry(name),
        )

    def _optimize_there(self, name: str) -> dict[str, Any]:
        """`_optimize_here` in the maintenance process; a RuntimeError (retried) if it died."""
        self._table(name)  # created here, under the creation lock, if it is not yet
        return self._maintenance_process.call(
            _optimize_at, self.uri, name, self._cleanup_older_than_s, self._expiry(name)
        )

    def _expiry(self, name: str) -> dict[str, Any]:
        """The retention arguments of a maintenance pass over `name` (none: keep every row)."""
        if self._retention_s is None or name not in RETAINED_TABLES:
            return {}
        return {"expire_before": cutoff_iso(self._retention_s), "archive_dir": self._archive_dir}

    def expire(self, older_than_s: float, *, archive_dir: str | None = None) -> list[dict]:
        """Expire (archive to Parquet first, with `archive_dir`) the rows of the retained tables
        recorded more than `older_than_s` ago, under each table's maintenance lock
        (`retention.py`); what was done, per table."""
        before, done = cutoff_iso(older_than_s), []
        for name in RETAINED_TABLES:
            with self._maintenance_lock(name) as held:
                if not held:
                    log.info("%s: maintenance running elsewhere, not expired now", name)
                    continue
                done.append(
                    self._retry(
                        name,
                        None,
                        lambda n=name: expire_table(
                            self._table(n), before=before, archive_dir=archive_dir
                        ),
                    )
                )
        self._drop_connection()
        return done

    def stats(self, table: str) -> dict[str, Any]:
        """Rows, fragments, versions, indices and data bytes of `table`'s latest version."""
        check_table(table)
        return self._retry(table, None, lambda: table_stats(self._table(table)))

    def _maintain_logged(self, table: str) -> None:
        try:
            self.maintain(table, in_process=False)
        except StoreError as exc:  # the next scheduled run tries again
            log.warning("%s: maintenance failed: %s", table, exc)

    # -- lifecycle ------------------------------------------------------------------------

    def close(self) -> None:
        """Wait for the maintenance runs this store started, then drop the cached connection
        and table handles; a later call reopens them."""
        self._schedule.join()
        self._maintenance_process.close()
        self._drop_connection()

    def _drop_connection(self) -> None:
        """Forget the connection and table handles (and with them LanceDB's caches); the next
        call opens new ones. Threads using a handle now keep it until they are done."""
        with self._cache_lock:
            self._tables.clear()
            self._db = None

    def reset_after_fork(self) -> None:
        """Forget handles and locks inherited from the parent (Celery `worker_process_init`)."""
        # New locks, not acquire-and-clear: a parent thread may have held them at fork time.
        self._cache_lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._db: lancedb.DBConnection | None = None
        self._tables: dict[str, LanceTable] = {}
        self._committers = {
            name: GroupCommit(lambda batch, n=name: self._write_pending(n, batch), MAX_BATCH_ROWS)
            for name in TABLES
        }
        self._schedule = MaintenanceSchedule(
            self._maintain_logged,
            redis=self._redis,
            uri=self.uri,
            every_commits=self._maintain_every_commits,
        )
        # Not the parent's, if forked: its pipes are the parent's.
        self._maintenance_process = MaintenanceProcess(
            max_calls=MAINTENANCE_PROCESS_RUNS, idle_s=MAINTENANCE_PROCESS_IDLE_S
        )

    # -- plumbing -------------------------------------------------------------------------

    def _table(self, name: str) -> LanceTable:
        """The cached handle of table `name`, opened (or created) on first use."""
        with self._cache_lock:
            if name not in self._tables:
                if self._db is None:
                    self._db = _connect(self.uri)
                with self._create_lock(name):
                    spec = TABLES[name]
                    handle = _open_or_create(self._db, name, spec.schema)
                    ensure_indices(handle, spec.indexed)
                    if self._claimer is not None and handle.count_rows() == 0:
                        self._claimer.table_empty(name)
                    self._tables[name] = handle
            return self._tables[name]

    def _forget(self, name: str) -> None:
        with self._cache_lock:
            self._tables.pop(name, None)

    def _retry(self, table: str, run_id: str | None, op: Callable[[], T]) -> T:
        """`op()`, retried on LanceDB errors with backoff; StoreError once attempts run out."""
        for attempt in range(1, self._max_attempts):
            try:
                return op()
            except _RETRYABLE as exc:
                log.warning(
                    "%s attempt %s/%s failed, retrying run_id=%s: %s",
                    table,
                    attempt,
                    self._max_attempts,
                    run_id,
                    exc,
                )
                self._forget(table)
                time.sleep(_backoff_s(attempt))
        try:
            return op()
        except _RETRYABLE as exc:
            raise StoreError(
                f"{table} at {self.uri}: gave up after {self._max_attempts} attempts: {exc}",
                run_id=run_id,
            ) from exc

    @contextlib.contextmanager
    def _claims(self, table: str, keys: list[str], run_ids: list[str]) -> Iterator[Claim]:
        """Claim `keys` of `table`: across processes with redis (`claims.py`); without it, all
        of them, under this store's write lock, none known fresh."""
        if self._claimer is None:
            with self._write_lock:
                yield Claim(keys, frozenset())
            return
        with self._claimer.claim(table, keys, run_ids) as claim:
            yield claim

    def _maintenance_lock(self, table: str) -> contextlib.AbstractContextManager[bool]:
        """Yields whether this process may maintain `table` now (never waits for it)."""
        return self._schedule.lock(table)

    def _create_lock(self, table: str) -> contextlib.AbstractContextManager:
        """Serializes table creation across processes (the cache lock does it within one)."""
        if self._redis is None:
            return contextlib.nullcontext()
        return self._redis_lock(f"create:{table}", None)

    @contextlib.contextmanager
    def _redis_lock(self, name: str, run_id: str | None) -> Iterator[None]:
        lock = self._redis.lock(
            f"{LOCK_PREFIX}:{name}",
            timeout=self._lock_timeout_s,
            blocking_timeout=self._lock_timeout_s,
        )
        self._acquire(lock, run_id)
        try:
            yield
        finally:
            release_lock(lock, run_id)

    def _acquire(self, lock: Any, run_id: str | None) -> None:
        try:
            acquired = lock.acquire()
        except RedisError as exc:
            raise StoreError(f"cannot take lock {lock.name}: {exc}", run_id=run_id) from exc
        if not acquired:
            raise StoreError(
                f"lock {lock.name} still held after {self._lock_timeout_s}s", run_id=run_id
            )


def _present(handle: LanceTable, table: str, keys: list[str]) -> set[str]:
    """Which of `keys` the latest version of `table` holds (one indexed `IN` query)."""
    if not keys:
        return set()
    key_column = TABLES[table].key
    found = (
        handle.search()
        .where(in_filter(key_column, keys))
        .select([key_column])
        .limit(len(keys))
        .to_arrow()
    )
    return set(found[key_column].to_pylist())


def _connect(uri: str) -> lancedb.DBConnection:
    return lancedb.connect(
        uri,
        read_consistency_interval=timedelta(0),
        session=lancedb.Session(
            index_cache_size_bytes=INDEX_CACHE_BYTES, metadata_cache_size_bytes=METADATA_CACHE_BYTES
        ),
    )


def _open_or_create(db: lancedb.DBConnection, name: str, schema: pa.Schema) -> LanceTable:
    """Table `name`, created with `schema` if absent; the columns of `schema` it lacks (a table
    written by an older version) are added, null in its old rows. Called under the creation
    lock."""
    try:
        return db.create_table(name, schema=schema, exist_ok=True)
    except ValueError as exc:  # "Provided schema does not match existing table schema"
        if "schema" not in str(exc).lower():
            raise
    handle = db.open_table(name)
    missing = [field for field in schema if field.name not in handle.schema.names]
    if missing:
        handle.add_columns(missing)
        log.info("%s: added column(s) %s", name, ", ".join(field.name for field in missing))
    return handle


def _optimize_at(
    uri: str, name: str, cleanup_older_than_s: float, expiry: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Maintain table `name` of the store at `uri` (run in the maintenance process)."""
    return optimize_table(
        _connect(uri).open_table(name),
        cleanup_older_than_s=cleanup_older_than_s,
        index_columns=TABLES[name].indexed,
        **(expiry or {}),
    )
