"""Keeps the benchmark suite from rotting: its cheapest benchmark at tiny sizes (not timed)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

# benchmarks/ is a top-level package of the repository, not of the installed distribution.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import store_bench  # noqa: E402
from benchmarks.report import Report  # noqa: E402

pytestmark = pytest.mark.integration


@pytest.mark.filterwarnings("ignore:optimize.cleanup_older_than=0")
def test_store_benchmark_at_tiny_sizes_writes_a_report(redis_url, tmp_path):
    report = Report(quick=True)

    store_bench.run(report, sizes=store_bench.TINY, redis_url=redis_url)

    figures = {figure.name: figure for figure in report.figures}
    single = figures["record_run, 1 row per commit, 1 thread"]
    batched = figures[f"record_runs, {store_bench.TINY.batch_rows} rows per call"]
    assert single.value > 0 and batched.baseline == single.name and batched.ratio > 0
    assert figures["1 row per commit: fragments after 10 rows"].value == 10
    assert (
        figures[f"{store_bench.TINY.batch_rows} rows per call: fragments after 10 rows"].value == 2
    )
    json_path, md_path = report.write(tmp_path)
    assert json.loads(json_path.read_text())["figures"][0]["name"] == single.name
    assert "| store | record_run, 1 row per commit, 1 thread |" in md_path.read_text()


def test_accepted_run_states_take_the_whole_graph():
    from benchmarks.batches import run_states
    from benchmarks.rows import finished_state

    states = run_states(5, seed=3, accepted=True)

    assert len({state["run_id"] for state in states}) == 5
    assert all(finished_state(state["ticks"])["verdict"]["accepted"] for state in states)
    assert not all(
        finished_state(s["ticks"])["verdict"]["accepted"] for s in run_states(20, seed=3)
    )  # the filter is doing something


def test_bridge_benchmark_at_tiny_sizes_loses_nothing(redis_url):
    from benchmarks import bridge_bench

    report = Report(quick=True)

    bridge_bench.run(report, sizes=bridge_bench.TINY, redis_url=redis_url)

    figures = {figure.name.split(",")[0]: figure for figure in report.figures}
    assert figures["bare redis-py subscriber (get_message loop)"].value > 0
    bridge = next(f for f in report.figures if "drain rate" in f.name and f.baseline)
    assert bridge.ratio > 0  # its counters showed no loss, or run() raised


def test_hot_paths_benchmark_compares_each_with_what_it_replaced(redis_url):
    from benchmarks import hotpaths_bench

    report = Report(quick=True)

    # raises if anything is left unacked or a run is not queued
    hotpaths_bench.run(report, messages=20, runs=40, tick_count=300, redis_url=redis_url)

    names = [figure.name for figure in report.figures]
    assert len(names) == 11 and "kombu's QoS" in names[0] and "chain" in names[5]
    assert "stock" in names[2] and "BRPOP" in names[3] and "fetch" in names[4]
    assert all(f.value > 0 for f in report.figures)
    assert all(f.ratio > 0 for f in report.figures if f.baseline)


def test_floor_chain_runs_the_naive_canvas_on_the_projects_celery_configuration(redis_url):
    import redis

    from benchmarks import celery_bench
    from benchmarks.env import redis_pid

    report = Report(quick=True)
    client = redis.Redis.from_url(redis_url)
    label = next(label for label in celery_bench.NOOP_CHAINS if label.startswith("floor"))
    pid = redis_pid(redis_url)
    done_before = int(client.get("bench:floor:done") or 0)

    rate, cpu = celery_bench._noop_chain(report, label, client, 3, redis_url, 60.0, pid)

    assert rate.value > 0 and cpu.value > 0
    assert set(cpu.params) == {"redis", celery_bench.BENCH, "worker 1", "worker 2"}
    # Every run reached its last task: the warm-up's 2 and the 3 measured.
    assert int(client.get("bench:floor:done")) - done_before == 5
    # Its subscriptions to the runs' results are gone (later tests count Pub/Sub clients).
    assert not client.pubsub_channels()
    client.close()


def test_sidecar_budget_floor_measures_a_no_op_task_per_call(redis_url, tmp_path):
    import redis

    from benchmarks import sidecar_bench
    from benchmarks.env import bench_settings, redis_pid

    report = Report(quick=True)
    client = redis.Redis.from_url(redis_url)
    settings = bench_settings(redis_url, "http://unused", str(tmp_path))

    sidecar_bench._floor(
        report,
        client,
        settings,
        2,
        60.0,
        pids={"redis": redis_pid(redis_url)},
        call_ms=1.5,
        target=400.0,
    )

    (budget,) = report.figures
    assert budget.unit == "cores" and set(budget.params["celery_ms_per_task"]) == {
        "redis",
        "worker",
    }
    task_ms = sum(budget.params["celery_ms_per_task"].values())
    per_call = budget.params["cpu_ms_per_call"]
    assert task_ms > 0  # a task is not free, and its cost is added to the call's own
    assert per_call == pytest.approx(task_ms + 1.5, abs=0.002)
    assert budget.value == pytest.approx(400.0 * per_call / 1000, abs=0.01)
    assert client.llen("osiris.default") == 0 and client.hlen(sidecar_bench.UNACKED_KEY) == 0
    client.close()


def test_one_task_per_run_design_runs_the_whole_graph_in_one_task(redis_url, tmp_path):
    from benchmarks import celery_bench, runtask_app
    from benchmarks.batches import run_states
    from benchmarks.env import bench_settings, redis_pid, sidecar_process
    from osiris_tasks.store.runstore import RunStore

    report = Report(quick=True)
    label, worker_args = next(iter(celery_bench.ONE_TASK_PER_RUN.items()))

    with sidecar_process() as sidecar_url:
        settings = bench_settings(redis_url, sidecar_url, str(tmp_path))
        # raises unless every run of the warm-up's 2 and the 3 measured is recorded
        rate, _ = celery_bench._layout(
            report,
            settings,
            label,
            worker_args,
            run_states(3, accepted=True),
            60.0,
            pids={"redis": redis_pid(redis_url), "sidecar": sidecar_url.pid},
            app_module=runtask_app.__name__,
            submit=runtask_app.submit,
        )

    assert rate.value > 0 and rate.params["layout"] == label
    store = RunStore(settings.lancedb_uri)
    runs = store.recent_runs(10)
    store.close()
    assert len(runs) == 5
    # Each run took every node of the graph in its one task: accepted, assessed and scored.
    assert all(
        run["status"] == "success"
        and run["verdict"] == "accepted"
        and run["score"] is not None
        and run["assessment"]
        for run in runs
    )


def test_cache_benchmark_at_tiny_sizes_answers_every_lookup():
    from benchmarks import cache_bench

    report = Report(quick=True)
    cache_bench.run(report, rows=cache_bench.TINY_ROWS)
    figures = {f.name: f for f in report.figures}
    rows = cache_bench.TINY_ROWS
    hit = figures[f"cache lookup (hit) at {rows} rows, p50"]
    assert hit.baseline == f"LanceDB point query (get_completion) at {rows} rows, p50"
    assert figures[f"cache's in-memory copy loaded, {rows} rows"].value > 0


def test_llm_backends_benchmark_compares_openai_with_sidecar(redis_url, tmp_path):
    from benchmarks import sidecar_bench
    from benchmarks.env import bench_settings, sidecar_process

    report = Report(quick=True)
    with sidecar_process(latency_ms=0) as url:
        settings = bench_settings(redis_url, url, str(tmp_path))
        sidecar_bench._backends(
            report, settings, url.pid, sidecar_bench.BackendSizes(rounds=1, calls_per_slot=1)
        )
    units = sorted((f.name, f.unit) for f in report.figures)
    assert len(units) == 6 and {unit for _, unit in units} >= {"calls/s"}
    assert all(f.value > 0 for f in report.figures)


def test_book_benchmark_at_tiny_sizes_fills_every_order(redis_url, tmp_path):
    from benchmarks import book_bench
    from benchmarks.env import sidecar_process

    report = Report(quick=True)
    with sidecar_process(latency_ms=0) as url:
        book_bench.run(report, sizes=book_bench.TINY, redis_url=redis_url, sidecar_url=url)
    figures = {f.name: f for f in report.figures}
    fills = figures["fills through decide (gate in the transaction, order marker), 1 thread"]
    assert fills.baseline == "bare GET + SET per fill" and fills.value > 0
    assert figures["in-process runs, OSIRIS_BOOK=paper"].baseline == (
        "in-process runs, OSIRIS_BOOK=static"
    )


def test_backtest_benchmark_at_tiny_sizes_replays_from_the_cache(redis_url, tmp_path):
    from benchmarks import backtest_bench
    from benchmarks.env import bench_settings, sidecar_process

    report = Report(quick=True)
    with sidecar_process(latency_ms=0) as url:
        settings = bench_settings(redis_url, url, str(tmp_path))
        backtest_bench.run(report, sizes=backtest_bench.TINY, settings=settings)
    (bare, cached, year) = report.figures
    assert cached.baseline == bare.name and cached.value > 0 and year.unit == "min"


def test_stream_benchmark_at_tiny_sizes_loses_nothing(redis_url):
    from benchmarks import stream_bench

    report = Report(quick=True)
    stream_bench.run(report, sizes=stream_bench.TINY, redis_url=redis_url)
    figures = {f.name: f for f in report.figures}
    bridge = next(f for name, f in figures.items() if name.startswith("osiris bridge --source"))
    assert bridge.params["runs_queued"] == 300  # 3,000 ticks over three symbols, 10 a run
    restart = next(f for name, f in figures.items() if name.startswith("bridge restarted"))
    assert 0 < restart.value < 30


def test_scale_benchmark_at_tiny_sizes_measures_each_table(redis_url):
    from benchmarks import scale_bench

    report = Report(quick=True)
    scale_bench.run(report, sizes=scale_bench.TINY, redis_url=redis_url)
    names = [f.name for f in report.figures]
    for table in ("orchestrator_runs", "advice", "fills", "completions"):
        assert f"{table}: one maintenance pass at 1,000 runs" in names
    assert "get_run at 1,000 runs" in names
