"""The OpenAI-compatible LLM backend against a real HTTP server on loopback (the reference
sidecar's `/v1` API): structured output and its fallback, and every answer that is no answer."""

from __future__ import annotations

import logging

import orjson
import pytest
from pipeline_helpers import ACCEPTED_BATCH

from osiris_tasks import (
    InProcessRunner,
    Resources,
    RunStatus,
    initial_state,
)
from osiris_tasks.adapters.llm import ChatCompletionsBackend
from osiris_tasks.adapters.sidecar import SidecarClient
from osiris_tasks.domain.proposal import Proposal, parse_completion, proposal_schema
from osiris_tasks.errors import SidecarResponseError, SidecarStatusError
from osiris_tasks.store.runstore import RunStore
from osiris_tasks.store.schema import COMPLETIONS_SCHEMA, COMPLETIONS_TABLE
from osiris_tasks.tools.reference_sidecar import Faults
from osiris_tasks.workflow.nodes import record_run

PROMPT = (
    "PORTFOLIO nav=100000.00 daily_pnl=0.00 max_position_pct=1.0000 max_daily_loss_pct=2.0000\n"
    'MARKET\n"AAPL" last=100.0 ret_pct=+0.1000 vol_pct=0.5000\nEND MARKET\n'
)
KEY = "sk-test-0123456789abcdef"
CHAT = "/v1/chat/completions"


def chat_requests(server) -> int:
    return server.requests[CHAT]


@pytest.fixture
def backend(sidecar_server, sidecar_url):
    """A backend on the reference sidecar's `/v1`, forgetting what other tests' servers
    refused (the memory is per base URL, and the session's server is shared)."""
    ChatCompletionsBackend._refused.clear()
    made = []

    def make(**options) -> ChatCompletionsBackend:
        client = SidecarClient(
            f"{sidecar_url}/v1",
            token=options.pop("token", None),
            max_attempts=options.pop("max_attempts", 3),
            retry_budget_s=options.pop("retry_budget_s", 5.0),
        )
        made.append(ChatCompletionsBackend(client, model="phi3", **options))
        return made[-1]

    yield make
    for item in made:
        item.close()


def test_the_schema_is_the_proposals_fields_all_required_with_the_batchs_tickers():
    schema = proposal_schema(["AAPL", "MSFT"])
    assert set(schema["properties"]) == set(Proposal.model_fields)
    assert schema["required"] == list(schema["properties"])
    assert schema["additionalProperties"] is False
    assert schema["properties"]["ticker"]["enum"] == ["AAPL", "MSFT"]


def test_a_structured_proposal_parses_and_the_evaluators_answer(backend, sidecar_server):
    llm, before = backend(), chat_requests(sidecar_server)
    body = llm.generate(PROMPT, max_length=256, symbols=["AAPL"], run_id="r1")
    proposal, raw = parse_completion(body)
    assert proposal["ticker"] == "AAPL" and raw.startswith("{")  # the JSON alone
    assessed = llm.propose_trade_adjustments(raw, max_length=256, run_id="r1")
    assert "AAPL" in assessed["hermes_assessment"]
    assert 0 <= llm.score(proposal, "AAPL up", run_id="r1") <= 1
    assert chat_requests(sidecar_server) - before == 3


def test_a_server_refusing_json_schema_is_asked_in_json_mode_once_and_remembered(
    backend, sidecar_server, caplog
):
    sidecar_server.faults = Faults(refuse_json_schema=True)
    llm, before = backend(max_attempts=4), chat_requests(sidecar_server)
    with caplog.at_level(logging.WARNING):
        first = llm.generate(PROMPT, max_length=256, symbols=["AAPL"])
        second = llm.generate(PROMPT, max_length=256, symbols=["AAPL"])
    assert parse_completion(first)[0] == parse_completion(second)[0]
    # one refused json_schema request (not retried), then json_object, then json_object again
    assert chat_requests(sidecar_server) - before == 3
    assert sum("refused response_format json_schema" in r.getMessage() for r in caplog.records) == 1
    assert llm.breaker.state == "closed"


