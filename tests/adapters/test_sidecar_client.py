"""SidecarClient against a real, scriptable HTTP server on loopback."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from opentelemetry.sdk.trace import TracerProvider

from osiris_tasks.adapters.sidecar import MAX_BODY_BYTES, CircuitBreaker, SidecarClient
from osiris_tasks.errors import (
    SidecarError,
    SidecarResponseError,
    SidecarStatusError,
    SidecarTimeout,
    SidecarUnavailable,
)
from osiris_tasks.settings import Settings

TOKEN = "tok-5ecr3t-do-not-log"


@dataclass
class Reply:
    """One scripted answer: status, headers, body (bytes, str or JSON-able), delays."""

    status: int = 200
    body: Any = b"{}"
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    body_delay_s: float = 0.0
    content_length: bool = True

    def payload(self) -> bytes:
        if isinstance(self.body, bytes):
            return self.body
        return self.body.encode() if isinstance(self.body, str) else json.dumps(self.body).encode()


@dataclass
class Seen:
    """A request the server received."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    client_port: int = 0  # one per connection: a reused connection keeps its port

    def json(self) -> Any:
        return json.loads(self.body)


class ScriptedServer(ThreadingHTTPServer):
    """Per-path queues of replies; the last reply of a queue repeats forever."""

    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.replies: dict[str, deque[Reply]] = defaultdict(deque)
        self.seen: list[Seen] = []
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def script(self, path: str, *replies: Reply) -> None:
        self.replies[path].extend(replies)

    def requests_to(self, path: str) -> list[Seen]:
        with self.lock:
            return [seen for seen in self.seen if seen.path == path]

    def next_reply(self, seen: Seen) -> Reply:
        with self.lock:
            self.seen.append(seen)
            queue = self.replies[seen.path]
            if not queue:
                return Reply(404, {"detail": "not scripted"})
            return queue.popleft() if len(queue) > 1 else queue[0]

    def handle_error(self, request, client_address):
        """Clients that time out or stop reading break the pipe; that is expected here."""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        self._answer()

    def do_POST(self):
        self._answer()

    def log_message(self, format, *args):
        """Quiet."""

    def _answer(self):
        parts = urlsplit(self.path)
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        seen = Seen(
            self.command,
            parts.path,
            parse_qs(parts.query),
            dict(self.headers),
            body,
            self.client_address[1],
        )
        reply = self.server.next_reply(seen)
        time.sleep(reply.delay_s)
        self._send(reply, reply.payload())

    def _send(self, reply: Reply, payload: bytes):
        self.send_response(reply.status)
        for name, value in reply.headers.items():
            self.send_header(name, value)
        if reply.content_length:
            self.send_header("Content-Length", str(len(payload)))
        else:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        half = len(payload) // 2 if reply.body_delay_s else len(payload)
        self.wfile.write(payload[:half])
        self.wfile.flush()
        time.sleep(reply.body_delay_s)
        self.wfile.write(payload[half:])


@pytest.fixture
def server():
    srv = ScriptedServer()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.01})
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join()


@pytest.fixture
def make_client(server):
    clients = []

    def make(url: str | None = None, **options) -> SidecarClient:
        options = {
            "connect_timeout_s": 1.0,
            "read_timeout_s": 2.0,
            "max_attempts": 3,
            "retry_budget_s": 5.0,
            "breaker": CircuitBreaker(100, 1.0),
            **options,
        }
        client = SidecarClient(url or server.url, **options)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def client(make_client):
    return make_client()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def retry_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "sidecar retry" in r.getMessage()]


# --- success on each endpoint -------------------------------------------------------------


def test_generate_returns_decoded_json(server, client):
    server.script("/generate/", Reply(body={"output": '{"ticker": "SPY"}'}))
    assert client.generate("p", max_length=64, run_id="r1") == {"output": '{"ticker": "SPY"}'}


def test_generate_returns_text_when_body_is_not_json(server, client):
    reply = Reply(body="plain completion ü", headers={"Content-Type": "text/plain"})
    server.script("/generate/", reply)
    assert client.generate("p", max_length=64) == "plain completion ü"


def test_propose_trade_adjustments(server, client):
    answer = {"hermes_assessment": "ok", "transaction_id": "tx-1", "phi3_proposal": {"a": 1}}
    server.script("/propose_trade_adjustments/", Reply(body=answer))
    assert client.propose_trade_adjustments("p", max_length=32, run_id="r1") == answer
    assert server.requests_to("/propose_trade_adjustments/")[0].json() == {
        "prompt": "p",
        "max_length": 32,
    }


