"""The OpenAI-compatible backend against a server we did not write: llama.cpp's, through
llama-cpp-python (`python -m llama_cpp.server`), serving the tiny random-weight llama of
`llm_fixtures`.

The stand-in of `test_llm.py` answers the way we think servers answer; this one answers the
way llama.cpp does. Its model talks nonsense, so these tests do not judge answers: they check
what the client does with a real server's refusals, grammar-constrained JSON, `finish_reason`
and scores, and that a whole run on it is recorded consistently. Sampling is greedy
(temperature 0), so each outcome is deterministic and asserted as such.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import requests
from conftest import missing_dependency
from llm_fixtures import write_tiny_llama
from pipeline_helpers import ACCEPTED_BATCH

from osiris_tasks import InProcessRunner, Resources, RunStatus, initial_state
from osiris_tasks.adapters.llm import ROLE_MARKER, SYSTEM_PROMPTS, ChatCompletionsBackend
from osiris_tasks.adapters.sidecar import SidecarClient
from osiris_tasks.domain.proposal import parse_completion, proposal_schema
from osiris_tasks.domain.risk import assess
from osiris_tasks.errors import SidecarResponseError
from osiris_tasks.store.runstore import RunStore
from osiris_tasks.tools.embedded_redis import free_port
from osiris_tasks.tools.processes import terminate

pytestmark = pytest.mark.integration

# The server's context: the proposal prompt (~1,000 tokens of single characters) plus an answer.
N_CTX = 2048
# Enough for a whole proposal from the tiny model with room to spare.
MAX_TOKENS = 400
SERVER_READY_TIMEOUT_S = 60.0
SERVER_STOP_TIMEOUT_S = 10.0
MODEL = "tiny"
# The proposal prompt, frozen: the seeded model's answers below follow from its exact text, so
# a reworded `build_prompt` must not move them (the run test asks with the current prompt).
PROMPT = (
    "You are the Osiris trading policy. Propose at most one trade for the market below.\n"
    "PORTFOLIO nav=100000.00 daily_pnl=0.00 max_position_pct=1.0000 max_daily_loss_pct=2.0000\n"
    "MARKET\n"
    "AAPL last=100.0 ret_pct=+0.0000 vol_pct=0.5000\n"
    "END MARKET\n"
    'Answer with one JSON object and nothing else, with exactly these fields: "ticker" (one '
    'of AAPL), "action" ("adjust", "pass" or "abort"), "side" ("LONG" or "SHORT"), "quantity"'
    ' (number > 0), "price_estimate" (number > 0), "new_stop_pct" (number), "new_target_pct" '
    '(number), "confidence" (0 to 1), "rationale" (one short sentence). The position notional'
    " must stay below max_position_pct of nav."
)
REFUSED_JSON_SCHEMA = "refused response_format json_schema"


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory) -> Iterator[str]:
    """The base URL (`.../v1`) of llama-cpp-python's server on a free loopback port, serving a
    tiny llama written for this module; stopped after the module."""
    try:
        import gguf  # noqa: F401
        import llama_cpp  # noqa: F401
    except ImportError:
        missing_dependency("llama-cpp-python[server] and gguf")
    folder = tmp_path_factory.mktemp("llama")
    model = write_tiny_llama(folder / "tiny.gguf")
    port = free_port()
    log = (folder / "server.log").open("wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            str(model),
            "--model_alias",
            MODEL,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--n_ctx",
            str(N_CTX),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        _wait_until_serving(proc, base_url, folder / "server.log")
        yield base_url
    finally:
        terminate(proc, SERVER_STOP_TIMEOUT_S)
        log.close()


def _wait_until_serving(proc: subprocess.Popen, base_url: str, log: Path) -> None:
    """Until `GET /models` answers; a server that exits or stays silent fails with its log."""
    deadline = time.monotonic() + SERVER_READY_TIMEOUT_S
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            if requests.get(f"{base_url}/models", timeout=1).ok:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"llama_cpp.server did not start:\n{log.read_text()[-3000:]}")


@pytest.fixture
def backend(llama_server) -> Iterator[ChatCompletionsBackend]:
    """A backend on the llama.cpp server that has not yet learnt what the server refuses."""
    ChatCompletionsBackend._refused.clear()
    client = SidecarClient(llama_server, max_attempts=3, retry_budget_s=30)
    # A seed, as a reproducible deployment sets one: the server takes it, and greedy sampling
    # (temperature 0, the default) does not draw on it.
    llm = ChatCompletionsBackend(client, model=MODEL, seed=7, max_tokens=MAX_TOKENS)
    yield llm
    llm.close()


def refusals(caplog) -> int:
    return sum(REFUSED_JSON_SCHEMA in r.getMessage() for r in caplog.records)


def test_llama_cpp_refuses_json_schema_with_http_500(llama_server):
    """The premise of the fallback: the form llama-cpp-python's request model does not know
    is a 500 whose body names it, not a 400."""
    schema = proposal_schema(["AAPL"])
    form = {
        "type": "json_schema",
        "json_schema": {"name": "proposal", "strict": True, "schema": schema},
    }
    answer = post_chat(llama_server, PROMPT, form)
    assert answer.status_code == 500
    assert "response_format" in answer.text and "json_schema" in answer.text


def test_json_schema_is_refused_once_and_json_mode_gives_a_proposal(backend, llama_server, caplog):
    with caplog.at_level(logging.DEBUG):
        first = backend.generate(PROMPT, max_length=256, symbols=["AAPL"], run_id="r1")
        second = backend.generate(PROMPT, max_length=256, symbols=["AAPL"], run_id="r2")
    # Refused once, not retried, remembered; then json mode with the schema.
    assert refusals(caplog) == 1 and "sidecar retry" not in caplog.text
    assert ChatCompletionsBackend._refused[llama_server] == {"json_schema"}
    assert backend.breaker.state == "closed"
    proposal, raw = parse_completion(first)
    assert proposal["ticker"] == "AAPL" and raw.lstrip().startswith("{")
    assert second == first  # greedy: the same answer when asked in json mode straight away


def test_an_answer_cut_short_by_max_tokens_is_an_error(llama_server):
    ChatCompletionsBackend._refused.clear()
    # No proposal fits in 8 tokens: every piece of this vocabulary is one character, and
    # `{"ticker"` alone is nine.
    llm = ChatCompletionsBackend(
        SidecarClient(llama_server, max_attempts=3), model=MODEL, max_tokens=8
    )
    try:
        with pytest.raises(SidecarResponseError, match=r"finish_reason length"):
            llm.generate(PROMPT, max_length=256, symbols=["AAPL"], run_id="r3")
    finally:
        llm.close()


def test_the_assessment_is_the_servers_text_when_its_json_is_not_strict(backend):
    proposal, _ = parse_completion(backend.generate(PROMPT, max_length=256, symbols=["AAPL"]))
    assessed = backend.propose_trade_adjustments(orjson.dumps(proposal).decode(), max_length=256)
    # llama-cpp-python's JSON grammar lets raw control characters into strings (its `char` is
    # `[^"\\]`) and this model writes one; strict JSON refuses that, so the backend keeps the
    # whole answer as the assessment text rather than losing it.
    text = assessed["hermes_assessment"]
    assert text.startswith('{ "assessment":') and any(ord(c) < 0x20 for c in text)
    assert assessed["transaction_id"] is None


# The score schema's `minimum`/`maximum` do not reach llama-cpp-python's grammar, which also
# allows exponents of up to 16 digits, so the model's "score" is any JSON number. What the
# greedy model answers for each context follows from the seeded weights.
@pytest.mark.parametrize(
    ("context", "expected"),
    [
        # {"score":38893903345.93e-972569413105 }: underflows to 0.0, a number in [0, 1]
        ("AAPL last=114.0", 0.0),
        # { "score":362301 }: out of range
        ("AAPL up", r"not a number in \[0, 1\]: 362301"),
        # { "score":9435E333}: beyond a double, so no number at all
        ("AAPL last=100.0", r"not a number in \[0, 1\]: None"),
    ],
)
def test_a_score_is_a_number_in_the_unit_interval_or_an_error(backend, context, expected):
    proposal, _ = parse_completion(backend.generate(PROMPT, max_length=256, symbols=["AAPL"]))
    if isinstance(expected, float):
        assert backend.score(proposal, context, run_id="r4") == expected
    else:
        with pytest.raises(SidecarResponseError, match=expected):
            backend.score(proposal, context, run_id="r4")


def test_a_run_on_llama_cpp_is_recorded_with_the_servers_text(settings, llama_server):
    ChatCompletionsBackend._refused.clear()
    s = settings.with_(
        llm_backend="openai", llm_base_url=llama_server, llm_model=MODEL, llm_max_tokens=MAX_TOKENS
    )
    res = Resources.from_settings(s)
    try:
        final = InProcessRunner(res).run(initial_state(ACCEPTED_BATCH))
    finally:
        res.close()
    store = RunStore(s.lancedb_uri)
    try:
        row, advice = store.get_run(final["run_id"]), store.get_advice(final["run_id"])
    finally:
        store.close()
    assert row is not None and row["status"] == final["status"]
    # The recorded completion is the server's own text: asked again without our client (and
    # greedily), llama.cpp answers the run's prompt with exactly what was recorded.
    assert row["raw_completion"] == ask_directly(llama_server, row["prompt"])
    # The one call that answered (the gate rejected, so no evaluator ran), with llama.cpp's
    # token counts; its refused json_schema attempt is not a call that answered.
    (call,) = final["llm_calls"]
    assert (call["role"], call["backend"], call["model"]) == ("proposal", "openai", MODEL)
    assert call["prompt_tokens"] > 0 and 0 < call["completion_tokens"] <= MAX_TOKENS
    # Whatever the model said, the gate decided: its verdict is the pure gate's on the book the
    # run saw (a proposal that did not parse is no proposal), and only a pass is a trade.
    verdict, (logged,) = orjson.loads(row["risk_verdict"]), advice
    gate = assess(
        orjson.loads(row["proposal"]),
        nav=logged["nav_before_trade"],
        daily_pnl=logged["daily_pnl_before_trade"],
        symbols=["AAPL"],
    )
    assert verdict["accepted"] == logged["accepted"] == gate.accepted
    assert (row["status"] in (RunStatus.SUCCESS, RunStatus.PARTIAL)) == gate.accepted
    # This model's answer to the run's prompt has raw control characters in its rationale and
    # a price_estimate beyond a double: the strict parser finds no proposal in it, so the run
    # is an upstream error that the gate rejects.
    assert row["status"] == RunStatus.ERROR_RISK_REJECTED
    assert row["error_message"] == "generate_proposal: no JSON object in the completion"
    # The completion cache kept the server's text and usage under the call's key, and a replay
    # from the cache alone decides the same way on the same text, byte for byte.
    store = RunStore(s.lancedb_uri)
    try:
        cached = store.get_completion(call["key"])
    finally:
        store.close()
    assert cached["completion"] == row["raw_completion"] and cached["run_id"] == row["run_id"]
    assert (cached["prompt_tokens"], cached["completion_tokens"]) == (
        call["prompt_tokens"],
        call["completion_tokens"],
    )
    res = Resources.from_settings(s.with_(llm_cache="read"))
    try:
        again = InProcessRunner(res).run(initial_state(ACCEPTED_BATCH))
    finally:
        res.close()
    assert again["raw_completion"] == row["raw_completion"]
    assert (again["status"], again["errors"]) == (final["status"], final["errors"])
    assert [c["cached"] for c in again["llm_calls"]] == [True]


def post_chat(base_url: str, prompt: str, response_format: dict) -> requests.Response:
    """A greedy proposal request as the backend makes it, sent with plain `requests`."""
    system = f"{ROLE_MARKER}proposal\n{SYSTEM_PROMPTS['proposal']}"
    return requests.post(
        f"{base_url}/chat/completions",
        json={
            "model": MODEL,
            "messages": [
                {"role": "system", "content": system},
                {"role": "user", "content": prompt},
            ],
            "temperature": 0.0,
            "max_tokens": MAX_TOKENS,
            "response_format": response_format,
        },
        timeout=30,
    )


def ask_directly(base_url: str, prompt: str) -> str:
    """The server's text for a proposal `prompt`, asked without our client the way the
    backend asks once `json_schema` is refused: json mode with the batch's schema."""
    schema = proposal_schema(["AAPL"])
    answer = post_chat(base_url, prompt, {"type": "json_object", "schema": schema})
    answer.raise_for_status()
    (choice,) = answer.json()["choices"]
    assert choice["finish_reason"] == "stop"
    return choice["message"]["content"]
