"""A process of its own for a store's scheduled maintenance, so that a compaction's memory is
never the writer's.

Compacting a table reads and rewrites its small fragments; the memory that takes stays with the
process that did it (the allocator keeps it for reuse). In a worker, that made RSS swing with
every maintenance run and drift up over thousands of runs (measured over 10k runs, one threads
x32 worker with jemalloc: 319-358 MB; with maintenance in this process instead: 297-300 MB).

`MaintenanceProcess.call(fn, *args)` runs `fn(*args)` in a child Python started with
`subprocess` (a fresh interpreter, not a fork: the caller has LanceDB's and Celery's threads)
and returns its result or raises its exception. Not `multiprocessing`: a Celery prefork pool
process is a daemonic (billiard) process, and `multiprocessing` refuses to start a child from
one ("daemonic processes are not allowed to have children"), so under the default pool no
scheduled maintenance ran at all. A plain subprocess has no such rule: the same code serves a
plain process, a threads or solo worker and a prefork child.

Requests `(fn, args)` and replies go as length-prefixed pickles
(`multiprocessing.connection.Connection`) over two pipes, the child's stdin and stdout when it
starts. The child moves them to other descriptors at once and points its stdout at its stderr
(the parent's), so nothing `fn` prints can corrupt a reply, and its log lines and tracebacks
show up in the worker's output.

The process starts on the first call, serves calls one at a time, is replaced after `max_calls`
calls (so its own memory stays bounded) or when it died (the call that finds it dead raises
`MaintenanceProcessDied`, a `RuntimeError`, which `RunStore` retries), stops after `idle_s`
without a call (a quiet worker holds no second process), and exits by itself when its parent is
gone: at end-of-file on its requests pipe, or within a second of the parent's death while a call
runs or while a forked sibling still holds the pipe (a SIGKILLed worker leaves no orphan).
"""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any, TypeVar

from osiris_tasks.errors import MaintenanceProcessDied

__all__ = ["MaintenanceProcess", "MaintenanceProcessDied", "serve"]

T = TypeVar("T")

# How often the maintenance process checks that its parent is alive.
PARENT_CHECK_S = 1.0
# A process being stopped gets this long to exit after its requests pipe closes, then SIGKILL.
STOP_TIMEOUT_S = 5.0
# The child's program (`-c`, not `-m`: sys.path must be set before the import). The parent's
# pid and sys.path follow as arguments, so the child finds the modules the parent pickles from.
_BOOTSTRAP = (
    "import sys; sys.path[:] = sys.argv[2:]; "
    "from osiris_tasks.store.maintenance_process import serve; serve(int(sys.argv[1]))"
)


