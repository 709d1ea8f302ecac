"""When a store's tables are maintained, and by one process at a time.

Every append makes a fragment and a version; every `maintain_every_commits` commits to a table
(counted in Redis across processes), the store runs `maintain()` on a background thread:
compaction, cleanup of old versions, index update (`maintenance.py`), in a maintenance process
of the store's own (`maintenance_process.py`). `MaintenanceSchedule` counts the commits, starts
those threads (one per table) and holds the maintenance lock: a non-blocking lock, so a table
another process (or thread) is maintaining is skipped, not waited for. With Redis the lock
holds across processes, and it lapses `MAINTAIN_LOCK_TTL_S` after its holder stops renewing it.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from redis.exceptions import LockError, RedisError

from osiris_tasks.errors import StoreError
from osiris_tasks.keys import STORE_COMMITS_PREFIX as COMMITS_PREFIX
from osiris_tasks.settings import (
    DEFAULT_STORE_MAINTAIN_EVERY_COMMITS as DEFAULT_MAINTAIN_EVERY_COMMITS,
)
from osiris_tasks.store.claims import LOCK_PREFIX, release_lock, renewing, store_namespace
from osiris_tasks.store.schema import TABLES

if TYPE_CHECKING:
    import redis

__all__ = [
    "DEFAULT_MAINTAIN_EVERY_COMMITS",
    "MAINTAIN_LOCK_TTL_S",
    "MaintenanceSchedule",
    "maintenance_lock_name",
]

log = logging.getLogger(__name__)

# A maintenance lock lives this long unless renewed (every third of it while maintenance
# runs): a process killed mid-maintenance blocks its table's maintenance this long, not for
# as long as the slowest compaction may take (it was 900 s: 4500 fragments piled up behind the
# lock of a worker stopped mid-run).
MAINTAIN_LOCK_TTL_S = 30.0


class MaintenanceSchedule:
    """Counts a store's commits per table, starts `maintain(table)` on a thread every
    `every_commits`th, and holds the lock that lets one process maintain a table at a time."""

    def __init__(
        self,
        maintain: Callable[[str], None],
        *,
        redis: redis.Redis | None,
        uri: str,
        every_commits: int,
    ):
        self._maintain = maintain
        self._redis = redis
        self._uri = uri
        self._every_commits = every_commits
        self._lock = threading.Lock()  # guards _threads
        self._commits = {name: itertools.count(1) for name in TABLES}
        self._maintaining = {name: threading.Lock() for name in TABLES}
        self._threads: dict[str, threading.Thread] = {}  # by table

    def count_commit(self, table: str) -> None:
        """Count a commit to `table` (in Redis, across processes, when the store has it); every
        `every_commits`th starts `maintain(table)`."""
        if not self._every_commits:
            return
        try:
            if self._redis is not None:
                count = self._redis.incr(f"{COMMITS_PREFIX}:{table}")
            else:
                count = next(self._commits[table])
        except RedisError as exc:  # only maintenance is late: never fail the write for it
            log.warning("%s: cannot count commits for maintenance: %s", table, exc)
            return
        if count % self._every_commits == 0:
            self._start(table)

    def _start(self, table: str) -> None:
        """Start `maintain(table)` on a thread, unless that table's is still running. One thread
        per table: the two tables' commit counters move in step (an advice row and a run row
        per run), so with one thread for both, the runs table's turn came while the advice
        table's maintenance still ran, and was dropped: measured, `orchestrator_runs` went
        uncompacted for thousands of commits (6000 fragments after 6000 single-thread runs;
        2000-2800 with 16 threads), with the worker's memory and write latency growing."""
        with self._lock:
            running = self._threads.get(table)
            if running is not None and running.is_alive():
                return
            thread = self._threads[table] = threading.Thread(
                target=self._maintain,
                args=(table,),
                name=f"osiris-maintain-{table}",
                daemon=True,
            )
            thread.start()

    def join(self) -> None:
        """Wait for the maintenance runs this schedule started (except the calling thread)."""
        for maintainer in list(self._threads.values()):
            if maintainer is not threading.current_thread():
                maintainer.join()

    @contextlib.contextmanager
    def lock(self, table: str) -> Iterator[bool]:
        """Yields whether this process may maintain `table` now (never waits for it)."""
        local = self._maintaining[table]
        if not local.acquire(blocking=False):
            yield False
            return
        try:
            if self._redis is None:
                yield True
                return
            # Not thread-local: a renewer thread extends it (`_renewed`).
            lock = self._redis.lock(
                maintenance_lock_name(self._uri, table),
                timeout=MAINTAIN_LOCK_TTL_S,
                blocking=False,
                thread_local=False,
            )
            try:
                held = lock.acquire()
            except RedisError as exc:
                raise StoreError(f"cannot take lock {lock.name}: {exc}") from exc
            if not held:
                yield False
                return
            try:
                with _renewed(lock):
                    yield True
            finally:
                release_lock(lock, None)
        finally:
            local.release()


def maintenance_lock_name(uri: str, table: str) -> str:
    """The Redis lock one process holds while it maintains `table` of the store at `uri`."""
    return f"{LOCK_PREFIX}:maintain:{store_namespace(uri)}:{table}"


def _renewed(lock: Any) -> contextlib.AbstractContextManager:
    """Keep `lock` alive (back to its full timeout every third of it) until the block ends."""

    def renew() -> None:
        try:
            lock.reacquire()
        except (RedisError, LockError) as exc:
            log.warning("could not renew lock %s: %s", lock.name, exc)

    return renewing(lock.timeout / 3, renew, "osiris-lock-renewer")
