"""RunStore against a real LanceDB in a temp dir and the real Redis on loopback."""

from __future__ import annotations

import logging
import math
import multiprocessing
import os
import signal
import threading
import time

import lancedb
import orjson
import pyarrow as pa
import pytest
import redis

from osiris_tasks.errors import ConfigError, StoreError
from osiris_tasks.settings import MIN_STORE_CLEANUP_OLDER_THAN_S, Settings
from osiris_tasks.store.runstore import (
    ADVICE_SCHEMA,
    ADVICE_TABLE,
    MAINTAIN_LOCK_TTL_S,
    RUNS_SCHEMA,
    RUNS_TABLE,
    RunStore,
    maintenance_lock_name,
)
from osiris_tasks.store.schema import TABLES

REDIS_URL = "redis://127.0.0.1:6379/14"
WORKERS = 4
SHARED_RUNS = 50
UNIQUE_RUNS = 10

FULL_RUN = {
    "run_id": "run_20250101T000000000Z_0123456789abcdef",
    "timestamp": "2025-01-01T00:00:01.000+00:00",
    "created_at": "2025-01-01T00:00:00.000+00:00",
    "status": "done",
    "symbols": "SPY,QQQ",
    "side": "LONG",
    "quantity": 3.0,
    "verdict": "accepted",
    "rule": "ok",
    "score": 0.75,
    "transaction_id": "tx-1",
    "input_query": '{"symbol": "SPY"}',
    "final_output": '{"ok": true}',
    "error_message": None,
    "prompt": "Propose a trade",
    "raw_completion": '{"side": "LONG"}',
    "proposal": '{"side": "LONG", "quantity": 3}',
    "risk_verdict": '{"accepted": true}',
    "assessment": "fine",
    "timings_ms": '{"llm": 12.5}',
    "events": "[]",
    "llm_calls": '[{"role": "proposal", "backend": "sidecar", "model": "phi3"}]',
}


@pytest.fixture
def redis_client():
    """A Redis client on db 14, flushed before and after; skip (FAIL under CI) if unreachable."""
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.RedisError as exc:
        client.close()
        if os.environ.get("CI"):
            pytest.fail(f"Redis at {REDIS_URL} is unreachable under CI: {exc}")
        pytest.skip(f"Redis at {REDIS_URL} is unreachable: {exc}")
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


@pytest.fixture
def uri(tmp_path) -> str:
    return str(tmp_path / "lancedb")


@pytest.fixture
def store(uri):
    """A store without Redis: process-local locking only."""
    run_store = RunStore(uri)
    yield run_store
    run_store.close()


@pytest.fixture
def redis_store(uri, redis_client):
    run_store = RunStore(uri, redis=redis_client)
    yield run_store
    run_store.close()


def _run(run_id: str, **fields) -> dict:
    return {"run_id": run_id, **fields}


def _advice(advice_id: str, run_id: str = "run-1", **fields) -> dict:
    return {"advice_id": advice_id, "run_id": run_id, **fields}


def test_schemas_cover_the_documented_columns():
    assert RUNS_SCHEMA.names == list(FULL_RUN)
    assert ADVICE_SCHEMA.names == [
        "advice_id",
        "run_id",
        "timestamp",
        "proposal",
        "accepted",
        "reason",
        "rule",
        "nav_before_trade",
        "daily_pnl_before_trade",
    ]
    assert not RUNS_SCHEMA.field("run_id").nullable
    assert ADVICE_SCHEMA.field("accepted").type == pa.bool_()


def test_run_round_trip_stores_non_finite_floats_as_null(store):
    assert store.record_run({**FULL_RUN, "score": math.nan, "quantity": math.inf})

    assert store.get_run(FULL_RUN["run_id"]) == {**FULL_RUN, "score": None, "quantity": None}


