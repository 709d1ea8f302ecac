"""The store's maintenance process: a real child process, its lifecycle and its exit."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import time

import pytest

from osiris_tasks.errors import MaintenanceProcessDied
from osiris_tasks.store.maintenance_process import MaintenanceProcess


def _wait_until(check, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return check()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
def make_process():
    """`make_process(max_calls=..., idle_s=...)`; every process made is closed after the test."""
    made: list[MaintenanceProcess] = []
    yield lambda **kwargs: made.append(MaintenanceProcess(**kwargs)) or made[-1]
    for process in made:
        process.close()


def test_calls_run_in_one_other_process_replaced_after_max_calls(make_process):
    process = make_process(max_calls=2, idle_s=60)

    first, second, third = (process.call(os.getpid) for _ in range(3))

    assert first == second != os.getpid()
    assert third not in (first, os.getpid())  # the first process served its 2 calls
    process.close()
    assert process.pid is None


def test_an_exception_comes_back_as_itself_and_the_process_stays(make_process):
    process = make_process(max_calls=10, idle_s=60)
    pid = process.call(os.getpid)

    with pytest.raises(ValueError, match="invalid literal"):
        process.call(int, "not a number")

    assert process.call(os.getpid) == pid


def test_an_idle_process_stops_and_the_next_call_starts_another(make_process):
    process = make_process(max_calls=10, idle_s=0.5)
    pid = process.call(os.getpid)

    assert _wait_until(lambda: process.pid is None, timeout_s=5)
    assert _wait_until(lambda: not _alive(pid), timeout_s=5)
    assert process.call(os.getpid) not in (None, pid)


def test_a_killed_process_fails_its_call_site_once_then_is_replaced(make_process):
    process = make_process(max_calls=10, idle_s=60)
    pid = process.call(os.getpid)
    os.kill(pid, signal.SIGKILL)

    with pytest.raises(MaintenanceProcessDied) as died:
        process.call(os.getpid)

    assert isinstance(died.value, RuntimeError)  # what RunStore retries
    assert process.pid is None

    assert process.call(os.getpid) not in (None, pid)


def test_the_process_exits_when_its_parent_is_killed():
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import os, time\n"
            "from osiris_tasks.store.maintenance_process import MaintenanceProcess\n"
            "if __name__ == '__main__':\n"
            "    p = MaintenanceProcess(max_calls=10, idle_s=600)\n"
            "    print(p.call(os.getpid), flush=True)\n"
            "    time.sleep(600)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        child = int(parent.stdout.readline())
        assert _alive(child)

        parent.kill()
        parent.wait()

        assert _wait_until(lambda: not _alive(child), timeout_s=10), "orphaned maintenance process"
    finally:
        parent.kill()
        parent.stdout.close()


def _call_getpid_in_a_maintenance_process(results) -> None:
    """In a daemonic process: what a prefork worker's pool process is."""
    process = MaintenanceProcess(max_calls=10, idle_s=60)
    try:
        results.put(("ok", process.call(os.getpid)))
    except Exception as exc:
        results.put(("error", repr(exc)))
    finally:
        process.close()


def test_calls_work_from_a_daemonic_process():
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    daemon = context.Process(
        target=_call_getpid_in_a_maintenance_process, args=(results,), daemon=True
    )
    daemon.start()
    try:
        status, value = results.get(timeout=30)
    finally:
        daemon.join(10)
        daemon.kill()

    assert status == "ok", value  # not "daemonic processes are not allowed to have children"
    assert value not in (os.getpid(), daemon.pid)


def _print_and_return(text: str) -> str:
    print(text)
    return text


def test_what_the_call_prints_does_not_reach_the_replies(make_process, capfd):
    process = make_process(max_calls=10, idle_s=60)

    assert process.call(_print_and_return, "hello") == "hello"
    assert process.call(_print_and_return, "again") == "again"
    assert "hello" in capfd.readouterr().err  # the child's stdout is its (our) stderr


class _KeywordError(Exception):
    """Pickles, but cannot be rebuilt from its args."""

    def __init__(self, message: str, *, status: int):
        super().__init__(message)
        self.status = status


def _raise_keyword_error() -> None:
    raise _KeywordError("busy", status=503)


def test_an_exception_that_cannot_be_rebuilt_comes_back_as_its_text(make_process):
    process = make_process(max_calls=10, idle_s=60)

    with pytest.raises(RuntimeError, match="_KeywordError: busy") as raised:
        process.call(_raise_keyword_error)

    assert "_raise_keyword_error" in str(raised.value.__cause__)  # the child's traceback