def test_score(server, client):
    server.script("/score/hermes/", Reply(body={"score": 7}))
    assert client.score({"ticker": "SPY"}, "ctx") == 7.0
    assert server.requests_to("/score/hermes/")[0].json() == {
        "proposal": {"ticker": "SPY"},
        "context": "ctx",
    }


def test_speak_sends_transaction_id_only_when_given(server, client):
    server.script("/speak", Reply(body={"status": "queued"}))
    assert client.speak("hello", transaction_id="tx-9") == {"status": "queued"}
    client.speak("again")
    first, second = (seen.json() for seen in server.requests_to("/speak"))
    assert first == {"text": "hello", "exaggeration": 0.5, "transaction_id": "tx-9"}
    assert second == {"text": "again", "exaggeration": 0.5}


def test_health_is_a_single_get(server, client):
    server.script("/health", Reply(body={"status": "ok"}), Reply(503))
    assert client.health() == {"status": "ok"}
    with pytest.raises(SidecarStatusError):
        client.health()
    assert [seen.method for seen in server.requests_to("/health")] == ["GET", "GET"]


def test_from_settings(server):
    settings = Settings(sidecar_url=server.url, sidecar_token=TOKEN, breaker_threshold=2)
    server.script("/score/hermes/", Reply(body={"score": 0.5}))
    client = SidecarClient.from_settings(settings)
    try:
        assert client.score({}, "c") == 0.5
    finally:
        client.close()
    assert server.seen[0].headers["Authorization"] == f"Bearer {TOKEN}"


# --- request shape ---------------------------------------------------------------------------


def test_generate_request_shape_with_token(server, make_client):
    server.script("/generate/", Reply(body={}))
    make_client(token=TOKEN).generate("prompt", max_length=128, model_id="phi3")
    seen = server.requests_to("/generate/")[0]
    assert seen.method == "POST"
    assert seen.query == {"model_id": ["phi3"]}
    assert seen.json() == {"prompt": "prompt", "max_length": 128, "model_id": "phi3"}
    assert seen.headers["Authorization"] == f"Bearer {TOKEN}"


def test_no_authorization_header_without_token(server, client):
    server.script("/generate/", Reply(body={}))
    client.generate("prompt", max_length=1)
    assert "Authorization" not in server.seen[0].headers


def test_traceparent_sent_when_a_span_is_active(server, client):
    server.script("/generate/", Reply(body={}))
    tracer = TracerProvider().get_tracer(__name__)
    with tracer.start_as_current_span("propose") as span:
        client.generate("prompt", max_length=1)
    trace_id = format(span.get_span_context().trace_id, "032x")
    assert trace_id in server.seen[0].headers["traceparent"]


# --- error mapping ----------------------------------------------------------------------------


def test_connection_refused_is_unavailable_after_max_attempts(make_client, caplog):
    client = make_client(f"http://127.0.0.1:{free_port()}", max_attempts=3)
    with caplog.at_level(logging.WARNING), pytest.raises(SidecarUnavailable) as info:
        client.generate("p", max_length=1, run_id="run-7")
    assert info.value.run_id == "run-7"
    assert "POST /generate/" in str(info.value)
    lines = retry_lines(caplog)
    assert len(lines) == 2
    assert "run_id=run-7" in lines[0] and "endpoint=POST /generate/" in lines[0]
    assert "attempt=1/3" in lines[0]


def test_read_timeout_waiting_for_headers(server, make_client):
    server.script("/score/hermes/", Reply(body={"score": 1}, delay_s=0.5))
    client = make_client(read_timeout_s=0.15, max_attempts=1)
    with pytest.raises(SidecarTimeout):
        client.score({}, "c")


def test_read_timeout_while_reading_body(server, make_client):
    server.script("/score/hermes/", Reply(body={"score": 1.0}, body_delay_s=0.5))
    client = make_client(read_timeout_s=0.15, max_attempts=1)
    with pytest.raises(SidecarTimeout):
        client.score({}, "c")


def test_503_then_200_succeeds_after_one_retry(server, client, caplog):
    server.script("/score/hermes/", Reply(503), Reply(body={"score": 0.25}))
    with caplog.at_level(logging.WARNING):
        assert client.score({}, "c", run_id="r2") == 0.25
    assert len(server.requests_to("/score/hermes/")) == 2
    assert len(retry_lines(caplog)) == 1


def test_429_retry_after_is_honoured(server, client):
    throttled = Reply(429, headers={"Retry-After": "0.3"})
    server.script("/score/hermes/", throttled, Reply(body={"score": 1}))
    started = time.monotonic()
    assert client.score({}, "c") == 1.0
    assert 0.3 <= time.monotonic() - started < 1.0