def test_missing_columns_are_null_and_timestamp_is_stamped(store):
    store.record_run(_run("run-bare"))

    row = store.get_run("run-bare")
    assert row["timestamp"].endswith("+00:00")
    assert all(
        row[name] is None for name in RUNS_SCHEMA.names if name not in ("run_id", "timestamp")
    )


def test_advice_round_trip_oldest_first(store):
    later = _advice(
        "adv-2",
        timestamp="2025-01-01T00:00:02+00:00",
        accepted=False,
        reason="too big",
        rule="max_position_size",
        proposal='{"quantity": 9}',
        nav_before_trade=100_000.0,
        daily_pnl_before_trade=-math.inf,
    )
    earlier = _advice(
        "adv-1",
        timestamp="2025-01-01T00:00:01+00:00",
        accepted=True,
        nav_before_trade=math.nan,
        daily_pnl_before_trade=-12.5,
    )
    assert store.record_advice(later) and store.record_advice(earlier)
    store.record_advice(_advice("adv-other", run_id="run-2"))

    assert store.get_advice("run-1") == [
        {**earlier, "proposal": None, "reason": None, "rule": None, "nav_before_trade": None},
        {**later, "daily_pnl_before_trade": None},
    ]
    assert store.get_advice("run-unknown") == []


@pytest.mark.parametrize(
    ("table", "record", "row", "changed"),
    [
        (RUNS_TABLE, RunStore.record_run, _run("run-1", status="done"), {"status": "other"}),
        (ADVICE_TABLE, RunStore.record_advice, _advice("adv-1", reason="a"), {"reason": "b"}),
    ],
)
def test_recording_twice_keeps_the_first_row(store, table, record, row, changed):
    assert record(store, row) is True
    assert record(store, {**row, **changed}) is False

    assert store.count(table) == 1
    if table == RUNS_TABLE:
        assert store.get_run("run-1")["status"] == "done"
    else:
        assert store.get_advice("run-1")[0]["reason"] == "a"


def test_unknown_column_is_a_store_error(store):
    with pytest.raises(StoreError, match="unknown column") as info:
        store.record_run(_run("run-1", colour="blue"))
    assert info.value.run_id == "run-1"
    assert store.count(RUNS_TABLE) == 0


@pytest.mark.parametrize(
    "bad", ["", "x" * 129, "a'b", "a' OR '1'='1", "a b", "run-1\n", "ü", None, 7]
)
def test_bad_keys_never_reach_a_filter(store, bad):
    with pytest.raises(StoreError):
        store.record_run(_run(bad))
    with pytest.raises(StoreError):
        store.record_advice(_advice("adv-1", run_id=bad))
    with pytest.raises(StoreError):
        store.record_advice(_advice(bad))
    with pytest.raises(StoreError):
        store.get_run(bad)


def test_value_of_the_wrong_type_is_a_store_error(store):
    with pytest.raises(StoreError, match="does not fit"):
        store.record_run(_run("run-1", score="high"))


def test_recent_runs_newest_first_and_limited(store):
    for minute in (3, 1, 4, 2, 5):
        store.record_run(_run(f"run-{minute}", timestamp=f"2025-01-01T00:0{minute}:00+00:00"))

    assert [row["run_id"] for row in store.recent_runs(3)] == ["run-5", "run-4", "run-3"]
    assert len(store.recent_runs()) == 5
    assert store.recent_runs(0) == []
    with pytest.raises(StoreError):
        store.recent_runs(-1)


def test_empty_store_reads(store):
    assert store.get_run("run-1") is None
    assert store.recent_runs() == []
    assert list(store.iter_runs()) == []
    assert store.count(ADVICE_TABLE) == 0
    with pytest.raises(StoreError, match="unknown table"):
        store.count("runs")


def test_iter_runs_yields_every_run(store):
    ids = {f"run-{i}" for i in range(7)}
    for run_id in ids:
        store.record_run(_run(run_id))

    rows = list(store.iter_runs(batch_size=2))
    assert {row["run_id"] for row in rows} == ids
    assert len(rows) == len(ids)


