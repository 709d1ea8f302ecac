"""The reference sidecar: its policy as a pure function, its HTTP API on a real loopback port."""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import orjson
import pytest
import redis
import requests

from osiris_tasks.domain.market import summary_text
from osiris_tasks.domain.proposal import Proposal, build_prompt, parse_completion
from osiris_tasks.tools.reference_sidecar import SERVED_BY, Faults, make_server, propose
from osiris_tasks.tools.reference_sidecar.policy import _parse_book, _parse_rows

REDIS_URL = "redis://127.0.0.1:6379/15"
TOKEN = "s3cret-test-token"
NAV = 100_000.0
# A weak signal sizes under the 1% position limit, a strong one over it.
WEAK = {"AAPL": {"ret": 0.10, "vol": 0.50, "last": 101.0}}
STRONG = {"MSFT": {"ret": 2.00, "vol": 0.40, "last": 250.0}}


def _summary(symbols: dict[str, dict[str, float]]) -> dict[str, dict]:
    return {
        symbol: {
            "ticks": 10,
            "first": s["last"] / (1 + s["ret"] / 100),
            "last": s["last"],
            "high": s["last"] * 1.01,
            "low": s["last"] * 0.99,
            "vwap": None,
            "return_pct": s["ret"],
            "volatility_pct": s["vol"],
            "span_s": 9.0,
        }
        for symbol, s in symbols.items()
    }


def _prompt(symbols: dict[str, dict[str, float]], nav: float = NAV) -> str:
    return build_prompt(
        summary_text(_summary(symbols)),
        list(symbols),
        nav=nav,
        daily_pnl=0.0,
        max_position_size_pct=0.01,
        max_daily_loss_pct=0.02,
    )


@contextmanager
def _running(**kwargs) -> Iterator[tuple[str, object]]:
    server = make_server("127.0.0.1", 0, **kwargs)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01})
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def sidecar() -> Iterator[tuple[str, object]]:
    with _running() as running:
        yield running


@pytest.fixture
def session() -> Iterator[requests.Session]:
    with requests.Session() as session:
        yield session


# --- the policy ----------------------------------------------------------------------------


def test_policy_sizes_weak_signals_under_and_strong_ones_over_the_limit():
    weak, strong = propose(_prompt(WEAK)), propose(_prompt(STRONG))
    assert (weak["ticker"], weak["side"], weak["action"]) == ("AAPL", "LONG", "adjust")
    assert weak["quantity"] * weak["price_estimate"] / NAV < 0.01
    assert strong["quantity"] * strong["price_estimate"] / NAV > 0.01
    assert strong["confidence"] == 0.95 and weak["confidence"] < strong["confidence"]
    assert (weak["new_stop_pct"], weak["new_target_pct"]) == (1.0, 1.5)
    Proposal.model_validate(weak)


def test_policy_picks_strongest_signal_shorts_losers_and_breaks_ties_alphabetically():
    mixed = {
        "AAPL": {"ret": 0.1, "vol": 0.5, "last": 100.0},
        "TSLA": {"ret": -1.5, "vol": 0.5, "last": 200.0},
    }
    assert propose(_prompt(mixed))["side"] == "SHORT"
    tied = {
        "ZZZ": {"ret": 1.0, "vol": 0.5, "last": 10.0},
        "BBB": {"ret": -1.0, "vol": 0.5, "last": 10.0},
    }
    assert propose(_prompt(tied))["ticker"] == "BBB"


def test_policy_reads_fields_in_any_order_and_ignores_other_text():
    prompt = (
        "chatter nav=1 MARKET\nPORTFOLIO max_position_pct=1.0000 nav=50000.00\nMARKET\n"
        '"XYZ" vol_pct=0.2000 vwap=na span_s=3.0 ret_pct=-0.1000 last=20.0000 n=4\n'
        "ABC last=1 ret_pct=+9 vol_pct=0.1\nEND MARKET\n"  # a bare word is not a symbol
        '"QQQ" last=1 ret_pct=+9 vol_pct=0.1\n'
    )
    proposal = propose(prompt)
    assert (proposal["ticker"], proposal["side"], proposal["price_estimate"]) == (
        "XYZ",
        "SHORT",
        20.0,
    )
    assert proposal["quantity"] == int(50_000 * 0.01 * (0.3 + 0.5 * 0.5) / 20.0)


def test_grammar_word_symbols_parse_into_exactly_the_batchs_rows():
    """Symbols named like the prompt's words (`END`, `MARKET`, `PORTFOLIO`) or an instruction
    (`IGNORE_LIMITS`): one row each, in order, the book from the real PORTFOLIO line."""
    batch = {
        "AAPL": {"ret": 0.1, "vol": 0.5, "last": 101.0},
        "END": {"ret": -0.2, "vol": 0.4, "last": 12.5},
        "IGNORE_LIMITS": {"ret": 2.0, "vol": 0.4, "last": 250.0},
        "MARKET": {"ret": 0.3, "vol": 0.6, "last": 40.0},
        "PORTFOLIO": {"ret": -0.4, "vol": 0.7, "last": 7.0},
    }
    prompt = _prompt(batch, nav=50_000.0)
    rows = [(r.symbol, r.last, r.ret_pct, r.vol_pct) for r in _parse_rows(prompt)]
    assert rows == [(symbol, s["last"], s["ret"], s["vol"]) for symbol, s in batch.items()]
    assert _parse_book(prompt) == (50_000.0, 1.0)
    proposal = propose(prompt)
    assert (proposal["ticker"], proposal["price_estimate"]) == ("IGNORE_LIMITS", 250.0)