def test_400_is_not_retried(server, client):
    server.script("/generate/", Reply(400, {"detail": "bad prompt"}))
    with pytest.raises(SidecarStatusError) as info:
        client.generate("p", max_length=1, run_id="r3")
    assert info.value.status == 400 and not info.value.retryable
    assert "400" in str(info.value) and "bad prompt" in str(info.value)
    assert len(server.requests_to("/generate/")) == 1


def test_redirect_is_not_followed(server, client):
    server.script("/generate/", Reply(307, headers={"Location": "http://example.invalid/"}))
    with pytest.raises(SidecarStatusError) as info:
        client.generate("p", max_length=1)
    assert info.value.status == 307


@pytest.mark.parametrize(
    ("header", "expected_s"),
    [
        ("12", 12.0),
        (30, 30.0),  # an HTTP-date 30 s ahead
        (-30, 0.0),  # an HTTP-date in the past
        ("soon", None),
        ("-5", None),
        ("nan", None),
    ],
)
def test_retry_after_parsing(server, client, header, expected_s):
    if isinstance(header, int):
        header = format_datetime(datetime.now(UTC) + timedelta(seconds=header), usegmt=True)
    server.script("/speak", Reply(400, headers={"Retry-After": header}))
    with pytest.raises(SidecarStatusError) as info:
        client.speak("x")
    if expected_s is None:
        assert info.value.retry_after_s is None
    else:
        assert info.value.retry_after_s == pytest.approx(expected_s, abs=1.5)


def test_non_json_2xx_on_score_is_a_response_error(server, client):
    server.script("/score/hermes/", Reply(body="<html>oops</html>"))
    with pytest.raises(SidecarResponseError) as info:
        client.score({}, "c", run_id="r4")
    assert not info.value.retryable and info.value.run_id == "r4"
    assert len(server.requests_to("/score/hermes/")) == 1


@pytest.mark.parametrize(
    "body",
    [
        b'{"score": "abc"}',
        b'{"score": NaN}',
        b'{"score": Infinity}',
        b'{"score": true}',
        b'{"points": 1}',
        b"[1]",
    ],
)
def test_wrong_score_shape_is_a_response_error(server, client, body):
    server.script("/score/hermes/", Reply(body=body))
    with pytest.raises(SidecarResponseError):
        client.score({}, "c")
    assert len(server.requests_to("/score/hermes/")) == 1


@pytest.mark.parametrize(
    "body",
    [
        {"phi3_proposal": {}},
        {"hermes_assessment": 3},
        {"hermes_assessment": "ok", "transaction_id": 5},
    ],
)
def test_wrong_proposal_shape_is_a_response_error(server, client, body):
    server.script("/propose_trade_adjustments/", Reply(body=body))
    with pytest.raises(SidecarResponseError):
        client.propose_trade_adjustments("p", max_length=1)


@pytest.mark.parametrize("content_length", [True, False])
def test_body_over_cap_is_refused(server, client, content_length):
    huge = b'"' + b"x" * MAX_BODY_BYTES + b'"'
    server.script("/generate/", Reply(body=huge, content_length=content_length))
    with pytest.raises(SidecarResponseError, match="over"):
        client.generate("p", max_length=1)


def test_a_body_that_is_not_strict_json_is_never_sent(server, client):
    server.script("/score/hermes/", Reply(body={"score": 1}))
    with pytest.raises(SidecarError, match="not sent") as info:
        client.score({"quantity": float("nan")}, "c")
    assert not info.value.retryable and server.requests_to("/score/hermes/") == []


def test_connections_are_reused_but_not_after_an_unread_error_body(server, client):
    # The rest of the error body comes later: a reused connection would read it as an answer.
    server.script(
        "/score/hermes/", Reply(400, "e" * 1000, body_delay_s=0.3), Reply(body={"score": 3})
    )
    with pytest.raises(SidecarStatusError):
        client.score({}, "c")
    assert [client.score({}, "c") for _ in range(4)] == [3.0] * 4
    seen = server.requests_to("/score/hermes/")
    assert len(seen) == 5  # no answer was misread, so nothing was retried
    assert len({s.client_port for s in seen[1:]}) == 1  # kept alive
    assert seen[0].client_port != seen[1].client_port  # the unread body's connection closed


# --- budget and breaker ----------------------------------------------------------------------


def test_retry_budget_bounds_the_whole_call(server, make_client):
    server.script("/generate/", Reply(503))
    client = make_client(max_attempts=100, retry_budget_s=0.5)
    started = time.monotonic()
    with pytest.raises(SidecarStatusError) as info:
        client.generate("p", max_length=1)
    assert time.monotonic() - started < 0.6
    assert info.value.status == 503
    assert len(server.requests_to("/generate/")) >= 2