def test_a_second_store_reads_writes_made_after_it_opened(uri, store):
    reader = RunStore(uri)
    assert reader.count(RUNS_TABLE) == 0  # opens and caches its handle first

    store.record_run(_run("run-1"))

    assert reader.get_run("run-1")["run_id"] == "run-1"
    assert [row["run_id"] for row in reader.recent_runs()] == ["run-1"]
    reader.close()


def test_close_and_reset_after_fork_reopen_lazily(store):
    store.record_run(_run("run-1"))
    store.close()
    assert store.record_run(_run("run-2"))
    store.reset_after_fork()
    assert store.count(RUNS_TABLE) == 2


def test_threads_sharing_a_store_without_redis_write_each_key_once(store):
    keys = [f"run-{i}" for i in range(20)]
    written = []

    def work():
        written.extend(key for key in keys if store.record_run(_run(key)))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(written) == sorted(keys)
    assert store.count(RUNS_TABLE) == len(keys)


def test_unwritable_uri_is_a_store_error_after_retries(tmp_path, caplog):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    store = RunStore(str(blocker / "lancedb"), max_attempts=2)

    with (
        caplog.at_level(logging.WARNING, logger="osiris_tasks.store.runstore"),
        pytest.raises(StoreError, match="gave up after 2 attempts") as info,
    ):
        store.record_run(_run("run-1"))

    assert info.value.run_id == "run-1"
    assert isinstance(info.value.__cause__, OSError)
    assert len([r for r in caplog.records if "attempt 1/2" in r.getMessage()]) == 1


@pytest.mark.integration
def test_redis_locked_writes_round_trip(redis_store, redis_client):
    assert redis_store.record_run(_run("run-1"))
    assert not redis_store.record_run(_run("run-1"))
    assert redis_store.record_advice(_advice("adv-1"))

    assert redis_store.count(RUNS_TABLE) == 1
    assert redis_client.keys("osiris:lock:*") == []  # every lock was released


def _record_in_process(uri: str, worker: int, barrier, results) -> None:
    """Child process: record the shared runs and this worker's own, report what it wrote."""
    store = RunStore(uri, redis=redis.Redis.from_url(REDIS_URL))
    own = [f"own-{worker}-{i}" for i in range(UNIQUE_RUNS)]
    shared = [f"shared-{i}" for i in range(SHARED_RUNS)]
    try:
        barrier.wait(timeout=120)  # all create the table, then append, at the same time
        results.put(sorted(run_id for run_id in own + shared if store.record_run(_run(run_id))))
    except Exception as exc:  # report, so the parent fails with the reason
        results.put(repr(exc))


@pytest.mark.integration
def test_processes_record_each_run_exactly_once(uri, redis_client):
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(WORKERS), ctx.Queue()
    procs = [
        ctx.Process(target=_record_in_process, args=(uri, worker, barrier, results))
        for worker in range(WORKERS)
    ]
    for proc in procs:
        proc.start()
    reports = [results.get(timeout=240) for _ in procs]
    for proc in procs:
        proc.join(timeout=60)

    assert all(isinstance(report, list) for report in reports), reports
    written = [run_id for report in reports for run_id in report]
    expected = SHARED_RUNS + WORKERS * UNIQUE_RUNS
    assert len(written) == len(set(written)) == expected
    store = RunStore(uri)
    rows = list(store.iter_runs())
    assert sorted(row["run_id"] for row in rows) == sorted(written)
    assert store.count(RUNS_TABLE) == expected


class _UnblockOnRetry(logging.Handler):
    """Removes the file in the store's way when the store logs its first retry."""

    def __init__(self, blocker):
        super().__init__()
        self.blocker = blocker

    def emit(self, record):
        if "retrying" in record.getMessage():
            self.blocker.unlink(missing_ok=True)