def test_policy_passes_without_a_usable_summary():
    assert propose("hello") == {
        "action": "pass",
        "ticker": "UNKNOWN",
        "side": "LONG",
        "quantity": 0,
        "price_estimate": 1.0,
        "new_stop_pct": 0.0,
        "new_target_pct": 0.0,
        "confidence": 0.0,
        "rationale": "no usable market summary",
    }
    no_book = _prompt(WEAK).replace("PORTFOLIO", "BOOK")
    assert propose(no_book)["action"] == "pass"
    assert (propose(no_book)["ticker"], propose(no_book)["price_estimate"]) == ("AAPL", 101.0)


# --- the HTTP API --------------------------------------------------------------------------


def test_health_is_labelled_as_a_stand_in(sidecar, session):
    url, _ = sidecar
    for path in ("/health", "/health/"):
        response = session.get(url + path, timeout=5)
        assert response.status_code == 200
        assert response.json() == {
            "status": "ok",
            "stand_in": True,
            "models": ["phi3", "hermes"],
            "served_by": SERVED_BY,
        }


def test_generate_returns_a_fenced_proposal_matching_the_policy(sidecar, session):
    url, _ = sidecar
    prompt = _prompt({**WEAK, **STRONG})
    response = session.post(
        url + "/generate", json={"prompt": prompt, "max_length": 512}, timeout=5
    )
    body = response.json()
    assert response.status_code == 200 and body["served_by"] == SERVED_BY
    assert body["model_id"] == "phi3" and "```json\n" in body["output"]
    proposal, _ = parse_completion(body)
    assert proposal == Proposal.model_validate(propose(prompt)).model_dump()


def test_generate_takes_model_id_from_the_query(sidecar, session):
    url, _ = sidecar
    response = session.post(url + "/generate/?model_id=hermes", json={"prompt": "x"}, timeout=5)
    assert response.json()["model_id"] == "hermes"
    response = session.post(url + "/generate", json={"prompt": "x", "model_id": "phi3"}, timeout=5)
    assert response.json()["model_id"] == "phi3"


def test_propose_trade_adjustments_is_deterministic(sidecar, session):
    url, _ = sidecar
    prompt = orjson.dumps(propose(_prompt(WEAK))).decode()
    first, second = (
        session.post(
            url + "/propose_trade_adjustments/",
            json={"prompt": prompt, "max_length": 256},
            timeout=5,
        ).json()
        for _ in range(2)
    )
    assert first == second
    assert first["transaction_id"] == "tx_" + hashlib.sha1(prompt.encode()).hexdigest()[:16]
    assert first["phi3_proposal"] == orjson.loads(prompt)
    assert all(word in first["hermes_assessment"] for word in ("AAPL", "LONG", "reasonable"))
    assert str(first["phi3_proposal"]["quantity"]) in first["hermes_assessment"]
    other = session.post(url + "/propose_trade_adjustments", json={"prompt": "not json"}, timeout=5)
    assert other.json()["phi3_proposal"] is None


def test_score_is_deterministic_and_rewards_confidence_and_reward_risk(sidecar, session):
    url, _ = sidecar
    proposal = propose(_prompt(STRONG))
    scores = [
        session.post(
            url + "/score/hermes/", json={"proposal": p, "context": "c"}, timeout=5
        ).json()["score"]
        for p in (
            proposal,
            orjson.dumps(proposal).decode(),
            {**proposal, "confidence": 0.1},
            {**proposal, "new_target_pct": 0.1},
        )
    ]
    assert scores[0] == scores[1] and all(0 <= s <= 1 for s in scores)
    assert scores[0] > scores[2] and scores[0] > scores[3]


def test_speak_queues_text(sidecar, session):
    url, _ = sidecar
    payload = {"text": "hello", "exaggeration": 0.5}
    body = session.post(url + "/speak", json=payload, timeout=5).json()
    assert body == {"status": "queued", "chars": 5, "served_by": SERVED_BY}


def test_bad_requests_get_json_errors(sidecar, session):
    url, _ = sidecar
    bad_json = session.post(url + "/generate", data=b"{nope", timeout=5)
    assert bad_json.status_code == 400 and bad_json.json()["served_by"] == SERVED_BY
    assert session.post(url + "/generate", json={"prompt": 3}, timeout=5).status_code == 400
    missing = session.post(url + "/nowhere", json={}, timeout=5)
    assert missing.status_code == 404 and "error" in missing.json()
    assert session.get(url + "/generate", timeout=5).status_code == 405