@pytest.mark.parametrize(
    ("faults", "message"),
    [
        (Faults(truncate_rate=1), r"cut short \(finish_reason length"),
        (Faults(garbage_rate=1), "answered non-JSON"),
        (Faults(wrong_shape_rate=1), "answered no choices"),
    ],
)
def test_an_answer_that_is_no_answer_is_an_error(backend, sidecar_server, faults, message):
    sidecar_server.faults = faults
    with pytest.raises(SidecarResponseError, match=message):
        backend().generate(PROMPT, max_length=256, symbols=["AAPL"], run_id="r2")


def test_a_wrong_key_is_not_retried_names_the_setting_and_never_shows_the_key(
    backend, sidecar_server, monkeypatch, caplog
):
    monkeypatch.setattr(sidecar_server, "token", "the-right-one")
    llm = backend(token=KEY, max_attempts=4)
    with caplog.at_level(logging.DEBUG), pytest.raises(SidecarStatusError) as info:
        llm.score({"ticker": "AAPL"}, "c")
    assert info.value.status == 401 and "OSIRIS_LLM_API_KEY" in info.value.message
    assert KEY not in str(info.value) and KEY not in repr(llm) and KEY not in caplog.text
    assert "sidecar retry" not in caplog.text


def test_429_with_retry_after_is_waited_for(backend, sidecar_server):
    sidecar_server.faults = Faults(error_rate=1, error_status=429, retry_after_s=0.2)
    llm, before = backend(max_attempts=2, retry_budget_s=2.0), chat_requests(sidecar_server)
    with pytest.raises(SidecarStatusError, match="HTTP 429"):
        llm.score({"ticker": "AAPL"}, "c")
    assert chat_requests(sidecar_server) - before == 2


def test_a_run_through_the_openai_backend_is_recorded(settings, sidecar_url, sidecar_server):
    ChatCompletionsBackend._refused.clear()
    openai = settings.with_(llm_backend="openai", llm_base_url=f"{sidecar_url}/v1", llm_api_key=KEY)
    res, before = Resources.from_settings(openai), chat_requests(sidecar_server)
    assert isinstance(res.llm, ChatCompletionsBackend) and KEY not in repr(res)
    try:
        final = InProcessRunner(res).run(initial_state(ACCEPTED_BATCH))
    finally:
        res.close()
    assert final["status"] == RunStatus.SUCCESS, final.get("errors")
    row = RunStore(settings.lancedb_uri).get_run(final["run_id"])
    assert row["status"] == RunStatus.SUCCESS and row["raw_completion"].startswith("{")
    calls = orjson.loads(row["llm_calls"])
    assert "llm_calls" not in orjson.loads(row["final_output"])  # one home: its own column
    assert [(c["role"], c["backend"], c["model"], c["cached"]) for c in calls] == [
        ("proposal", "openai", "phi3", False),
        ("assessment", "openai", "phi3", False),
        ("score", "openai", "phi3", False),
    ]
    assert all(c["prompt_tokens"] > 0 and c["completion_tokens"] > 0 for c in calls)
    assert all(c["latency_ms"] >= 0 for c in calls)
    assert all("completion" not in c and "request" not in c for c in calls)
    assert chat_requests(sidecar_server) - before == 3


def replay(settings, state, mode: str):
    """`state` run in-process with the completion cache in `mode`."""
    res = Resources.from_settings(settings.with_(llm_cache=mode))
    try:
        return InProcessRunner(res).run(state)
    finally:
        res.close()


