"""The paper book under a SIGKILL: every accepted run's order is filled exactly once, in Redis and
in LanceDB, whatever the killed worker's redelivered tasks do again."""

from __future__ import annotations

import os
import signal
import time

import pytest
from conftest import wait_for
from pipeline_helpers import (
    ACCEPTED_BATCH,
    REJECTED_BATCH,
    assert_each_recorded_once,
    received_ids,
    unfinished,
    wait_recorded,
)
from reliability_report import record

from osiris_tasks import Resources, app, configure, initial_state
from osiris_tasks.domain import book as paper
from osiris_tasks.store.runstore import RunStore
from osiris_tasks.tasks.canvas import submit_run
from osiris_tasks.tools.reference_sidecar import Faults

VISIBILITY_S = 12
PAPER = {"OSIRIS_BOOK": "paper", "OSIRIS_BOOK_FILL_AT": "batch_close"}
DECIDING = ("osiris.risk_management", "osiris.evaluate_proposal", "osiris.score_proposal")


@pytest.mark.integration
def test_sigkill_mid_run_fills_each_accepted_order_exactly_once(
    settings, sidecar_server, worker_factory
):
    settings = settings.with_(
        visibility_timeout_s=VISIBILITY_S,
        sidecar_retry_budget_s=5,
        book="paper",
        book_fill_at="batch_close",
    )
    sidecar_server.faults = Faults(latency_ms=300)
    configure(app, settings)
    worker = worker_factory(settings, env_extra=PAPER)
    states = [initial_state(ACCEPTED_BATCH if i % 3 else REJECTED_BATCH) for i in range(12)]
    run_ids = [s["run_id"] for s in states]
    for state in states:
        submit_run(app, state)
    wait_for(
        lambda: any(name in DECIDING for name in unfinished(worker.output).values()),
        timeout_s=60,
        interval_s=0.02,
    )
    os.killpg(worker.proc.pid, signal.SIGKILL)
    worker.proc.wait(10)
    time.sleep(0.2)
    in_flight = unfinished(worker.output)
    replacement = worker_factory(settings, env_extra=PAPER)
    store = RunStore(settings.lancedb_uri)
    try:
        wait_recorded(store, run_ids, VISIBILITY_S + 120, replacement)
        assert_each_recorded_once(store, run_ids)
        accepted = {
            row["run_id"]
            for run_id in run_ids
            for row in store.get_advice(run_id)
            if row["accepted"]
        }
        fills = store.fills()
    finally:
        store.close()
    assert set(in_flight) <= received_ids(replacement.output)  # redelivered
    res = Resources.from_settings(settings)
    try:
        book = res.portfolio.book()
    finally:
        res.close()
    # one fill per accepted run, in the book and in LanceDB, and nothing else
    assert accepted and book.fills == len(accepted)
    assert sorted(f["fill_id"] for f in fills) == sorted(accepted)
    quantity = sum(f["quantity"] if f["side"] == "LONG" else -f["quantity"] for f in fills)
    assert book.positions["AAPL"].quantity == pytest.approx(quantity)
    assert paper.nav(book) == pytest.approx(
        book.capital + book.realised_pnl + paper.unrealised_pnl(book) - book.fees
    )
    record(
        "test_sigkill_mid_run_fills_each_accepted_order_exactly_once",
        runs=len(run_ids),
        accepted=len(accepted),
        fills_in_book=book.fills,
        fills_in_lancedb=len(fills),
        tasks_in_flight_at_kill=len(in_flight),
        in_flight=sorted(set(in_flight.values())),
    )