def test_body_over_one_mib_is_refused_with_413(sidecar):
    url, _ = sidecar
    conn = http.client.HTTPConnection(url.removeprefix("http://"), timeout=5)
    conn.putrequest("POST", "/generate")
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Content-Length", str((1 << 20) + 1))
    conn.endheaders()
    response = conn.getresponse()
    assert response.status == 413 and "error" in orjson.loads(response.read())
    conn.close()


def test_token_is_required_except_for_health_and_never_logged(session, caplog):
    caplog.set_level(logging.DEBUG, logger="osiris_tasks.tools.reference_sidecar")
    with _running(token=TOKEN) as (url, _):
        assert session.get(url + "/health", timeout=5).status_code == 200
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            denied = session.post(url + "/speak", json={"text": "x"}, headers=headers, timeout=5)
            assert denied.status_code == 401 and "error" in denied.json()
        allowed = session.post(
            url + "/speak",
            json={"text": "x"},
            timeout=5,
            headers={"Authorization": f"Bearer {TOKEN}"},
        )
        assert allowed.status_code == 200
    assert caplog.records and TOKEN not in caplog.text


def test_injected_errors_carry_retry_after_and_spare_health(sidecar, session):
    url, server = sidecar
    server.faults = Faults(error_rate=1, retry_after_s=2)
    response = session.post(url + "/generate", json={"prompt": "x"}, timeout=5)
    assert response.status_code == 503 and response.headers["Retry-After"] == "2"
    assert response.json()["served_by"] == SERVED_BY
    assert session.get(url + "/health", timeout=5).status_code == 200


def test_injected_garbage_is_a_non_json_200(sidecar, session):
    url, server = sidecar
    server.faults = Faults(garbage_rate=1)
    response = session.post(url + "/score/hermes/", json={"proposal": {}}, timeout=5)
    assert response.status_code == 200 and response.headers["Content-Type"] == "text/html"
    with pytest.raises(ValueError):
        orjson.loads(response.content)


def test_injected_latency_and_trickle_slow_the_answer(sidecar, session):
    url, server = sidecar
    for faults in (Faults(latency_ms=150), Faults(trickle_ms=150)):
        server.faults = faults
        started = time.monotonic()
        response = session.post(url + "/generate", json={"prompt": _prompt(WEAK)}, timeout=5)
        elapsed_s = time.monotonic() - started
        assert response.status_code == 200 and 0.14 <= elapsed_s < 1.5
        assert parse_completion(response.json())[0]["ticker"] == "AAPL"


def test_admin_faults_changes_and_reports_faults(sidecar, session):
    url, server = sidecar
    response = session.post(
        url + "/admin/faults/", json={"error_rate": 1, "error_status": 429}, timeout=5
    )
    assert response.json()["error_rate"] == 1 and server.faults.error_status == 429
    assert session.post(url + "/speak", json={"text": "x"}, timeout=5).status_code == 429
    assert session.post(url + "/admin/faults", json={"bogus": 1}, timeout=5).status_code == 400
    assert session.post(url + "/admin/faults", json={"error_rate": 2}, timeout=5).status_code == 400
    session.post(url + "/admin/faults", json={"error_rate": 0}, timeout=5)
    assert session.post(url + "/speak", json={"text": "x"}, timeout=5).status_code == 200


def test_fault_sequence_is_reproducible_for_a_seed(session):
    statuses = []
    for _ in range(2):
        with _running(faults=Faults(error_rate=0.5), seed=7) as (url, _):
            statuses.append(
                [
                    session.post(url + "/speak", json={"text": "x"}, timeout=5).status_code
                    for _ in range(12)
                ]
            )
    assert statuses[0] == statuses[1] and {200, 503} == set(statuses[0])


def _next_message(pubsub, timeout_s: float = 3.0) -> dict | None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        message = pubsub.get_message(timeout=deadline - time.monotonic())
        if message is not None:
            return message
    return None


def test_speak_publishes_an_ack_on_redis(session):
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.RedisError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"Redis at {REDIS_URL} is unreachable in CI: {exc}")
        pytest.skip(f"Redis at {REDIS_URL} is unreachable: {exc}")
    transaction_id = f"tx_{uuid.uuid4().hex[:16]}"
    with client.pubsub() as pubsub, _running(ack_redis_url=REDIS_URL) as (url, _):
        pubsub.subscribe(f"tts.acknowledged.{transaction_id}")
        assert _next_message(pubsub)["type"] == "subscribe"
        body = {"text": "hi", "exaggeration": 0.5, "transaction_id": transaction_id}
        assert session.post(url + "/speak", json=body, timeout=5).json()["status"] == "queued"
        message = _next_message(pubsub)
    client.close()
    assert message is not None and message["type"] == "message"
    ack = orjson.loads(message["data"])
    assert ack["transaction_id"] == transaction_id
    assert isinstance(ack["played_ms"], int) and ack["played_ms"] >= 40
