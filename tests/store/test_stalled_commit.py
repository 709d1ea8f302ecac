"""A writer stalled inside its commit past the cleanup window (lance-format/lance#3718).

Lance picks a commit's version number (the latest + 1), then writes the manifest under that
name if no file has it: on a local disk, a `linkat` of the staged manifest. The writer here
runs in a process of its own under strace, which holds that `linkat` for `STALL_S`; meanwhile
another store takes the number and one more, and maintenance (called directly, with a window
Settings would refuse) compacts and cleans up versions older than `WINDOW_S`, the taken number
among them. The held `linkat` then succeeds into the freed number, below the latest version,
and `add()` returns normally: without the store's check after a slow commit, the writer's runs
are gone.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import lancedb
import pytest
from conftest import missing_dependency, wait_for

from osiris_tasks.store.runstore import RUNS_TABLE, RunStore
from osiris_tasks.tools.processes import terminate

pytestmark = pytest.mark.integration  # a process of its own, under strace

WRITER = Path(__file__).with_name("stalled_writer.py")
# How long strace holds the writer's commit: the other writes, the wait past the window and
# maintenance must all fit in it, with room for a loaded machine.
STALL_S = 6.0
HOLD = f"inject=linkat:delay_enter={int(STALL_S * 1_000_000)}"
# The cleanup window maintenance runs with here.
WINDOW_S = 1.0
STALLED = ["stalled-1", "stalled-2", "stalled-3"]
OTHERS = ["other-1", "other-2"]


def _strace(*args: str) -> list[str]:
    """strace with `args`, if it can run them here (ptrace may be forbidden, or strace old)."""
    command = [shutil.which("strace") or "strace", "-f", "-qq", "-o", "/dev/null", *args]
    try:
        usable = subprocess.run([*command, "true"], capture_output=True).returncode == 0
    except OSError:
        usable = False
    if not usable:
        missing_dependency("strace that may trace its child and delay a syscall")
    return command


def _manifest(uri: str, version: int) -> Path:
    """Where lance writes `version`'s manifest (its V2 names count down from 2**64 - 1)."""
    return Path(uri) / f"{RUNS_TABLE}.lance" / "_versions" / f"{2**64 - 1 - version:020d}.manifest"


def _start_stalled_writer(uri: str) -> subprocess.Popen:
    """The writer, its commit into the version after the latest held `STALL_S` by strace."""
    latest = lancedb.connect(uri).open_table(RUNS_TABLE).version
    assert _manifest(uri, latest).exists(), "lance names its manifests differently now"
    held = str(_manifest(uri, latest + 1))
    strace = _strace("--seccomp-bpf", "-e", "trace=linkat", "-P", held, "-e", HOLD)
    command = [*strace, sys.executable, str(WRITER), uri, str(WINDOW_S), *STALLED]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _staged(uri: str) -> bool:
    """Whether a manifest is staged beside its final name, waiting for its `linkat`."""
    versions = Path(uri) / f"{RUNS_TABLE}.lance" / "_versions"
    return any(".manifest" in p.name and p.suffix != ".manifest" for p in versions.iterdir())


def test_a_writer_stalled_past_the_cleanup_window_appends_its_runs_again(tmp_path):
    uri = str(tmp_path / "lancedb")
    other = RunStore(uri, maintain_every_commits=0)
    other.count(RUNS_TABLE)  # created, indexed, before the writer opens it
    writer = _start_stalled_writer(uri)
    try:
        wait_for(lambda: _staged(uri) or writer.poll() is not None, timeout_s=60)
        assert writer.poll() is None, writer.communicate()
        started = time.monotonic()
        for run_id in OTHERS:  # the writer's version number, and one more
            other.record_run({"run_id": run_id, "status": "other"})
        time.sleep(WINDOW_S + 0.5)
        maintainer = RunStore(uri, cleanup_older_than_s=WINDOW_S)
        maintainer.maintain(RUNS_TABLE)
        maintainer.close()
        assert writer.poll() is None and time.monotonic() - started < STALL_S, (
            "maintenance finished after the writer's commit: raise STALL_S"
        )
        out, err = writer.communicate(timeout=120)
    finally:
        terminate(writer, 10)
        other.close()

    assert writer.returncode == 0, err
    assert json.loads(out) == [True] * len(STALLED)
    reader = RunStore(uri)
    assert sorted(row["run_id"] for row in reader.iter_runs()) == sorted(STALLED + OTHERS)
    reader.close()
    assert "missing from the latest version" in err, (
        f"the stall did not orphan the commit (is lance-format/lance#3718 fixed?): {err}"
    )
