"""Stopping child processes the same way everywhere: SIGTERM, then SIGKILL after a grace time."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
from collections.abc import Sequence

__all__ = ["terminate", "terminate_all"]

logger = logging.getLogger(__name__)


def terminate(
    proc: subprocess.Popen, timeout_s: float, *, kill: bool = False, group: bool = False
) -> None:
    """Stop `proc` (SIGKILL at once with `kill`), waiting at most `timeout_s` before SIGKILL;
    with `group`, its whole process group (a child started with `start_new_session`)."""
    terminate_all([proc], timeout_s, kill=kill, group=group)


def terminate_all(
    procs: Sequence[subprocess.Popen], timeout_s: float, *, kill: bool = False, group: bool = False
) -> None:
    """Signal every one of `procs` first, then wait for each (at most `timeout_s`, then
    SIGKILL), so that they stop side by side."""
    for proc in procs:
        if proc.poll() is None:
            _signal(proc, signal.SIGKILL if kill else signal.SIGTERM, group)
    for proc in procs:
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            logger.warning("pid %d did not stop in %.0f s; killed", proc.pid, timeout_s)
            _signal(proc, signal.SIGKILL, group)
            proc.wait()


def _signal(proc: subprocess.Popen, signum: int, group: bool) -> None:
    try:
        if group:
            os.killpg(proc.pid, signum)
        else:
            proc.send_signal(signum)
    except ProcessLookupError:  # already gone
        pass
