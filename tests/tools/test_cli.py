"""The command line and the public surface, as a user meets them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import orjson
import pyarrow.parquet as pq
import pytest
import redis
import requests
from conftest import REPO, settings_env, wait_for
from pipeline_helpers import ACCEPTED_BATCH, REJECTED_BATCH

from osiris_tasks import InProcessRunner, Resources, RunStore, initial_state
from osiris_tasks.adapters.deadletter import DeadLetter
from osiris_tasks.tools.cli import main
from osiris_tasks.tools.embedded_redis import free_port
from osiris_tasks.workflow.nodes import run_row


@pytest.fixture
def recorded_runs(settings):
    res = Resources.from_settings(settings)
    runner = InProcessRunner(res)
    finals = [runner.run(initial_state(batch)) for batch in (ACCEPTED_BATCH, REJECTED_BATCH)]
    res.close()
    return settings, finals


def test_runs_list_show_export(recorded_runs, capsys, tmp_path, monkeypatch):
    settings, finals = recorded_runs
    uri = ["--lancedb_uri", settings.lancedb_uri]
    assert main(["runs", "list", *uri]) == 0
    listing = capsys.readouterr().out
    for final in finals:
        assert final["run_id"] in listing
    assert "success_risk_rejected" in listing and "accepted" in listing

    assert main(["runs", "show", finals[0]["run_id"], *uri]) == 0
    shown = capsys.readouterr().out
    head = json.loads(shown.split("\n\n--- prompt ---")[0])
    assert head["status"] == "success" and head["verdict"]["accepted"] is True
    assert set(head["timings_ms"]) >= {"query_market", "publish_events"}
    assert head["ticks_summary"]["AAPL"]["ticks"] == 10
    # the sidecar's API reports no tokens: the calls are there, their tokens None
    assert [(c["role"], c["backend"], c["prompt_tokens"]) for c in head["llm_calls"]] == [
        ("proposal", "sidecar", None),
        ("assessment", "sidecar", None),
        ("score", "sidecar", None),
    ]
    assert "PORTFOLIO nav=" in shown and "--- raw completion ---" in shown

    assert main(["runs", "show", "run_missing", *uri]) == 1
    capsys.readouterr()

    out = tmp_path / "runs.jsonl"
    assert main(["runs", "export", "--format", "jsonl", "--output", str(out), *uri]) == 0
    rows = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    assert {r["run_id"] for r in rows} == {f["run_id"] for f in finals}
    assert all(r["prompt"] and r["completion"] for r in rows)
    assert all(orjson.loads(r["llm_calls"])[0]["role"] == "proposal" for r in rows)
    parquet = tmp_path / "runs.parquet"
    assert main(["runs", "export", "--format", "parquet", "--output", str(parquet), *uri]) == 0
    assert pq.read_table(parquet).num_rows == 2


def test_runs_replay_records_dead_lettered_runs_in_the_store_it_is_given(settings, tmp_path):
    """`osiris runs replay --lancedb_uri ... --redis_url ...`: the dead-lettered run lands in
    that store, once, whatever the environment says."""
    row = run_row(initial_state(ACCEPTED_BATCH))
    client = redis.Redis.from_url(settings.redis_url)
    DeadLetter(client).push(row, reason="disk full")
    uri = str(tmp_path / "elsewhere")
    args = ["runs", "replay", "--lancedb_uri", uri, "--redis_url", settings.redis_url]
    assert main(args) == 0
    assert main(args) == 0  # nothing left: still a success, nothing written twice
    store = RunStore(uri)
    assert [r["run_id"] for r in store.iter_runs()] == [row["run_id"]]
    store.close()
    client.close()


def test_sidecar_command_serves_and_stops_on_sigterm(tmp_path):
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "osiris_tasks.tools.cli", "sidecar", "--port", str(port)],
        cwd=REPO,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        health = wait_for(lambda: _get(f"http://127.0.0.1:{port}/health"), timeout_s=30)
        assert health["stand_in"] is True
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0


def _get(url):
    try:
        return requests.get(url, timeout=1).json()
    except requests.RequestException:
        return None


@pytest.mark.integration
@pytest.mark.parametrize("llm_backend", ["sidecar", "openai"])
def test_demo_runs_to_completion_with_an_embedded_redis(settings, tmp_path, llm_backend):
    env = settings_env(settings)
    env["OSIRIS_REDIS_URL"] = f"redis://127.0.0.1:{free_port()}/0"  # nothing there: embedded
    env["OSIRIS_LANCEDB_URI"] = str(tmp_path / "demo_lancedb")
    env.pop("OSIRIS_SIDECAR_URL")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "osiris_tasks.tools.cli",
            "demo",
            "--duration",
            "4",
            "--rate",
            "15",
            "--llm_backend",
            llm_backend,
        ],
        cwd=tmp_path,
        env={**env, "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=240,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert "starting an embedded one" in output
    assert "runs recorded in LanceDB at" in output
    assert "latest runs" in output
    # The runs got through the LLM calls: no run failed before the gate.
    assert "success" in output and "error_risk_rejected" not in output
    # The demo trades on the paper book and shows it at the end.
    assert "Paper book (OSIRIS_BOOK=paper): NAV 100,000.00 at the start" in output
    assert "The paper book after the demo" in output and "pending orders" in output
    assert "osiris backtest --from_runs" in output
    # It stopped everything it started: no child of the demo is left running.
    leftovers = subprocess.run(["pgrep", "-f", env["OSIRIS_LANCEDB_URI"]], capture_output=True)
    assert leftovers.stdout == b"", os.linesep.join(output.splitlines()[-20:])


def test_halt_book_and_resume_from_the_command_line(settings, capsys):
    """`osiris halt` throws the kill switch and says so on `risk.halted`; the next run is
    rejected with rule `halted`; `osiris book --json` shows the halt; `osiris resume` releases
    it and says so on `risk.resumed`."""
    from pipeline_helpers import EventListener

    url = ["--redis_url", settings.redis_url]
    listener = EventListener(settings.redis_url, "risk.halted", "risk.resumed")
    try:
        assert main(["halt", "--reason", "desk review", *url]) == 0
        res = Resources.from_settings(settings.with_(book="paper"))
        try:
            final = InProcessRunner(res).run(initial_state(ACCEPTED_BATCH))
        finally:
            res.close()
        assert (final["verdict"]["accepted"], final["verdict"]["rule"]) == (False, "halted")
        capsys.readouterr()
        assert main(["book", "--json", *url]) == 0
        shown = json.loads(capsys.readouterr().out)
        assert shown["halted"]["reason"] == "desk review" and shown["nav"] == settings.nav
        assert main(["resume", *url]) == 0
        wait_for(lambda: len(listener.messages) == 2, timeout_s=5)
    finally:
        listener.close()
    (halted_on, halted), (resumed_on, resumed) = listener.messages
    assert (halted_on, halted["reason"], halted["by"]) == ("risk.halted", "desk review", "operator")
    assert (resumed_on, resumed["released"]["reason"]) == ("risk.resumed", "desk review")
    assert redis.Redis.from_url(settings.redis_url).get("osiris:risk:halt") is None
