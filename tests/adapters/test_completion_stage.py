"""The completion cache's writes on a real Redis and a real LanceDB: staged by each run, written
in batches, once, and kept staged when LanceDB refuses them."""

from __future__ import annotations

import redis

from osiris_tasks.adapters.completions import CompletionStage
from osiris_tasks.domain.completions import completion_key
from osiris_tasks.store.runstore import RunStore
from osiris_tasks.store.schema import COMPLETIONS_TABLE


def rows(start: int, n: int) -> list[dict]:
    return [
        {
            "completion_key": completion_key("openai", "m", "score", {"n": i}),
            "run_id": f"run_{i}",
            "backend": "openai",
            "model": "m",
            "role": "score",
            "request": "{}",
            "completion": f'{{"score": 0.{i}}}',
        }
        for i in range(start, start + n)
    ]


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_runs_stage_their_completions_and_a_batch_is_written_in_one_go(redis_url, tmp_path):
    store = RunStore(str(tmp_path / "lancedb"))
    clock = Clock()
    stage = CompletionStage(
        redis.Redis.from_url(redis_url),
        lambda: store,
        store.uri,
        flush_rows=6,
        flush_interval_s=5.0,
        clock=clock,
    )
    stage.stage(rows(0, 3))
    assert stage.staged() == 3 and store.count(COMPLETIONS_TABLE) == 0  # no commit per run
    version = store.stats(COMPLETIONS_TABLE)["versions"]
    stage.stage(rows(3, 3))  # six staged: written
    assert stage.staged() == 0 and store.count(COMPLETIONS_TABLE) == 6
    assert store.stats(COMPLETIONS_TABLE)["versions"] == version + 1  # in one commit
    stage.stage(rows(6, 1))
    clock.now = 5.0  # the process's last write is old: the next stage writes
    stage.stage(rows(7, 1))
    assert stage.staged() == 0 and store.count(COMPLETIONS_TABLE) == 8
    stage.stage(rows(0, 3))  # a redelivered record_run stages them again: written once
    assert stage.flush() == 3 and store.count(COMPLETIONS_TABLE) == 8
    store.close()


def test_rows_stay_staged_while_lancedb_refuses_them(redis_url, tmp_path):
    """A store whose directory cannot exist (its parent is a file) refuses the write: the rows
    stay staged; once the store can be written, they are written."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    uri = str(blocker / "lancedb")
    stores = [RunStore(uri, max_attempts=1)]
    stage = CompletionStage(redis.Redis.from_url(redis_url), lambda: stores[-1], uri)
    stage.stage(rows(0, 4))
    assert stage.flush() == 0 and stage.staged() == 4  # not lost
    blocker.unlink()
    stores.append(RunStore(uri))
    assert stage.flush() == 4 and stage.staged() == 0
    assert stores[-1].count(COMPLETIONS_TABLE) == 4
    for store in stores:
        store.close()


def test_one_process_writes_at_a_time(redis_url, tmp_path):
    store = RunStore(str(tmp_path / "lancedb"))
    client = redis.Redis.from_url(redis_url)
    stage = CompletionStage(client, lambda: store, store.uri, flush_rows=100)
    stage.stage(rows(0, 2))
    lock = [k for k in client.keys("osiris:completions:flush:*")]
    assert not lock
    other = CompletionStage(client, lambda: store, store.uri)
    client.set(other._lock_key, "someone-else", px=60_000)
    assert stage.flush() == 0 and stage.staged() == 2  # another writer holds the lock
    client.delete(other._lock_key)
    assert stage.flush() == 2
    store.close()
