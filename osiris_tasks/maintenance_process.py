"""A process of its own for a store's scheduled maintenance, so that a compaction's memory is
never the writer's.

Compacting a table reads and rewrites its small fragments; the memory that takes stays with the
process that did it (the allocator keeps it for reuse). In a worker, that made RSS swing with
every maintenance run and drift up over thousands of runs (measured over 10k runs, one threads
x32 worker with jemalloc: 319-358 MB; with maintenance in this process instead: 297-300 MB).

`MaintenanceProcess.call(fn, *args)` runs `fn(*args)` in a spawned process (not forked: the
caller has LanceDB's and Celery's threads) and returns its result or raises its exception. The
process starts on the first call, serves calls one at a time, is replaced after `max_calls`
calls (so its own memory stays bounded) or when it died, stops after `idle_s` without a call
(a quiet worker holds no second process), and exits by itself within a second of its parent's
death (a SIGKILLed worker leaves no orphan; a pool process would otherwise wait for work
forever).
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

__all__ = ["MaintenanceProcess"]

T = TypeVar("T")

# How often the maintenance process checks that its parent is alive.
PARENT_CHECK_S = 1.0


class MaintenanceProcess:
    """One spawned process that runs calls one at a time (see the module docstring)."""

    def __init__(self, *, max_calls: int, idle_s: float):
        self._max_calls = max_calls
        self._idle_s = idle_s
        self._lock = threading.Lock()
        self._pool: ProcessPoolExecutor | None = None
        self._busy = 0
        self._last_call = 0.0
        self._idle_timer: threading.Timer | None = None

    @property
    def pid(self) -> int | None:
        """The process's pid while it runs."""
        with self._lock:
            processes = list(self._pool._processes or ()) if self._pool is not None else []
        return processes[0] if processes else None

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` in the process. Raises what `fn` raised, or `BrokenProcessPool` (a
        `RuntimeError`) if the process died; the next call starts a new one."""
        with self._lock:
            if self._pool is None:
                self._pool = ProcessPoolExecutor(
                    max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                    max_tasks_per_child=self._max_calls,
                    initializer=_exit_with_parent, initargs=(os.getpid(),))
            pool = self._pool
            self._busy += 1
        try:
            return pool.submit(fn, *args).result()
        except BrokenProcessPool:
            with self._lock:
                if self._pool is pool:
                    self._pool = None
            pool.shutdown(wait=False)
            raise
        finally:
            with self._lock:
                self._busy -= 1
                self._last_call = time.monotonic()
                if self._idle_timer is None:
                    self._arm(self._idle_s)

    def close(self) -> None:
        """Stop the process (after the call it is running, if any)."""
        with self._lock:
            pool, self._pool = self._pool, None
            if self._idle_timer is not None:
                self._idle_timer.cancel()
                self._idle_timer = None
        if pool is not None:
            pool.shutdown(wait=True)

    def _arm(self, delay_s: float) -> None:
        self._idle_timer = threading.Timer(delay_s, self._stop_if_idle)
        self._idle_timer.daemon = True
        self._idle_timer.name = "osiris-maintenance-idle"
        self._idle_timer.start()

    def _stop_if_idle(self) -> None:
        with self._lock:
            self._idle_timer = None
            if self._pool is None:
                return
            idle_for = time.monotonic() - self._last_call
            if self._busy or idle_for < self._idle_s:
                self._arm(max(self._idle_s - idle_for, 0.1))
                return
            pool, self._pool = self._pool, None
        pool.shutdown(wait=True)


def _exit_with_parent(parent_pid: int) -> None:
    """In the maintenance process: exit once the process that started it is gone. Ctrl-C in
    a terminal reaches the whole process group: the parent decides when this one stops."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(PARENT_CHECK_S)
        os._exit(1)

    threading.Thread(target=watch, name="osiris-parent-watch", daemon=True).start()
