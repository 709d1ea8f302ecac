"""The reference sidecar's HTTP server: routing, the bearer token, request-body limits, the
injected faults, the TTS acknowledgements on Redis, and starting and stopping it.

`make_server` gives a bound server to run on a thread (tests, benchmarks); `serve_forever`
runs one until SIGTERM or SIGINT (`osiris sidecar`). `server.requests` counts the POSTs each
endpoint received, faulted or not.
"""

from __future__ import annotations

import hmac
import logging
import random
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import asdict, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson
import redis

from osiris_tasks.errors import ConfigError, RequestRefused
from osiris_tasks.keys import TTS_ACK_CHANNEL_PREFIX as ACK_CHANNEL_PREFIX

from . import openai_api, osiris_api
from .faults import FAULT_FIELDS, Faults, in_force, injected_reply
from .osiris_api import HEALTH, HEALTH_PATH
from .replies import _error, _json_reply, _Reply

__all__ = ["make_server", "serve_forever"]

logger = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
# Request bodies above this many bytes are refused with 413 before being read.
MAX_BODY_BYTES = 1 << 20
# An idle keep-alive connection is closed after this long, so its thread does not linger.
IDLE_TIMEOUT_S = 60.0
# Delay between accepting /speak and publishing its acknowledgement (the "playback").
ACK_DELAY_S = 0.05
# Size of each write when a response is trickled out slowly.
TRICKLE_CHUNK_BYTES = 16
ADMIN_FAULTS_PATH = "/admin/faults"

Endpoint = Callable[["_Server", dict, dict], dict[str, Any]]
# POST endpoints (faulted, behind the token when one is set).
ENDPOINTS: dict[str, Endpoint] = {**osiris_api.ENDPOINTS, **openai_api.ENDPOINTS}
# GET endpoints besides /health (no faults, no token).
READ_ONLY = openai_api.READ_ONLY


def _json_body(body: bytes) -> dict[str, Any]:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise RequestRefused(f"body is not valid JSON: {exc}", status=400) from exc
    if not isinstance(data, dict):
        raise RequestRefused("body must be a JSON object", status=400)
    return data


class _Handler(BaseHTTPRequestHandler):
    """Routes one request at a time on a keep-alive connection; every answer has a length."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # without it each keep-alive request waits ~40 ms on ACKs
    timeout = IDLE_TIMEOUT_S
    server_version = "OsirisReferenceSidecar/0.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s " + format, self.address_string(), *args)

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        try:
            reply = self._route(method, url.path.rstrip("/") or "/", parse_qs(url.query))
        except RequestRefused as exc:
            reply = _error(exc.status, exc.message, headers=exc.headers)
        except Exception:
            logger.exception("unexpected error serving %s %s", method, url.path)
            reply = _error(500, "internal error in the reference sidecar")
        self._send(reply)

    def _route(self, method: str, path: str, query: dict) -> _Reply:
        body = self._read_body()
        known = path in (HEALTH_PATH, ADMIN_FAULTS_PATH) or path in ENDPOINTS or path in READ_ONLY
        if not known:
            raise RequestRefused(f"no endpoint at {path}", status=404)
        allowed = "GET" if path == HEALTH_PATH or path in READ_ONLY else "POST"
        if method != allowed:
            raise RequestRefused(f"{path} takes {allowed}", status=405, headers={"Allow": allowed})
        if path == HEALTH_PATH:
            return _json_reply(200, HEALTH)
        if path in READ_ONLY:
            return _json_reply(200, READ_ONLY[path]())
        self._check_token()
        if path == ADMIN_FAULTS_PATH:
            return _json_reply(200, self.server.update_faults(_json_body(body)))
        return self._serve_endpoint(path, body, query)

    def _serve_endpoint(self, path: str, body: bytes, query: dict) -> _Reply:
        self.server.count_request(path)
        faults = in_force(self.server.faults, path)
        if faults.latency_ms > 0:
            time.sleep(faults.latency_ms / 1000)
        reply = self.server.injected_fault(faults)
        if reply is None:
            reply = _json_reply(200, ENDPOINTS[path](self.server, _json_body(body), query))
        reply.trickle_ms = faults.trickle_ms
        return reply

    def _read_body(self) -> bytes:
        """The request body; refuses (and closes the connection on) what it will not read."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self.close_connection = True
            raise RequestRefused(
                "chunked bodies are not supported; send Content-Length", status=411
            )
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_BODY_BYTES:
            self.close_connection = True
            status = 413 if length > MAX_BODY_BYTES else 400
            raise RequestRefused(f"Content-Length must be 0..{MAX_BODY_BYTES} bytes", status=status)
        return self.rfile.read(length) if length else b""

    def _check_token(self) -> None:
        token = self.server.token
        if token is None:
            return
        sent = self.headers.get("Authorization", "")
        if not hmac.compare_digest(sent.encode(), f"Bearer {token}".encode()):
            raise RequestRefused(
                "missing or wrong bearer token", status=401, headers={"WWW-Authenticate": "Bearer"}
            )

    def _send(self, reply: _Reply) -> None:
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.content_type)
        self.send_header("Content-Length", str(len(reply.body)))
        for name, value in reply.headers.items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self._write_body(reply.body, reply.trickle_ms)

    def _write_body(self, body: bytes, trickle_ms: float) -> None:
        if trickle_ms <= 0 or not body:
            self.wfile.write(body)
            return
        chunks = [
            body[i : i + TRICKLE_CHUNK_BYTES] for i in range(0, len(body), TRICKLE_CHUNK_BYTES)
        ]
        pause_s = trickle_ms / 1000 / len(chunks)
        for chunk in chunks:
            time.sleep(pause_s)
            self.wfile.write(chunk)