def test_a_failure_that_clears_is_retried_and_the_write_lands(tmp_path):
    blocker = tmp_path / "in-the-way"
    blocker.write_text("not a directory")
    handler = _UnblockOnRetry(blocker)
    logger = logging.getLogger("osiris_tasks.store.runstore")
    logger.addHandler(handler)
    level, logger.level = logger.level, logging.WARNING
    try:
        store = RunStore(str(blocker / "lancedb"), max_attempts=3)
        assert store.record_run(_run("run-1"))
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert store.get_run("run-1")["run_id"] == "run-1"


@pytest.mark.parametrize("with_redis", [False, True], ids=["local", "redis-marks"])
def test_an_attempt_that_committed_then_raised_is_not_written_twice(
    uri, redis_client, monkeypatch, with_redis
):
    """lance can raise after its commit landed; the retry must find the row, not add it again
    (with Redis, the first attempt trusted the key's fresh mark and did not look it up)."""
    commit = lancedb.table.LanceTable.add
    failures = []

    def commit_then_raise(self, *args, **kwargs):
        result = commit(self, *args, **kwargs)
        if not failures:
            failures.append(self.name)
            raise RuntimeError("injected: the commit landed, then the call failed")
        return result

    store = RunStore(uri, redis=redis_client if with_redis else None, max_attempts=3)
    assert store.record_run(_run("run-0"))  # the table exists: new keys' marks are trusted
    monkeypatch.setattr(lancedb.table.LanceTable, "add", commit_then_raise)

    assert store.record_runs([_run("run-1"), _run("run-2")]) == [True, True]

    assert failures == [RUNS_TABLE]
    assert sorted(r["run_id"] for r in store.iter_runs()) == ["run-0", "run-1", "run-2"]
    assert store.record_runs([_run("run-1"), _run("run-3")]) == [False, True]
    assert store.count(RUNS_TABLE) == 4
    store.close()


# -- batched writes, group commit, maintenance -----------------------------------------------


def _versions(store, table=RUNS_TABLE) -> int:
    return store.stats(table)["versions"]


def test_record_runs_appends_the_absent_rows_in_one_commit(store):
    assert store.record_run(_run("run-0", status="first"))
    versions = _versions(store)

    written = store.record_runs(
        [
            _run("run-1"),
            _run("run-0", status="again"),
            _run("run-2"),
            _run("run-1", status="repeat"),
        ]
    )

    assert written == [True, False, True, False]
    assert _versions(store) == versions + 1
    assert store.count(RUNS_TABLE) == 3
    assert store.get_run("run-0")["status"] == "first"
    assert store.get_run("run-1")["status"] is None
    assert store.record_runs([]) == []
    assert store.record_runs([_run("run-1"), _run("run-2")]) == [False, False]
    assert _versions(store) == versions + 1  # nothing new, no commit


def test_record_advice_many(store):
    rows = [_advice(f"adv-{i}", run_id=f"run-{i % 2}") for i in range(5)]
    assert store.record_advice_many(rows) == [True] * 5
    assert store.record_advice_many(rows[:2]) == [False, False]
    assert len(store.get_advice("run-0")) == 3


def test_a_bad_row_fails_the_batch_before_anything_is_written(store):
    with pytest.raises(StoreError, match="does not fit") as info:
        store.record_runs([_run("run-1"), _run("run-2", score="high")])
    assert info.value.run_id == "run-2"
    with pytest.raises(StoreError):
        store.record_runs([_run("run-3"), _run("a'b")])
    assert store.count(RUNS_TABLE) == 0


def test_big_batches_are_written_in_chunks(store, monkeypatch):
    monkeypatch.setattr("osiris_tasks.store.runstore.MAX_BATCH_ROWS", 4)
    assert store.record_runs([_run(f"run-{i}") for i in range(10)]) == [True] * 10
    assert store.count(RUNS_TABLE) == 10
    assert store.stats(RUNS_TABLE)["fragments"] == 3