@pytest.mark.parametrize("backend_name", ["openai", "sidecar"])
def test_a_cached_run_replays_byte_for_byte_without_asking_the_server(
    settings, sidecar_url, sidecar_server, backend_name
):
    """OSIRIS_LLM_CACHE=write (the default) keeps the run's three completions in
    `completions`; the same batch replayed with `read` asks the server nothing and records the
    same proposal, text byte for byte, with every call marked cached; a batch never asked is
    a recorded LLMCacheMiss, rejected before the gate, still without asking."""
    ChatCompletionsBackend._refused.clear()
    live = settings.with_(llm_backend=backend_name, llm_base_url=f"{sidecar_url}/v1")
    assert live.llm_cache == "write"
    requests = sum(sidecar_server.requests.values())
    first = replay(live, initial_state(ACCEPTED_BATCH), "write")
    assert first["status"] == RunStatus.SUCCESS, first.get("errors")
    store = RunStore(settings.lancedb_uri)
    rows = {
        r["role"]: r
        for r in store.completion_columns(list(COMPLETIONS_SCHEMA.names), 100).to_pylist()
        if r["run_id"] == first["run_id"]
    }
    assert set(rows) == {"proposal", "assessment", "score"}
    # the completion as the backend answered it: the assistant's text, the sidecar's body
    cached_text = rows["proposal"]["completion"]
    if backend_name == "sidecar":
        cached_text = orjson.loads(cached_text)["output"]
    assert cached_text == first["raw_completion"]
    assert {r["backend"] for r in rows.values()} == {backend_name}
    assert [c["key"] for c in first["llm_calls"]] == [
        rows[c["role"]]["completion_key"] for c in first["llm_calls"]
    ]
    asked = sum(sidecar_server.requests.values())
    assert asked - requests >= 3

    again = replay(live, initial_state(ACCEPTED_BATCH), "read")
    assert sum(sidecar_server.requests.values()) == asked  # not one request
    assert again["status"] == RunStatus.SUCCESS, again.get("errors")
    assert again["raw_completion"] == first["raw_completion"]
    assert (again["proposal"], again["score"], again["assessment"]["hermes_assessment"]) == (
        first["proposal"],
        first["score"],
        first["assessment"]["hermes_assessment"],
    )
    assert [(c["role"], c["cached"]) for c in again["llm_calls"]] == [
        ("proposal", True),
        ("assessment", True),
        ("score", True),
    ]
    assert [c["prompt_tokens"] for c in again["llm_calls"]] == [
        c["prompt_tokens"] for c in first["llm_calls"]
    ]
    row = store.get_run(again["run_id"])
    assert [c["cached"] for c in orjson.loads(row["llm_calls"])] == [True, True, True]
    assert store.count(COMPLETIONS_TABLE) == 3  # the replay added none

    other = [dict(tick, close=tick["close"] * 1.5) for tick in ACCEPTED_BATCH]
    missed = replay(live, initial_state(other), "read")
    assert sum(sidecar_server.requests.values()) == asked
    assert missed["status"] == RunStatus.ERROR_RISK_REJECTED
    assert missed["errors"][0]["type"] == "LLMCacheMiss"
    assert "OSIRIS_LLM_CACHE=read" in missed["errors"][0]["message"]
    store.close()


def test_completions_are_written_once_under_redelivery(settings, sidecar_url, sidecar_server):
    """`record_run` delivered again writes none of the run's completions twice (keyed); with
    `readwrite` a run the cache holds asks the server nothing and adds nothing."""
    ChatCompletionsBackend._refused.clear()
    live = settings.with_(llm_backend="openai", llm_base_url=f"{sidecar_url}/v1")
    final = replay(live, initial_state(ACCEPTED_BATCH), "readwrite")  # empty cache: all asked
    assert [c["cached"] for c in final["llm_calls"]] == [False, False, False]
    res = Resources.from_settings(live)
    try:
        redelivered = record_run(
            final, store=res.store, deadletter=res.deadletter, completions=res.completions
        )
        assert redelivered["recorded"] and res.completions.staged() == 3  # staged again...
        assert res.completions.flush() == 3
        assert res.store.count(COMPLETIONS_TABLE) == 3  # ...and written once
    finally:
        res.close()
    before = chat_requests(sidecar_server)
    again = replay(live, initial_state(ACCEPTED_BATCH), "readwrite")
    assert chat_requests(sidecar_server) == before
    assert [c["cached"] for c in again["llm_calls"]] == [True, True, True]
    store = RunStore(settings.lancedb_uri)
    assert store.count(COMPLETIONS_TABLE) == 3
    store.close()
