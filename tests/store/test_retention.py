"""Retention on a real LanceDB on disk: rows older than the cut-off leave runs, advice and
fills, archived to Parquet first; newer rows and the completion cache stay."""

from __future__ import annotations

import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest
from conftest import REPO

from osiris_tasks.domain.ids import utc_iso
from osiris_tasks.errors import StoreError
from osiris_tasks.store.runstore import RunStore

DAY_S = 86_400


def fill(fill_id: str, at: float) -> dict:
    return {"fill_id": fill_id, "run_id": fill_id, "timestamp": utc_iso(at), "symbol": "AAPL"}


@pytest.fixture
def aged(tmp_path):
    """A store with 5 runs (and their advice and fills) 10 days old and 3 from now."""
    store = RunStore(str(tmp_path / "lancedb"), maintain_every_commits=0)
    now = time.time()
    old, new = [f"old-{i}" for i in range(5)], [f"new-{i}" for i in range(3)]
    for ids, at in ((old, now - 10 * DAY_S), (new, now)):
        stamp = utc_iso(at)
        store.record_runs([{"run_id": r, "timestamp": stamp, "status": "success"} for r in ids])
        store.record_advice_many(
            [{"advice_id": f"a-{r}", "run_id": r, "timestamp": stamp} for r in ids]
        )
        store.record_fills([fill(r, at) for r in ids])
        store.record_completions(
            [{"completion_key": f"c-{r}", "run_id": r, "timestamp": stamp} for r in ids]
        )
    yield store, old, new
    store.close()


def run_ids(store: RunStore) -> set[str]:
    return {row["run_id"] for row in store.iter_runs()}


def test_expire_archives_then_deletes_the_old_rows(aged, tmp_path):
    store, old, new = aged
    done = store.expire(7 * DAY_S, archive_dir=str(tmp_path / "archive"))
    assert [(d["table"], d["expired_rows"]) for d in done] == [
        ("orchestrator_runs", 5),
        ("advice", 5),
        ("fills", 5),
    ]
    assert run_ids(store) == set(new)
    assert store.count("advice") == 3 and store.count("fills") == 3
    assert store.count("completions") == 8  # the cache is kept
    archived = pq.read_table(done[0]["archive"])
    assert sorted(archived["run_id"].to_pylist()) == old
    assert "input_query" in archived.schema.names  # whole rows
    assert pq.read_table(done[2]["archive"]).num_rows == 5
    again = store.expire(7 * DAY_S, archive_dir=str(tmp_path / "archive"))
    assert [d["expired_rows"] for d in again] == [0, 0, 0]


def test_a_failed_archive_deletes_nothing(aged, tmp_path):
    store, old, new = aged
    blocked = tmp_path / "not-a-dir"
    blocked.write_text("a file where the archive's folder would go")
    with pytest.raises(StoreError, match="Not a directory"):
        store.expire(7 * DAY_S, archive_dir=str(blocked))
    assert run_ids(store) == set(old + new)


def test_maintenance_expires_with_a_retention(aged):
    store, old, new = aged
    keeper = RunStore(store.uri, maintain_every_commits=0, retention_s=7 * DAY_S)
    try:
        done = keeper.maintain()
    finally:
        keeper.close()
    expired = {d["table"]: (d["expired"] or {}).get("expired_rows") for d in done}
    assert expired == {"orchestrator_runs": 5, "advice": 5, "fills": 5, "completions": None}
    assert run_ids(store) == set(new)


def test_the_command_expires_and_refuses_without_an_age(aged, tmp_path):
    store, _, new = aged
    command = [sys.executable, "-m", "osiris_tasks.tools.cli", "runs", "expire"]
    common = ["--lancedb_uri", store.uri]
    refused = subprocess.run([*command, *common], cwd=REPO, capture_output=True, text=True)
    assert refused.returncode == 2 and "OSIRIS_RETENTION_DAYS" in refused.stderr
    archive = tmp_path / "archive"
    done = subprocess.run(
        [*command, *common, "--older_than_days", "7", "--archive", str(archive)],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert "orchestrator_runs: 5 rows" in done.stdout
    assert run_ids(store) == set(new)
    assert len(list((archive / "orchestrator_runs").glob("*.parquet"))) == 1