class MaintenanceProcess:
    """One child process that runs calls one at a time (see the module docstring)."""

    def __init__(self, *, max_calls: int, idle_s: float):
        self._max_calls = max_calls
        self._idle_s = idle_s
        self._lock = threading.Lock()  # held for a whole call: calls run one at a time
        self._child: _Child | None = None
        self._last_call = 0.0
        self._idle_timer: threading.Timer | None = None

    @property
    def pid(self) -> int | None:
        """The process's pid while it runs (read without waiting for a call in progress)."""
        child = self._child
        return None if child is None else child.pid

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` in the process. Raises what `fn` raised, or `MaintenanceProcessDied` (a
        `RuntimeError`) if the process died; the next call starts a new one."""
        with self._lock:
            child = self._child = self._child or _Child()
            try:
                reply = child.exchange(fn, args)
            finally:
                if child.stopped or child.calls >= self._max_calls:
                    self._stop_child()
                self._last_call = time.monotonic()
                if self._idle_timer is None:
                    self._arm(self._idle_s)
        return _unwrap(reply)

    def close(self) -> None:
        """Stop the process (after the call it is running, if any)."""
        with self._lock:
            if self._idle_timer is not None:
                self._idle_timer.cancel()
                self._idle_timer = None
            self._stop_child()

    def _stop_child(self) -> None:
        child, self._child = self._child, None
        if child is not None:
            child.stop()

    def _arm(self, delay_s: float) -> None:
        self._idle_timer = threading.Timer(delay_s, self._stop_if_idle)
        self._idle_timer.daemon = True
        self._idle_timer.name = "osiris-maintenance-idle"
        self._idle_timer.start()

    def _stop_if_idle(self) -> None:
        with self._lock:  # waits for a call in progress, which then counts as the last one
            if self._idle_timer is not threading.current_thread():
                return  # cancelled by `close`, and maybe replaced since
            self._idle_timer = None
            idle_for = time.monotonic() - self._last_call
            if self._child is not None and idle_for < self._idle_s:
                self._arm(max(self._idle_s - idle_for, 0.1))
            else:
                self._stop_child()


class _Child:
    """One running maintenance process and the two pipes to it."""

    def __init__(self) -> None:
        requests_r, requests_w = os.pipe()
        replies_r, replies_w = os.pipe()
        self._requests = Connection(requests_w, readable=False)
        self._replies = Connection(replies_r, writable=False)
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-c", _BOOTSTRAP, str(os.getpid()), *sys.path],
                stdin=requests_r,
                stdout=replies_w,
            )  # stderr: the parent's
        except BaseException:
            self._requests.close()
            self._replies.close()
            raise
        finally:
            os.close(requests_r)
            os.close(replies_w)
        self.pid = self._proc.pid
        self.calls = 0

    @property
    def stopped(self) -> bool:
        return self._proc.returncode is not None

    def exchange(self, fn: Callable[..., Any], args: tuple) -> tuple[str, Any, str]:
        """Send `(fn, args)` and return the reply; `MaintenanceProcessDied` if none can come."""
        request = pickle.dumps((fn, args), pickle.HIGHEST_PROTOCOL)  # fails before a byte is sent
        try:
            self._requests.send_bytes(request)
            reply = self._replies.recv_bytes()
        except (EOFError, OSError) as exc:
            code = self.stop(kill=True)
            raise MaintenanceProcessDied(
                f"maintenance process {self.pid} died before it answered (exit code {code}): "
                "the next call starts a new process"
            ) from exc
        except BaseException:
            self.stop(kill=True)  # interrupted mid-call: its reply would answer the next call
            raise
        self.calls += 1
        return pickle.loads(reply)

    def stop(self, *, kill: bool = False) -> int:
        """End the process: end-of-file on its requests (SIGKILL with `kill`, or if it has not
        exited `STOP_TIMEOUT_S` later); return its exit code."""
        if kill:
            self._proc.kill()
        self._requests.close()
        try:
            code = self._proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            code = self._proc.wait()
        self._replies.close()
        return code


def _unwrap(reply: tuple[str, Any, str]) -> Any:
    """A reply's result, or its exception raised with the child's traceback as the cause."""
    status, value, child_traceback = reply
    if status == "ok":
        return value
    raise value from _ChildTraceback(child_traceback)


class _ChildTraceback(Exception):
    """Where in the maintenance process an exception was raised (shown as its cause)."""

    def __str__(self) -> str:
        return f'\n"""\n{self.args[0]}"""'


# -- in the maintenance process ----------------------------------------------------------


def serve(parent_pid: int) -> None:
    """The maintenance process: answer each request until the parent closes the pipe or dies.
    Ctrl-C in a terminal reaches the whole process group: the parent decides when this one
    stops."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _exit_with_parent(parent_pid)
    requests, replies = _protocol_pipes()
    while True:
        try:
            request = requests.recv_bytes()
        except EOFError:
            return
        try:
            replies.send_bytes(_answer(request))
        except BrokenPipeError:  # the parent is gone: nobody to answer
            return


def _protocol_pipes() -> tuple[Connection, Connection]:
    """The requests and replies pipes, moved off fds 0 and 1 (not inherited by anything `fn`
    starts); stdin becomes /dev/null and stdout the stderr, so `fn` cannot touch them."""
    requests = Connection(os.dup(0), writable=False)
    replies = Connection(os.dup(1), readable=False)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.dup2(2, 1)
    return requests, replies


def _answer(request: bytes) -> bytes:
    """The pickled reply to a pickled `(fn, args)`: ("ok", result, "") or ("error", exc, tb)."""
    try:
        fn, args = pickle.loads(request)
        return pickle.dumps(("ok", fn(*args), ""), pickle.HIGHEST_PROTOCOL)
    except Exception as exc:
        return _error_reply(exc, traceback.format_exc())


def _error_reply(exc: Exception, child_traceback: str) -> bytes:
    """`exc` pickled, or a RuntimeError with its text if it does not survive the round trip
    (an exception class with keyword-only arguments cannot be rebuilt from its args)."""
    try:
        reply = pickle.dumps(("error", exc, child_traceback), pickle.HIGHEST_PROTOCOL)
        pickle.loads(reply)
        return reply
    except Exception:
        stand_in = RuntimeError(f"{type(exc).__name__}: {exc}")
        return pickle.dumps(("error", stand_in, child_traceback), pickle.HIGHEST_PROTOCOL)


def _exit_with_parent(parent_pid: int) -> None:
    """Exit once the process that started this one is gone, even in the middle of a call."""

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(PARENT_CHECK_S)
        os._exit(1)

    threading.Thread(target=watch, name="osiris-parent-watch", daemon=True).start()
