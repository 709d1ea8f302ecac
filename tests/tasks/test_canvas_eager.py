"""Canvas wiring in eager mode: each path of the graph, on real Redis, LanceDB and sidecar.

Eager mode only replaces the broker (and joins the evaluators with Celery's chord, in place); the
real-worker suite (test_pipeline_worker.py) is the one that proves serialization, routing and
the Redis join (join.py).
"""

from __future__ import annotations

import orjson
import pytest
import redis
from pipeline_helpers import ACCEPTED_BATCH, LARGE_ACCEPTED_BATCH, REJECTED_BATCH

from osiris_tasks import app, configure, initial_state, submit_run
from osiris_tasks.store.runstore import RunStore
from osiris_tasks.tasks.canvas import build_canvas
from osiris_tasks.tools.reference_sidecar import Faults


@pytest.fixture
def eager(settings):
    configure(app, settings)
    app.conf.update(task_always_eager=True, task_eager_propagates=True)
    yield settings
    app.conf.update(task_always_eager=False, task_eager_propagates=False)


def run(batch):
    state = initial_state(batch)
    final = submit_run(app, state).get()
    return state["run_id"], final


def recorded(settings, run_id):
    store = RunStore(settings.lancedb_uri)
    row = store.get_run(run_id)
    advice = store.get_advice(run_id)
    store.close()
    return row, advice


def test_canvas_starts_with_the_entry_chain_and_carries_run_id(eager):
    state = initial_state(ACCEPTED_BATCH)
    canvas = build_canvas(app, state)
    names = [t.task for t in canvas.tasks]
    assert names == ["osiris.query_market", "osiris.generate_proposal", "osiris.risk_management"]
    assert all(t.kwargs["run_id"] == state["run_id"] for t in canvas.tasks)
    assert canvas.tasks[0].options["task_id"] == state["run_id"]


def test_accepted_path_runs_the_chord(eager):
    run_id, final = run(ACCEPTED_BATCH)
    assert final["verdict"]["accepted"] is True
    assert final["assessment"]["hermes_assessment"]
    assert 0 <= final["score"] <= 1
    assert set(final["timings_ms"]) == {
        "query_market",
        "generate_proposal",
        "risk_management",
        "evaluate_proposal",
        "score_proposal",
        "publish_events",
        "record_run",
    }
    row, advice = recorded(eager, run_id)
    assert row["status"] == "success" and row["verdict"] == "accepted"
    assert [a["accepted"] for a in advice] == [True]


def test_a_large_batch_travels_by_reference_and_is_recorded_whole(eager):
    run_id, final = run(LARGE_ACCEPTED_BATCH)
    assert final["ticks"] == [] and final["ticks_ref"].endswith(run_id)
    assert final["status"] == "success" and final["recorded"] is True
    row, _ = recorded(eager, run_id)
    assert len(orjson.loads(row["input_query"])) == len(LARGE_ACCEPTED_BATCH)
    assert redis.Redis.from_url(eager.redis_url).exists(final["ticks_ref"]) == 0


def test_rejected_path_skips_the_evaluators(eager):
    run_id, final = run(REJECTED_BATCH)
    assert final["verdict"] == {
        "accepted": False,
        "rule": "position_size_limit",
        "reason": final["verdict"]["reason"],
    }
    assert "evaluate_proposal" not in final["timings_ms"]
    row, advice = recorded(eager, run_id)
    assert row["status"] == "success_risk_rejected"
    assert advice[0]["rule"] == "position_size_limit"


def test_sidecar_failure_is_recorded_not_lost(eager, sidecar_server):
    sidecar_server.faults = Faults(error_rate=1.0)
    run_id, final = run(ACCEPTED_BATCH)
    row, advice = recorded(eager, run_id)
    assert row["status"] == "error_risk_rejected"
    assert "generate_proposal" in row["error_message"] and "503" in row["error_message"]
    assert advice[0]["rule"] == "upstream_error"


def test_invalid_completion_is_recorded_with_its_raw_text(eager, sidecar_server):
    sidecar_server.faults = Faults(garbage_rate=1.0)
    run_id, final = run(ACCEPTED_BATCH)
    row, _ = recorded(eager, run_id)
    assert row["status"] == "error_risk_rejected"
    assert "garbage" in row["raw_completion"]
    assert orjson.loads(row["final_output"])["proposal"] is None


def test_evaluator_failure_inside_the_chord_still_records_the_run(eager, sidecar_server):
    sidecar_server.faults = Faults(error_rate=1.0, paths=("/propose_trade_adjustments",))
    run_id, final = run(ACCEPTED_BATCH)
    assert final["score"] is not None  # the other evaluator's result survives the join
    row, _ = recorded(eager, run_id)
    assert row["status"] == "partial_success_with_errors"
    assert "evaluate_proposal" in row["error_message"]
