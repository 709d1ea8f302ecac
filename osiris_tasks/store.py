"""The LanceDB audit trail: one row per run, one row per risk decision.

`RunStore` is the only module that talks to LanceDB; lancedb, pyarrow, OS and Redis errors
become `StoreError` here, once.

Guarantees, and what they rest on:

* **Idempotent writes.** `record_run` / `record_advice` append a row only if its key
  (`run_id` / `advice_id`) is absent, checked and appended under a per-key lock. LanceDB's own
  `merge_insert` is not idempotent across concurrent writers, hence the lock. With a `redis`
  client the lock is redis-py's `Lock`, which holds across processes and hosts; without one a
  `threading.Lock` per store holds within one process only, so **several writer processes
  need `redis`**.
* **Table creation is serialized** under the same kind of lock: lance turns a losing
  concurrent `create_table` into an overwrite, which can silently erase a row another process
  has just appended.
* **Commit conflicts are retried here.** Concurrent appends to one table occasionally fail
  after lance's own retries; every LanceDB call is retried up to `max_attempts` times with
  jittered exponential backoff, reopening the table in between.
* **Reads see other processes' writes**: the connection checks for a newer table version on
  every read (`read_consistency_interval=0`).

Tables are created on first use, by reads as well as writes. Keys are validated against
`KEY_PATTERN` before they go into a filter, so no filter injection is possible.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeVar

import lancedb
import pyarrow as pa
from lancedb.query import ColumnOrdering
from redis.exceptions import LockNotOwnedError, RedisError

from .errors import StoreError
from .ids import utc_iso

if TYPE_CHECKING:
    import redis
    from lancedb.table import LanceTable

__all__ = [
    "ADVICE_SCHEMA",
    "ADVICE_TABLE",
    "KEY_PATTERN",
    "RUNS_SCHEMA",
    "RUNS_TABLE",
    "RunStore",
]

log = logging.getLogger(__name__)
T = TypeVar("T")

ADVICE_TABLE = "advice"
RUNS_TABLE = "orchestrator_runs"
# Allowed run_id / advice_id: no quote, space or backslash can reach a filter expression.
KEY_PATTERN = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
# Longest a writer may hold a key's lock, and longest another writer waits for it.
DEFAULT_LOCK_TIMEOUT_S = 60.0
# Attempts per LanceDB operation before giving up with StoreError.
DEFAULT_MAX_ATTEMPTS = 6
# Backoff before retry n is BACKOFF_BASE_S * 2**(n-1), capped, times a jitter in [0.5, 1.5).
BACKOFF_BASE_S = 0.05
BACKOFF_MAX_S = 2.0
LOCK_PREFIX = "osiris:lock"
# What lance raises for commit conflicts, creation races and I/O trouble: worth a retry.
_RETRYABLE = (OSError, RuntimeError, ValueError, pa.ArrowException)


def _strings(*names: str) -> list[pa.Field]:
    return [pa.field(name, pa.string()) for name in names]


def _floats(*names: str) -> list[pa.Field]:
    return [pa.field(name, pa.float64()) for name in names]


def _key(name: str) -> pa.Field:
    return pa.field(name, pa.string(), nullable=False)


ADVICE_SCHEMA = pa.schema(
    [_key("advice_id"), _key("run_id"), *_strings("timestamp", "proposal"),
     pa.field("accepted", pa.bool_()), *_strings("reason", "rule"),
     *_floats("nav_before_trade", "daily_pnl_before_trade")]
)
RUNS_SCHEMA = pa.schema(
    [_key("run_id"), *_strings("timestamp", "created_at", "status", "symbols", "side"),
     *_floats("quantity"), *_strings("verdict", "rule"), *_floats("score"),
     *_strings("transaction_id", "input_query", "final_output", "error_message", "prompt",
               "raw_completion", "proposal", "risk_verdict", "assessment", "timings_ms",
               "events")]
)
# table name -> (schema, the column that makes a row unique)
_TABLES: Mapping[str, tuple[pa.Schema, str]] = {
    ADVICE_TABLE: (ADVICE_SCHEMA, "advice_id"),
    RUNS_TABLE: (RUNS_SCHEMA, "run_id"),
}


def _check_key(value: Any, column: str) -> str:
    """`value` if it is a safe key for `column`, else StoreError."""
    if isinstance(value, str) and KEY_PATTERN.fullmatch(value):
        return value
    raise StoreError(f"{column} {value!r} does not match {KEY_PATTERN.pattern}")


def _check_table(name: str) -> None:
    if name not in _TABLES:
        raise StoreError(f"unknown table {name!r}; expected one of {sorted(_TABLES)}")


def _cell(field: pa.Field, value: Any) -> Any:
    """`value` as stored: NaN and infinities in a float column become null."""
    if pa.types.is_floating(field.type) and isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _arrow_row(table: str, row: Mapping[str, Any]) -> pa.Table:
    """One validated row of `table` as a pyarrow table; `timestamp` defaults to now."""
    schema, key_column = _TABLES[table]
    run_id = row.get("run_id")
    unknown = sorted(set(row) - set(schema.names))
    if unknown:
        raise StoreError(f"unknown column(s) {unknown} for table {table}", run_id=run_id)
    for column in dict.fromkeys((key_column, "run_id")):
        _check_key(row.get(column), column)
    values = {"timestamp": utc_iso(), **{k: v for k, v in row.items() if v is not None}}
    cells = {field.name: _cell(field, values.get(field.name)) for field in schema}
    try:
        return pa.Table.from_pylist([cells], schema=schema)
    except (pa.ArrowException, TypeError, ValueError) as exc:
        raise StoreError(f"row does not fit table {table}: {exc}", run_id=run_id) from exc


def _backoff_s(attempt: int) -> float:
    """Sleep before retrying after failed attempt number `attempt` (1-based)."""
    return min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2 ** (attempt - 1)) * random.uniform(0.5, 1.5)


class RunStore:
    """Reads and idempotently writes the `advice` and `orchestrator_runs` tables at `uri`.

    Safe to share between threads. After `fork()` call `reset_after_fork()` in the child.
    Pass `redis` whenever more than one process writes to `uri` (see the module docstring).
    """

    def __init__(
        self,
        uri: str,
        *,
        redis: redis.Redis | None = None,
        lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    ):
        self.uri = uri
        self._redis = redis
        self._lock_timeout_s = lock_timeout_s
        self._max_attempts = max(1, max_attempts)
        self.reset_after_fork()

    # -- writes ---------------------------------------------------------------------------

    def record_advice(self, row: Mapping[str, Any]) -> bool:
        """Append one risk decision; False (and no write) if its `advice_id` is already there."""
        return self._record(ADVICE_TABLE, row)

    def record_run(self, row: Mapping[str, Any]) -> bool:
        """Append one run; False (and no write) if its `run_id` is already there."""
        return self._record(RUNS_TABLE, row)

    def _record(self, table: str, row: Mapping[str, Any]) -> bool:
        data = _arrow_row(table, row)
        key_column = _TABLES[table][1]
        key, run_id = row[key_column], row["run_id"]
        with self._key_lock(f"{table}:{key}", run_id):
            written = self._retry(table, run_id, lambda: self._append_absent(table, key, data))
        log.debug("%s %s=%s %s run_id=%s", table, key_column, key,
                  "written" if written else "already present", run_id)
        return written

    def _append_absent(self, table: str, key: str, data: pa.Table) -> bool:
        """Append `data` unless a row with `key` exists; the caller holds the key's lock."""
        handle = self._table(table)
        if handle.count_rows(f"{_TABLES[table][1]} = '{key}'"):
            return False
        handle.add(data)
        return True

    # -- reads ----------------------------------------------------------------------------

    def get_run(self, run_id: str) -> dict | None:
        """The run's row, or None if it was never recorded."""
        where = f"run_id = '{_check_key(run_id, 'run_id')}'"
        rows = self._query(RUNS_TABLE, run_id, lambda q: q.where(where).limit(1))
        return rows[0] if rows else None

    def get_advice(self, run_id: str) -> list[dict]:
        """Every risk decision recorded for the run, oldest first."""
        where = f"run_id = '{_check_key(run_id, 'run_id')}'"
        oldest_first = [ColumnOrdering(column_name="timestamp", ascending=True)]
        return self._query(ADVICE_TABLE, run_id, lambda q: q.where(where).order_by(oldest_first))

    def recent_runs(self, limit: int = 20) -> list[dict]:
        """The `limit` most recently recorded runs, newest first by `timestamp`."""
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise StoreError(f"limit must be a non-negative int, not {limit!r}")
        if limit == 0:
            return []
        newest_first = [ColumnOrdering(column_name="timestamp", ascending=False)]
        return self._query(RUNS_TABLE, None, lambda q: q.order_by(newest_first).limit(limit))

    def count(self, table: str) -> int:
        """Number of rows in `table` (ADVICE_TABLE or RUNS_TABLE)."""
        _check_table(table)
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

    # -- lifecycle ------------------------------------------------------------------------

    def close(self) -> None:
        """Drop the cached connection and table handles; a later call reopens them."""
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

    # -- plumbing -------------------------------------------------------------------------

    def _table(self, name: str) -> LanceTable:
        """The cached handle of table `name`, opened (or created) on first use."""
        with self._cache_lock:
            if name not in self._tables:
                if self._db is None:
                    self._db = lancedb.connect(self.uri, read_consistency_interval=timedelta(0))
                with self._create_lock(name):
                    schema = _TABLES[name][0]
                    self._tables[name] = self._db.create_table(name, schema=schema, exist_ok=True)
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
                log.warning("%s attempt %s/%s failed, retrying run_id=%s: %s",
                            table, attempt, self._max_attempts, run_id, exc)
                self._forget(table)
                time.sleep(_backoff_s(attempt))
        try:
            return op()
        except _RETRYABLE as exc:
            raise StoreError(
                f"{table} at {self.uri}: gave up after {self._max_attempts} attempts: {exc}",
                run_id=run_id,
            ) from exc

    def _key_lock(self, name: str, run_id: str) -> contextlib.AbstractContextManager:
        """Exclusive hold on one key: across processes with redis, else within this process."""
        if self._redis is None:
            return self._write_lock
        return self._redis_lock(name, run_id)

    def _create_lock(self, table: str) -> contextlib.AbstractContextManager:
        """Serializes table creation across processes (the cache lock does it within one)."""
        if self._redis is None:
            return contextlib.nullcontext()
        return self._redis_lock(f"create:{table}", None)

    @contextlib.contextmanager
    def _redis_lock(self, name: str, run_id: str | None) -> Iterator[None]:
        lock = self._redis.lock(f"{LOCK_PREFIX}:{name}", timeout=self._lock_timeout_s,
                                blocking_timeout=self._lock_timeout_s)
        self._acquire(lock, run_id)
        try:
            yield
        finally:
            _release(lock, run_id)

    def _acquire(self, lock: Any, run_id: str | None) -> None:
        try:
            acquired = lock.acquire()
        except RedisError as exc:
            raise StoreError(f"cannot take lock {lock.name}: {exc}", run_id=run_id) from exc
        if not acquired:
            raise StoreError(
                f"lock {lock.name} still held after {self._lock_timeout_s}s", run_id=run_id
            )


def _release(lock: Any, run_id: str | None) -> None:
    """Release `lock`; by now the write is done, so a failure is logged, not raised."""
    try:
        lock.release()
    except LockNotOwnedError:
        log.warning("lock %s expired before the write finished; raise lock_timeout_s run_id=%s",
                    lock.name, run_id)
    except RedisError as exc:
        log.warning("could not release lock %s (it expires on its own) run_id=%s: %s",
                    lock.name, run_id, exc)