def test_retry_after_beyond_budget_gives_up_at_once(server, make_client):
    server.script("/generate/", Reply(503, headers={"Retry-After": "30"}))
    client = make_client(retry_budget_s=1.0)
    started = time.monotonic()
    with pytest.raises(SidecarStatusError):
        client.generate("p", max_length=1)
    assert time.monotonic() - started < 0.3
    assert len(server.requests_to("/generate/")) == 1


def test_breaker_opens_fails_fast_then_half_opens(server, make_client):
    server.script("/score/hermes/", Reply(503))
    breaker = CircuitBreaker(2, 0.3)
    client = make_client(max_attempts=2, breaker=breaker)
    for _ in range(2):
        with pytest.raises(SidecarStatusError):
            client.score({}, "c")
    assert breaker.state == "open"
    with pytest.raises(SidecarUnavailable, match="circuit open"):
        client.score({}, "c", run_id="r5")
    assert len(server.requests_to("/score/hermes/")) == 4  # two calls of two attempts each
    time.sleep(0.3)
    assert breaker.state == "half_open"
    server.replies["/score/hermes/"] = deque([Reply(body={"score": 1})])
    assert client.score({}, "c") == 1.0
    assert breaker.state == "closed"


def test_breaker_ignores_answers_that_are_not_sidecar_failures(server, make_client):
    server.script("/score/hermes/", Reply(400))
    breaker = CircuitBreaker(1, 10.0)
    client = make_client(breaker=breaker)
    with pytest.raises(SidecarStatusError):
        client.score({}, "c")
    assert breaker.state == "closed"


def test_breaker_probe_failure_reopens():
    now = [0.0]
    breaker = CircuitBreaker(1, 5.0, clock=lambda: now[0])
    breaker.before_call()
    breaker.record_failure()
    assert breaker.state == "open"
    now[0] = 5.0
    breaker.before_call()  # the probe
    with pytest.raises(SidecarUnavailable, match=r"sidecar unavailable \(circuit open\)"):
        breaker.before_call()  # only one probe at a time
    breaker.record_failure()
    assert breaker.state == "open"
    now[0] = 10.0
    assert breaker.state == "half_open"


def test_breaker_counts_consecutive_failures_only():
    breaker = CircuitBreaker(2, 5.0)
    breaker.record_failure()
    breaker.record_success()
    breaker.record_failure()
    assert breaker.state == "closed"
    breaker.record_failure()
    assert breaker.state == "open"


def test_breaker_replaces_a_probe_that_never_reports():
    now = [0.0]
    breaker = CircuitBreaker(1, 5.0, clock=lambda: now[0])
    breaker.record_failure()
    now[0] = 5.0
    breaker.before_call()
    assert breaker.state == "half_open"
    with pytest.raises(SidecarUnavailable):
        breaker.before_call()  # the first probe is out: no second one yet
    now[0] = 10.0
    breaker.before_call()  # the first probe vanished; another may go
    with pytest.raises(SidecarUnavailable):
        breaker.before_call()  # and only that one
    breaker.record_success()
    assert breaker.state == "closed"
    breaker.before_call()


# --- secrets, threads, fork ------------------------------------------------------------------


def test_token_never_in_errors_or_logs(server, make_client, caplog):
    client = make_client(token=TOKEN, max_attempts=2)
    server.script("/generate/", Reply(503, f"upstream rejected Bearer {TOKEN}"))
    server.script("/speak", Reply(401, f"bad token {TOKEN}"))
    refused = make_client(f"http://127.0.0.1:{free_port()}", token=TOKEN, max_attempts=2)
    errors: list[SidecarError] = []
    with caplog.at_level(logging.DEBUG):
        for call in (
            lambda: client.generate("p", max_length=1),
            lambda: client.speak("x"),
            lambda: refused.score({}, "c"),
        ):
            with pytest.raises(SidecarError) as info:
                call()
            errors.append(info.value)
    assert len(retry_lines(caplog)) == 2
    for exc in errors:
        assert TOKEN not in str(exc) and TOKEN not in repr(exc)
    assert TOKEN not in caplog.text
    assert TOKEN not in repr(client)


def test_shared_by_many_threads(server, client):
    server.script("/score/hermes/", Reply(body={"score": 2}))
    results: list[float] = []

    def work():
        results.extend(client.score({}, "c") for _ in range(5))

    threads = [threading.Thread(target=work) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [2.0] * 80


def test_reset_after_fork_gives_a_working_session(server, client):
    server.script("/health", Reply(body={"status": "ok"}))
    client.health()
    client.reset_after_fork()
    assert client.health() == {"status": "ok"}