def test_threads_writing_single_rows_share_commits(store):
    threads, per_thread = 8, 10
    barrier = threading.Barrier(threads)
    results = []

    def work(worker):
        barrier.wait()
        results.extend(store.record_run(_run(f"run-{worker}-{i}")) for i in range(per_thread))

    pool = [threading.Thread(target=work, args=(w,)) for w in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()

    assert results == [True] * threads * per_thread
    assert store.count(RUNS_TABLE) == threads * per_thread
    assert store.stats(RUNS_TABLE)["fragments"] < threads * per_thread


def test_a_failed_group_commit_reaches_every_caller_with_its_run_id(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    store = RunStore(str(blocker / "lancedb"), max_attempts=1)
    errors = {}

    def work(run_id):
        try:
            store.record_run(_run(run_id))
        except StoreError as exc:
            errors[run_id] = exc

    pool = [threading.Thread(target=work, args=(f"run-{i}",)) for i in range(4)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()

    assert sorted(errors) == [f"run-{i}" for i in range(4)]
    assert all(exc.run_id == run_id for run_id, exc in errors.items())


def test_recent_runs_reads_recent_and_old_rows_alike(store):
    from osiris_tasks.domain.ids import utc_iso

    now = __import__("time").time()
    store.record_runs(
        [
            _run("old-1", timestamp="2020-01-01T00:00:00.000+00:00"),
            _run("new-1", timestamp=utc_iso(now - 5)),
            _run("new-2", timestamp=utc_iso(now - 1)),
            _run("hour-1", timestamp=utc_iso(now - 600)),
        ]
    )

    assert [r["run_id"] for r in store.recent_runs(2)] == ["new-2", "new-1"]  # in the window
    assert [r["run_id"] for r in store.recent_runs(3)] == ["new-2", "new-1", "hour-1"]
    assert [r["run_id"] for r in store.recent_runs(9)] == ["new-2", "new-1", "hour-1", "old-1"]
    assert store.recent_runs(1)[0]["timestamp"] == utc_iso(now - 1)


NO_OLD_VERSIONS = pytest.mark.filterwarnings("ignore:optimize.cleanup_older_than=0")


@NO_OLD_VERSIONS
def test_maintain_compacts_cleans_up_and_indexes(uri):
    store = RunStore(uri, maintain_every_commits=0, cleanup_older_than_s=0)
    for i in range(6):
        store.record_run(_run(f"run-{i}"))
    assert store.stats(RUNS_TABLE)["fragments"] == 6

    done = {entry["table"]: entry for entry in store.maintain()}

    assert set(done) == set(TABLES)  # every table of the store
    after = store.stats(RUNS_TABLE)
    assert (after["rows"], after["fragments"]) == (6, 1)
    assert after["versions"] <= 2  # the compaction's, and the index update's after it
    assert after["indices"] == 2  # run_id and timestamp
    assert done[RUNS_TABLE]["before"]["fragments"] == 6
    assert store.get_run("run-3")["run_id"] == "run-3"
    assert store.record_run(_run("run-6")) and not store.record_run(_run("run-2"))
    store.close()


@NO_OLD_VERSIONS
def test_maintenance_runs_by_itself_every_n_commits(uri):
    store = RunStore(uri, maintain_every_commits=5, cleanup_older_than_s=0)
    for i in range(5):
        store.record_run(_run(f"run-{i}"))
    store.close()  # waits for the maintenance the fifth commit started

    assert store.stats(RUNS_TABLE)["fragments"] == 1
    assert store.count(RUNS_TABLE) == 5
    store.close()


@NO_OLD_VERSIONS
def test_both_tables_are_maintained_when_their_turns_coincide(uri):
    # A run writes an advice row and a run row, so both tables reach their Nth commit together:
    # the runs table's maintenance must not be dropped because the advice table's still runs.
    store = RunStore(uri, maintain_every_commits=5, cleanup_older_than_s=0)
    for i in range(5):
        store.record_advice(_advice(f"adv-{i}", run_id=f"run-{i}"))
        store.record_run(_run(f"run-{i}"))
    store.close()  # waits for every maintenance run it started

    assert store.stats(ADVICE_TABLE)["fragments"] == 1
    assert store.stats(RUNS_TABLE)["fragments"] == 1
    store.close()


@pytest.mark.integration
def test_maintenance_held_elsewhere_is_skipped(redis_store, redis_client, uri, tmp_path):
    held = redis_client.lock(maintenance_lock_name(uri, RUNS_TABLE), timeout=30)
    other_store = redis_client.lock(
        maintenance_lock_name(str(tmp_path / "other"), ADVICE_TABLE), timeout=30
    )
    assert held.acquire(blocking=False) and other_store.acquire(blocking=False)
    try:  # another store's lock (same Redis, same table name) is not this store's
        done = [entry["table"] for entry in redis_store.maintain()]
        assert done == [name for name in TABLES if name != RUNS_TABLE]
    finally:
        held.release()
        other_store.release()


@pytest.mark.integration
def test_a_maintenance_lock_expires_soon_unless_renewed(redis_store, redis_client, uri):
    # A process killed mid-maintenance leaves its lock behind: it must lapse in seconds, so
    # its table is not left uncompacted for long; a live maintenance renews it meanwhile.
    name = maintenance_lock_name(uri, RUNS_TABLE)
    ttls = []
    with redis_store._maintenance_lock(RUNS_TABLE) as held:
        assert held
        ttls.append(redis_client.pttl(name))
        time.sleep(MAINTAIN_LOCK_TTL_S / 3 + 1)
        ttls.append(redis_client.pttl(name))
    assert 0 < ttls[0] <= MAINTAIN_LOCK_TTL_S * 1000
    assert ttls[1] > (MAINTAIN_LOCK_TTL_S - 2) * 1000  # renewed: unrenewed, it would be ~2/3
    assert not redis_client.exists(name)  # released


@pytest.mark.integration
def test_a_key_claimed_elsewhere_is_waited_for_then_checked(redis_store, redis_client, uri):
    claim = redis_client.lock(f"osiris:lock:{RUNS_TABLE}:run-1", timeout=30)
    assert claim.acquire(blocking=False)
    outcome = []
    writer = threading.Thread(
        target=lambda: outcome.append(redis_store.record_runs([_run("run-1"), _run("run-2")]))
    )
    writer.start()
    wait_until = __import__("time").monotonic() + 30
    while redis_store.count(RUNS_TABLE) < 1 and __import__("time").monotonic() < wait_until:
        __import__("time").sleep(0.05)
    assert redis_store.get_run("run-2") and redis_store.get_run("run-1") is None  # run-2 first
    RunStore(uri).record_run(_run("run-1", status="by the claim holder"))  # it writes, then
    claim.release()  # releases
    writer.join(30)

    assert outcome == [[False, True]]
    assert redis_store.get_run("run-1")["status"] == "by the claim holder"
    assert redis_client.keys("osiris:lock:*") == []


@pytest.mark.integration
def test_a_claim_never_released_is_a_store_error(uri, redis_client):
    store = RunStore(uri, redis=redis_client, lock_timeout_s=0.3)
    assert redis_client.set(f"osiris:lock:{RUNS_TABLE}:run-1", "someone else", px=30_000)
    with pytest.raises(StoreError, match="still claimed") as info:
        store.record_run(_run("run-1"))
    assert info.value.run_id == "run-1"


def _append_batches_in_process(uri: str, worker: int, barrier, results) -> None:
    """Child process: append BATCHES batches of BATCH_ROWS own runs plus a shared run each."""
    store = RunStore(uri, redis=redis.Redis.from_url(REDIS_URL), maintain_every_commits=0)
    try:
        barrier.wait(timeout=120)
        written = []
        for batch in range(BATCHES):
            rows = [_run(f"w{worker}-{batch}-{i}") for i in range(BATCH_ROWS)]
            flags = store.record_runs([*rows, _run(f"shared-{batch}")])
            written += [
                row["run_id"]
                for row, ok in zip([*rows, _run(f"shared-{batch}")], flags, strict=True)
                if ok
            ]
        results.put(written)
    except Exception as exc:  # report, so the parent fails with the reason
        results.put(repr(exc))


def _maintain_in_process(uri: str, barrier, results, stop) -> None:
    """Child process: compact and index until told to stop. Cleanup keeps the minimum window
    Settings allows: with 0 s it can free the version number a writer is about to commit into
    (lance-format/lance#3718), which lost a batch in 3 of 22 runs on a loaded machine."""
    store = RunStore(
        uri,
        redis=redis.Redis.from_url(REDIS_URL),
        cleanup_older_than_s=MIN_STORE_CLEANUP_OLDER_THAN_S,
    )
    try:
        barrier.wait(timeout=120)
        runs = 0
        while not stop.is_set():
            runs += len(store.maintain(RUNS_TABLE))
        results.put(runs)
    except Exception as exc:
        results.put(repr(exc))


BATCHES = 30
BATCH_ROWS = 5


def test_settings_refuse_a_cleanup_window_that_can_drop_concurrent_commits():
    with pytest.raises(ConfigError, match="lance#3718"):
        Settings.from_env({"OSIRIS_STORE_CLEANUP_OLDER_THAN_S": "0"})
    assert Settings.from_env({}).store_cleanup_older_than_s >= MIN_STORE_CLEANUP_OLDER_THAN_S


@pytest.mark.integration
def test_appends_from_two_processes_survive_a_third_compacting(uri, redis_client):
    ctx = multiprocessing.get_context("spawn")
    barrier, results, stop = ctx.Barrier(3), ctx.Queue(), ctx.Event()
    RunStore(uri).count(RUNS_TABLE)  # created up front: the race of interest is compaction
    writers = [
        ctx.Process(target=_append_batches_in_process, args=(uri, w, barrier, results))
        for w in range(2)
    ]
    maintainer = ctx.Process(target=_maintain_in_process, args=(uri, barrier, results, stop))
    for proc in [*writers, maintainer]:
        proc.start()
    reports = [results.get(timeout=240) for _ in writers]
    stop.set()
    maintenance_runs = results.get(timeout=120)
    for proc in [*writers, maintainer]:
        proc.join(timeout=60)

    assert all(isinstance(report, list) for report in reports), reports
    assert isinstance(maintenance_runs, int) and maintenance_runs > 0, maintenance_runs
    written = [run_id for report in reports for run_id in report]
    expected = 2 * BATCHES * BATCH_ROWS + BATCHES
    assert len(written) == len(set(written)) == expected
    store = RunStore(uri)
    assert sorted(row["run_id"] for row in store.iter_runs()) == sorted(written)
    assert store.count(RUNS_TABLE) == expected


# --- seen marks: a key's first write skips the existence query (claims.py) -----------------

SEEN_SINCE = "osiris:seen:since"


def test_a_first_write_is_marked_seen_and_a_duplicate_is_still_refused(redis_store, redis_client):
    assert redis_store.record_run(_run("run-1"))

    assert 0 < redis_client.ttl(f"osiris:seen:{RUNS_TABLE}:run-1") <= 3600
    assert float(redis_client.hvals(SEEN_SINCE)[0]) <= time.time()  # empty table: trusted
    assert not redis_store.record_run(_run("run-1"))
    assert redis_store.count(RUNS_TABLE) == 1


def test_after_redis_loses_the_marks_duplicates_are_still_refused(redis_store, redis_client):
    assert redis_store.record_run(_run("run-1"))
    redis_client.flushdb()  # a restart without persistence

    assert not redis_store.record_run(_run("run-1"))
    assert redis_store.record_run(_run("run-2")) and not redis_store.record_run(_run("run-2"))
    assert redis_store.count(RUNS_TABLE) == 2
    # marks are trusted again only once every row written before has aged past them
    assert float(redis_client.hvals(SEEN_SINCE)[0]) > time.time() + 3000


def test_a_table_with_unmarked_rows_is_looked_up(uri, redis_client):
    RunStore(uri).record_run(_run("run-1"))  # written with no Redis, so with no mark

    store = RunStore(uri, redis=redis_client)
    assert not store.record_run(_run("run-1"))
    assert store.count(RUNS_TABLE) == 1


def test_a_replay_looks_up_a_key_whose_mark_aged_out(redis_store, redis_client):
    assert redis_store.record_run(_run("run-1"))
    redis_client.delete(f"osiris:seen:{RUNS_TABLE}:run-1")

    assert not redis_store.record_run(_run("run-1"), recheck=True)
    assert redis_store.count(RUNS_TABLE) == 1


@NO_OLD_VERSIONS
def test_maintenance_process_does_the_work_and_a_dead_one_is_replaced(uri, caplog):
    store = RunStore(uri, maintain_every_commits=0, cleanup_older_than_s=0)
    for i in range(3):
        store.record_run(_run(f"run-{i}"))

    with caplog.at_level(logging.INFO, logger="osiris_tasks.store.maintenance"):
        done = store.maintain(RUNS_TABLE, in_process=False)

    assert [entry["table"] for entry in done] == [RUNS_TABLE]
    assert done[0]["before"]["fragments"] == 3 and done[0]["after"]["fragments"] == 1
    assert "in the maintenance process" in caplog.text
    pid = store._maintenance_process.pid  # the work ran there, not here
    assert pid not in (None, os.getpid())
    os.kill(pid, signal.SIGKILL)
    time.sleep(0.5)  # the pool notices its process is gone
    store.record_run(_run("run-3"))

    with caplog.at_level(logging.WARNING, logger="osiris_tasks.store.runstore"):
        done = store.maintain(RUNS_TABLE, in_process=False)  # a new process, after a retry

    assert "died before it answered" in caplog.text
    assert done[0]["before"]["fragments"] == 2  # it saw the row written since
    assert store._maintenance_process.pid not in (None, pid)
    assert store.count(RUNS_TABLE) == 4
    store.close()
    assert store._maintenance_process.pid is None


def test_a_table_written_before_a_column_existed_gains_it_and_its_old_rows_still_read(tmp_path):
    """An `orchestrator_runs` table from before the `llm_calls` column: opening the store adds
    the column (null in the old rows, whose calls `osiris runs` then reads from `final_output`)
    and new rows carry it."""
    from osiris_tasks.tools.runs import llm_calls

    uri = str(tmp_path / "lancedb")
    old_schema = pa.schema([f for f in RUNS_SCHEMA if f.name != "llm_calls"])
    old = lancedb.connect(uri).create_table(RUNS_TABLE, schema=old_schema)
    calls = [{"role": "proposal", "backend": "sidecar", "model": "phi3"}]
    old.add(
        pa.Table.from_pylist(
            [
                {
                    "run_id": "run_old",
                    "status": "success",
                    "final_output": orjson.dumps({"llm_calls": calls}).decode(),
                }
            ],
            schema=old_schema,
        )
    )
    store = RunStore(uri)
    row = store.get_run("run_old")
    assert row["llm_calls"] is None and llm_calls(row) == calls
    assert store.record_run({"run_id": "run_new", "status": "success", "llm_calls": "[]"})
    assert (
        store.get_run("run_new")["llm_calls"] == "[]" and llm_calls(store.get_run("run_new")) == []
    )
    assert store.count(RUNS_TABLE) == 2
    store.close()
    assert "llm_calls" in lancedb.connect(uri).open_table(RUNS_TABLE).schema.names