class _Server(ThreadingHTTPServer):
    """The stand-in's server: holds the faults, the seeded RNG, the token, the ack client and
    `requests`, the number of POSTs each endpoint path received (faulted or not)."""

    daemon_threads = True
    allow_reuse_address = True
    # Listen backlog: the default 5 drops a burst of new connections (a 64-thread client pool
    # connecting at once), and each dropped SYN costs its client a 1 s retransmit.
    request_queue_size = 256

    def __init__(
        self,
        address: tuple[str, int],
        *,
        faults: Faults,
        seed: int,
        token: str | None,
        ack_redis_url: str | None,
    ):
        self.faults = faults
        self.token = token
        self._rng = random.Random(seed)
        self._rng_lock = threading.Lock()
        self.requests: Counter[str] = Counter()
        self._requests_lock = threading.Lock()
        self.ack_redis = redis.Redis.from_url(ack_redis_url) if ack_redis_url else None
        super().__init__(address, _Handler)

    def count_request(self, path: str) -> None:
        """Count one POST to endpoint `path`."""
        with self._requests_lock:
            self.requests[path] += 1

    def injected_fault(self, faults: Faults) -> _Reply | None:
        """An error, garbage or wrong-shape reply drawn from the seeded RNG, or None for a
        normal answer."""
        with self._rng_lock:  # two draws per request, whatever the rates, keep seeds replayable
            error_roll, body_roll = self._rng.random(), self._rng.random()
        return injected_reply(faults, error_roll, body_roll)

    def draw(self) -> float:
        """One draw from the seeded RNG (for faults an endpoint decides itself)."""
        with self._rng_lock:
            return self._rng.random()

    def update_faults(self, changes: Mapping[str, Any]) -> dict[str, Any]:
        """Apply a partial update of Faults fields; return the faults now in force."""
        unknown = sorted(set(changes) - FAULT_FIELDS)
        if unknown:
            raise RequestRefused(f"unknown fault fields: {', '.join(unknown)}", status=400)
        try:
            self.faults = replace(self.faults, **changes)
        except ConfigError as exc:
            raise RequestRefused(exc.message, status=400) from exc
        logger.info("reference sidecar faults now %s", self.faults)
        return asdict(self.faults)

    def schedule_ack(self, transaction_id: str) -> None:
        """Publish the TTS acknowledgement after ACK_DELAY_S, if an ack Redis was given."""
        if self.ack_redis is not None:
            args = (transaction_id, time.monotonic())
            threading.Thread(target=self._ack, args=args, name="tts-ack", daemon=True).start()

    def _ack(self, transaction_id: str, queued_at: float) -> None:
        time.sleep(ACK_DELAY_S)
        played_ms = round((time.monotonic() - queued_at) * 1000)
        message = orjson.dumps({"transaction_id": transaction_id, "played_ms": played_ms})
        try:
            self.ack_redis.publish(ACK_CHANNEL_PREFIX + transaction_id, message)
        except redis.RedisError:
            logger.warning("could not publish the TTS ack for %s", transaction_id, exc_info=True)

    def handle_error(self, request: Any, client_address: Any) -> None:
        logger.debug("connection from %s failed", client_address, exc_info=True)

    def server_close(self) -> None:
        super().server_close()
        if self.ack_redis is not None:
            self.ack_redis.close()


def make_server(
    host: str = DEFAULT_HOST,
    port: int = 0,
    *,
    faults: Faults | None = None,
    seed: int = 0,
    token: str | None = None,
    ack_redis_url: str | None = None,
) -> ThreadingHTTPServer:
    """A bound, not yet serving stand-in server; port 0 picks a free port.

    Change faults at runtime through `server.faults` or `POST /admin/faults`.
    """
    return _Server(
        (host, port), faults=faults or Faults(), seed=seed, token=token, ack_redis_url=ack_redis_url
    )


def _install_stop_handlers(server: ThreadingHTTPServer) -> dict[int, Any]:
    """SIGTERM/SIGINT shut the server down; returns the handlers they replaced."""
    if threading.current_thread() is not threading.main_thread():
        return {}

    def stop(signum: int, frame: Any) -> None:
        logger.info("reference sidecar stopping on signal %s", signum)
        # shutdown() waits for serve_forever to return, so it must not run on that thread.
        threading.Thread(target=server.shutdown, name="sidecar-shutdown", daemon=True).start()

    return {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}


def serve_forever(
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    *,
    faults: Faults | None = None,
    seed: int = 0,
    token: str | None = None,
    ack_redis_url: str | None = None,
) -> None:
    """Serve the stand-in until SIGTERM or SIGINT (handlers only installed on the main thread)."""
    server = make_server(
        host, port, faults=faults, seed=seed, token=token, ack_redis_url=ack_redis_url
    )
    previous = _install_stop_handlers(server)
    logger.info(
        "osiris reference sidecar (rule-based stand-in, not a model) on http://%s:%s",
        host,
        server.server_address[1],
    )
    try:
        server.serve_forever()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        server.server_close()
