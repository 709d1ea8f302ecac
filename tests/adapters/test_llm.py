"""The OpenAI-compatible LLM backend against a real HTTP server on loopback (the reference
sidecar's `/v1` API): structured output and its fallback, and every answer that is no answer."""

from __future__ import annotations

import logging
import time

import orjson
import pytest
from conftest import wait_for
from pipeline_helpers import ACCEPTED_BATCH

from osiris_tasks import (
    InProcessRunner,
    Resources,
    RunStatus,
    app,
    configure,
    initial_state,
    submit_run,
)
from osiris_tasks.adapters.llm import ChatCompletionsBackend
from osiris_tasks.adapters.sidecar import SidecarClient
from osiris_tasks.domain.proposal import Proposal, parse_completion, proposal_schema
from osiris_tasks.errors import SidecarResponseError, SidecarStatusError
from osiris_tasks.store.runstore import RunStore
from osiris_tasks.tools.reference_sidecar import Faults

PROMPT = (
    "PORTFOLIO nav=100000.00 daily_pnl=0.00 max_position_pct=1.0000 max_daily_loss_pct=2.0000\n"
    "MARKET\nAAPL last=100.0 ret_pct=+0.1000 vol_pct=0.5000\nEND MARKET\n"
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
    calls = orjson.loads(row["final_output"])["llm_calls"]
    assert [(c["role"], c["backend"], c["model"]) for c in calls] == [
        ("proposal", "openai", "phi3"),
        ("assessment", "openai", "phi3"),
        ("score", "openai", "phi3"),
    ]
    assert all(c["prompt_tokens"] > 0 and c["completion_tokens"] > 0 for c in calls)
    assert all(c["latency_ms"] >= 0 for c in calls)
    assert chat_requests(sidecar_server) - before == 3


@pytest.mark.integration
def test_a_run_through_the_openai_backend_on_a_real_worker(
    settings, sidecar_url, sidecar_server, worker_factory
):
    ChatCompletionsBackend._refused.clear()
    sidecar_server.faults = Faults(refuse_json_schema=True)  # as llama.cpp's server answers
    env = {
        "OSIRIS_LLM_BACKEND": "openai",
        "OSIRIS_LLM_BASE_URL": f"{sidecar_url}/v1",
        "OSIRIS_LLM_API_KEY": KEY,
    }
    configure(app, settings)
    worker = worker_factory(settings, env_extra=env)
    state = initial_state(ACCEPTED_BATCH)
    before = chat_requests(sidecar_server)
    submit_run(app, state)
    store = RunStore(settings.lancedb_uri)
    row = wait_for(lambda: store.get_run(state["run_id"]), timeout_s=60)
    store.close()
    assert row["status"] == RunStatus.SUCCESS, row["error_message"]
    assert row["score"] is not None and row["assessment"]
    # the prefork child's first proposal call was refused once in json_schema, then json mode
    assert chat_requests(sidecar_server) - before >= 4
    assert "refused response_format json_schema" in "".join(worker.output)
    assert KEY not in "".join(worker.output)


def test_a_run_over_its_llm_budget_stops_asking_and_says_so(settings, sidecar_url, sidecar_server):
    """The proposal's call spends the whole token budget: the evaluators are not asked, each
    records `LLMBudgetExceeded`; a run past its LLM deadline is not asked at all and is
    rejected before the gate (fail closed)."""
    ChatCompletionsBackend._refused.clear()
    openai = settings.with_(
        llm_backend="openai", llm_base_url=f"{sidecar_url}/v1", llm_max_tokens_per_run=10
    )
    res, before = Resources.from_settings(openai), chat_requests(sidecar_server)
    try:
        final = InProcessRunner(res).run(initial_state(ACCEPTED_BATCH))
    finally:
        res.close()
    assert chat_requests(sidecar_server) - before == 1
    assert final["status"] == RunStatus.PARTIAL
    assert {(e["node"], e["type"]) for e in final["errors"]} == {
        ("evaluate_proposal", "LLMBudgetExceeded"),
        ("score_proposal", "LLMBudgetExceeded"),
    }
    assert "OSIRIS_LLM_MAX_TOKENS_PER_RUN" in final["errors"][0]["message"]

    late = settings.with_(
        llm_backend="openai", llm_base_url=f"{sidecar_url}/v1", llm_deadline_s=5.0
    )
    res, before = Resources.from_settings(late), chat_requests(sidecar_server)
    try:
        state = initial_state(ACCEPTED_BATCH, created_at=time.time() - 60)
        final = InProcessRunner(res).run(state)
    finally:
        res.close()
    assert chat_requests(sidecar_server) == before
    assert final["status"] == RunStatus.ERROR_RISK_REJECTED
    assert final["errors"][0]["type"] == "LLMBudgetExceeded"
    assert "OSIRIS_LLM_DEADLINE_S" in final["errors"][0]["message"]
