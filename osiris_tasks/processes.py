"""Stopping child processes the same way everywhere: SIGTERM, then SIGKILL after a grace time."""

from __future__ import annotations

import subprocess

__all__ = ["terminate"]


def terminate(proc: subprocess.Popen, timeout_s: float, *, kill: bool = False) -> None:
    """Stop `proc` (SIGKILL at once with `kill`), waiting at most `timeout_s` before SIGKILL."""
    if proc.poll() is not None:
        return
    if kill:
        proc.kill()
    else:
        proc.terminate()
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
