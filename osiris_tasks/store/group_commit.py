"""Group commit: single-row writes of threads sharing a store, committed together.

`RunStore.record_run` / `record_advice` (one row) hand the row to a per-table `GroupCommit`: the
first waiting thread writes every row queued so far in one commit, the others wait for it.
Threads sharing a store (a `--pool threads` worker) thus batch their writes with no added
latency, and a call still returns only once its row is committed (or raises). A batch whose
write fails fails every row in it: each caller gets the error as a StoreError carrying its own
`run_id` (a bug's exception surfaces as itself).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import pyarrow as pa

from osiris_tasks.errors import StoreError

__all__ = ["GroupCommit", "Pending"]


@dataclass
class Pending:
    """One row handed to a group commit, and what became of it."""

    key: str
    run_id: str
    data: pa.Table
    done: bool = False
    written: bool = False
    error: BaseException | None = field(default=None, repr=False)


class GroupCommit:
    """Writes the rows of concurrent callers together: the first caller that finds no write in
    progress writes everything queued (up to `max_rows`); the others wait for their row's fate."""

    def __init__(self, write: Callable[[list[Pending]], list[bool]], max_rows: int):
        self._write = write
        self._max_rows = max_rows
        self._cond = threading.Condition()
        self._queue: list[Pending] = []
        self._busy = False

    def submit(self, pending: Pending) -> bool:
        """True if `pending`'s row was appended, False if its key was there; raises its error."""
        with self._cond:
            self._queue.append(pending)
            while not pending.done:
                if self._busy:
                    self._cond.wait()
                else:
                    self._lead()
        if pending.error is not None:
            raise pending.error
        return pending.written

    def _lead(self) -> None:
        """Write the queue's head with the condition's lock released; called holding it."""
        batch = self._queue[: self._max_rows]
        del self._queue[: self._max_rows]
        self._busy = True
        self._cond.release()
        try:
            written, error = self._write(batch), None
        except BaseException as exc:  # every caller of the batch gets it, with its own run_id
            written, error = [False] * len(batch), exc
        finally:
            self._cond.acquire()
        for pending, was_written in zip(batch, written, strict=True):
            pending.written, pending.done = was_written, True
            pending.error = None if error is None else _error_for(error, pending.run_id)
        self._busy = False
        self._cond.notify_all()
        if error is not None and not isinstance(error, Exception):
            raise error  # SystemExit and the like stop this thread; the others got a StoreError


def _error_for(error: BaseException, run_id: str) -> Exception:
    """`error` as the caller writing `run_id` should see it: a StoreError with its run_id."""
    if isinstance(error, StoreError):
        copy = StoreError(error.message, run_id=run_id)
        copy.__cause__ = error.__cause__ or error
        return copy
    if isinstance(error, Exception):
        return error  # a bug: surfaces as itself
    copy = StoreError(f"the batch's writer was interrupted: {error!r}", run_id=run_id)
    copy.__cause__ = error
    return copy
