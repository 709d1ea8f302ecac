"""A deterministic, rule-based stand-in for the LLM sidecar, speaking the sidecar's HTTP API.

The real sidecar serves Hermes-3 and Phi-3 on a GPU. This stand-in answers the same endpoints
with a fixed trading rule (`propose`) so the whole pipeline runs and is tested on a laptop. It is
not a model and never claims to be one: every JSON answer carries ``served_by`` saying so.

Endpoints (with or without a trailing slash)::

    GET  /health                      liveness; never authenticated, never faulted
    POST /generate                    {"prompt", "max_length", "model_id"} -> fenced JSON proposal
    POST /propose_trade_adjustments/  {"prompt": proposal JSON} -> transaction id + assessment
    POST /score/hermes/               {"proposal", "context"} -> {"score": 0..1}
    POST /speak                       {"text", "exaggeration", "transaction_id"} -> queued;
                                      acks on Redis `tts.acknowledged.<transaction_id>`
    POST /admin/faults                change the injected faults at runtime

`max_length`, `exaggeration` and `context` are accepted and ignored: a rule has nothing to
truncate, voice or condition on. Faults (latency, error statuses, garbage bodies, JSON bodies of
the wrong shape, slow trickle) let tests exercise the client's retries, timeouts and response
checks against a real socket; `server.requests` counts the POSTs each endpoint received.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import random
import re
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, NamedTuple
from urllib.parse import parse_qs, urlsplit

import orjson
import redis

from osiris_tasks.domain.numbers import finite_number, parse_finite
from osiris_tasks.errors import ConfigError, RequestRefused
from osiris_tasks.keys import TTS_ACK_CHANNEL_PREFIX as ACK_CHANNEL_PREFIX

__all__ = ["Faults", "make_server", "propose", "serve_forever"]

logger = logging.getLogger(__name__)

SERVED_BY = "osiris reference sidecar (deterministic rule-based stand-in, not a model)"
MODELS = ("phi3", "hermes")
DEFAULT_MODEL = "phi3"
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
GARBAGE_BODY = b"<html>\x00garbage"
# A 2xx JSON object that has none of the fields any endpoint promises.
WRONG_SHAPE = {"unexpected": "injected wrong shape"}
JSON_TYPE = "application/json"
HEALTH_PATH = "/health"
ADMIN_FAULTS_PATH = "/admin/faults"
OUTPUT_PREFACE = "Here is the trade proposal from the deterministic reference policy."
STAND_IN_NOTE = "This is a fixed rule-based check by the reference stand-in, not a model's view."

# Policy constants. Volatility is floored so a flat series does not give an infinite signal.
MIN_VOL_PCT = 0.05
MAX_STRENGTH = 2.6
BASE_SIZE_FACTOR = 0.3
STRENGTH_SIZE_FACTOR = 0.5
MIN_STOP_PCT = 0.5
MIN_TARGET_PCT = 1.0
STOP_VOL_MULTIPLE = 2.0
TARGET_VOL_MULTIPLE = 3.0
BASE_CONFIDENCE = 0.5
CONFIDENCE_PER_STRENGTH = 0.15
MAX_CONFIDENCE = 0.95
# Assessment and score: stops wider than this look unreasonable; this reward/risk scores full.
MAX_REASONABLE_STOP_PCT = 10.0
FULL_SCORE_REWARD_RISK = 3.0
SCORE_CONFIDENCE_WEIGHT = 0.5
MAX_LABEL_CHARS = 32

PORTFOLIO_RE = re.compile(r"^[ \t]*PORTFOLIO\b(.*)$", re.MULTILINE)
MARKET_BLOCK_RE = re.compile(
    r"^[ \t]*MARKET[ \t]*$(.*?)(?:^[ \t]*END MARKET[ \t]*$|\Z)", re.MULTILINE | re.DOTALL
)
SYMBOL_LINE_RE = re.compile(r"^\s*([A-Za-z0-9._-]{1,16})\s+(\w+=.*)$")
FIELD_RE = re.compile(r"(\w+)=(\S+)")


@dataclass
class Faults:
    """Faults injected into every POST except /admin/faults; rates are fractions 0..1.

    `garbage_rate` answers 200 with a non-JSON body, `wrong_shape_rate` 200 with a JSON object
    lacking the endpoint's fields; the two are exclusive, so their sum is at most 1.
    """

    latency_ms: float = 0
    error_rate: float = 0
    garbage_rate: float = 0
    wrong_shape_rate: float = 0
    error_status: int = 503
    retry_after_s: float | None = None
    trickle_ms: float = 0
    # OpenAI-compatible API only: answers cut short (`finish_reason: "length"`), and HTTP 500
    # to `response_format` `json_schema`, as llama.cpp's server answers.
    truncate_rate: float = 0
    refuse_json_schema: bool = False
    # Path prefixes the faults apply to (e.g. "/score"); empty: every faulted endpoint.
    paths: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        self.paths = tuple(self.paths)
        for name, upper in (
            ("latency_ms", math.inf),
            ("trickle_ms", math.inf),
            ("error_rate", 1.0),
            ("garbage_rate", 1.0),
            ("wrong_shape_rate", 1.0),
            ("truncate_rate", 1.0),
        ):
            value = finite_number(getattr(self, name))
            if value is None or not 0 <= value <= upper:
                raise ConfigError(
                    f"{name} must be a number in [0, {upper}], got {getattr(self, name)!r}"
                )
        if self.garbage_rate + self.wrong_shape_rate > 1:
            raise ConfigError("garbage_rate + wrong_shape_rate must not exceed 1")
        status = self.error_status
        if isinstance(status, bool) or not isinstance(status, int) or not 400 <= status <= 599:
            raise ConfigError(f"error_status must be an HTTP error status, got {status!r}")
        retry = self.retry_after_s
        if retry is not None and (finite_number(retry) is None or retry < 0):
            raise ConfigError(f"retry_after_s must be null or a number >= 0, got {retry!r}")


FAULT_FIELDS = frozenset(f.name for f in fields(Faults))


# --- the policy ---------------------------------------------------------------------------


class _Row(NamedTuple):
    symbol: str
    last: float | None
    ret_pct: float | None
    vol_pct: float | None

    @property
    def usable(self) -> bool:
        return None not in (self.last, self.ret_pct, self.vol_pct) and self.last > 0

    @property
    def strength(self) -> float:
        return abs(self.ret_pct) / max(self.vol_pct, MIN_VOL_PCT)


def _fields(text: str) -> dict[str, str]:
    return dict(FIELD_RE.findall(text))


def _parse_book(prompt: str) -> tuple[float, float] | None:
    """`(nav, max_position_pct)` from the PORTFOLIO line, or None if it is not usable."""
    match = PORTFOLIO_RE.search(prompt)
    found = _fields(match.group(1)) if match else {}
    nav = parse_finite(found.get("nav"))
    limit_pct = parse_finite(found.get("max_position_pct"))
    if nav is None or limit_pct is None or nav <= 0 or limit_pct < 0:
        return None
    return nav, limit_pct


def _parse_rows(prompt: str) -> list[_Row]:
    """One row per symbol line between MARKET and END MARKET, in prompt order."""
    block = MARKET_BLOCK_RE.search(prompt)
    rows = []
    for line in block.group(1).splitlines() if block else []:
        match = SYMBOL_LINE_RE.match(line)
        if match:
            found = _fields(match.group(2))
            rows.append(
                _Row(
                    match.group(1),
                    *(parse_finite(found.get(key)) for key in ("last", "ret_pct", "vol_pct")),
                )
            )
    return rows


def _pass(rows: list[_Row], rationale: str) -> dict[str, Any]:
    first = rows[0] if rows else None
    return {
        "action": "pass",
        "ticker": first.symbol if first else "UNKNOWN",
        "side": "LONG",
        "quantity": 0,
        "price_estimate": first.last if first and first.last and first.last > 0 else 1.0,
        "new_stop_pct": 0.0,
        "new_target_pct": 0.0,
        "confidence": 0.0,
        "rationale": rationale,
    }


def _adjust(row: _Row, quantity: int) -> dict[str, Any]:
    side = "LONG" if row.ret_pct >= 0 else "SHORT"
    return {
        "action": "adjust",
        "ticker": row.symbol,
        "side": side,
        "quantity": quantity,
        "price_estimate": row.last,
        "new_stop_pct": round(max(MIN_STOP_PCT, STOP_VOL_MULTIPLE * row.vol_pct), 4),
        "new_target_pct": round(max(MIN_TARGET_PCT, TARGET_VOL_MULTIPLE * row.vol_pct), 4),
        "confidence": round(
            min(MAX_CONFIDENCE, BASE_CONFIDENCE + CONFIDENCE_PER_STRENGTH * row.strength), 4
        ),
        "rationale": f"{row.symbol} returned {row.ret_pct:+.2f}% with {row.vol_pct:.2f}% "
        f"volatility, the strongest signal in the batch, so the rule goes {side}.",
    }


def propose(prompt: str) -> dict[str, Any]:
    """The stand-in's proposal for a prompt holding a PORTFOLIO line and a MARKET block.

    Picks the symbol with the largest `|ret_pct| / max(vol_pct, 0.05)` (ties alphabetical) and
    sizes it at `max_position_pct * (0.3 + 0.5 * min(strength, 2.6))` of NAV, so weak signals
    stay under the risk limit and strong ones go over it. Without a usable book or market line
    the answer is a zero-size "pass".
    """
    rows = _parse_rows(prompt)
    candidates = [row for row in rows if row.usable]
    book = _parse_book(prompt)
    if book is None or not candidates:
        return _pass(rows, "no usable market summary")
    nav, limit_pct = book
    row = min(candidates, key=lambda r: (-r.strength, r.symbol))
    frac = (
        limit_pct
        / 100
        * (BASE_SIZE_FACTOR + STRENGTH_SIZE_FACTOR * min(row.strength, MAX_STRENGTH))
    )
    size = nav * frac / row.last
    if not math.isfinite(size):
        return _pass(rows, "position size out of range")
    return _adjust(row, max(1, math.floor(size)))


def _render_output(proposal: Mapping[str, Any]) -> str:
    body = orjson.dumps(proposal, option=orjson.OPT_INDENT_2).decode()
    return f"{OUTPUT_PREFACE}\n```json\n{body}\n```"


def _json_object(text: str) -> dict[str, Any] | None:
    try:
        parsed = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    return parsed if isinstance(parsed, dict) else None


def _label(value: Any, default: str) -> str:
    return default if value is None else str(value)[:MAX_LABEL_CHARS]


def _stop_target_sentence(stop: float | None, target: float | None) -> str:
    if stop is None or target is None or stop <= 0 or target <= 0:
        return "The stop and target are missing or not positive, so they do not look reasonable."
    if stop > MAX_REASONABLE_STOP_PCT:
        return (
            f"The stop at {stop:.2f}% is wider than {MAX_REASONABLE_STOP_PCT:.0f}%, "
            "which does not look reasonable."
        )
    if target < stop:
        return (
            f"The target at {target:.2f}% is below the stop at {stop:.2f}%, "
            "which does not look reasonable."
        )
    return (
        f"The stop at {stop:.2f}% and target at {target:.2f}% look reasonable "
        f"(reward/risk {target / stop:.2f})."
    )


def _assessment(proposal: Mapping[str, Any] | None) -> str:
    """Two or three sentences on a proposal: what it trades and whether stop/target fit."""
    if proposal is None:
        return f"The prompt is not a JSON proposal, so there is nothing to assess. {STAND_IN_NOTE}"
    side, quantity, ticker = (
        _label(proposal.get(key), "?") for key in ("side", "quantity", "ticker")
    )
    stop = finite_number(proposal.get("new_stop_pct"))
    target = finite_number(proposal.get("new_target_pct"))
    return (
        f"The proposal goes {side} {quantity} {ticker}. "
        f"{_stop_target_sentence(stop, target)} {STAND_IN_NOTE}"
    )


def _score(proposal: Mapping[str, Any]) -> float:
    """Half the clamped confidence plus half the reward/risk ratio relative to 3:1."""
    confidence = min(1.0, max(0.0, finite_number(proposal.get("confidence")) or 0.0))
    stop = finite_number(proposal.get("new_stop_pct")) or 0.0
    target = finite_number(proposal.get("new_target_pct")) or 0.0
    ratio = target / stop if stop > 0 and target > 0 else 0.0
    reward = min(1.0, ratio / FULL_SCORE_REWARD_RISK)
    return round(SCORE_CONFIDENCE_WEIGHT * confidence + (1 - SCORE_CONFIDENCE_WEIGHT) * reward, 4)


# --- HTTP plumbing -------------------------------------------------------------------------


@dataclass
class _Reply:
    status: int
    body: bytes
    content_type: str = JSON_TYPE
    headers: dict[str, str] = field(default_factory=dict)
    trickle_ms: float = 0.0


def _json_reply(status: int, payload: Mapping[str, Any], **kwargs: Any) -> _Reply:
    return _Reply(status, orjson.dumps({**payload, "served_by": SERVED_BY}), **kwargs)


def _error(status: int, message: str, **kwargs: Any) -> _Reply:
    return _json_reply(status, {"error": message, "status": status}, **kwargs)


def _text_field(data: Mapping[str, Any], key: str) -> str:
    value = data.get(key)
    if not isinstance(value, str):
        raise RequestRefused(f"{key!r} must be a string", status=400)
    return value


def _generate(server: _Server, data: dict, query: dict) -> dict[str, Any]:
    prompt = _text_field(data, "prompt")
    model_id = query.get("model_id", [None])[0] or data.get("model_id") or DEFAULT_MODEL
    if not isinstance(model_id, str):
        raise RequestRefused("'model_id' must be a string", status=400)
    return {"output": _render_output(propose(prompt)), "model_id": model_id}


def _propose_trade_adjustments(server: _Server, data: dict, query: dict) -> dict[str, Any]:
    prompt = _text_field(data, "prompt")
    proposal = _json_object(prompt)
    return {
        "transaction_id": "tx_" + hashlib.sha1(prompt.encode()).hexdigest()[:16],
        "phi3_proposal": proposal,
        "hermes_assessment": _assessment(proposal),
    }


def _score_hermes(server: _Server, data: dict, query: dict) -> dict[str, Any]:
    proposal = data.get("proposal")
    if isinstance(proposal, str):
        proposal = _json_object(proposal)
    return {"score": _score(proposal if isinstance(proposal, dict) else {})}


def _speak(server: _Server, data: dict, query: dict) -> dict[str, Any]:
    text = _text_field(data, "text")
    transaction_id = data.get("transaction_id")
    if isinstance(transaction_id, str) and transaction_id:
        server.schedule_ack(transaction_id)
    return {"status": "queued", "chars": len(text)}


def _chat_completions(server: _Server, data: dict, query: dict) -> dict[str, Any]:
    """OpenAI's Chat Completions, answered by the same deterministic policy: the role from the
    system message's `osiris-role:` line, the JSON alone when `response_format` asks for it."""
    model = data.get("model")
    messages = data.get("messages")
    if not isinstance(model, str) or not isinstance(messages, list) or not messages:
        raise RequestRefused(
            "'model' (string) and 'messages' (non-empty list) are required", status=400
        )
    format_type = (data.get("response_format") or {}).get("type", "text")
    if format_type == "json_schema" and server.faults.refuse_json_schema:
        raise RequestRefused(
            "response_format: json_schema is not supported (stand-in fault)", status=500
        )
    texts = [m.get("content") for m in messages if isinstance(m, dict)]
    role = _chat_role(str(texts[0]))
    content = _chat_answer(role, str(texts[-1]), structured=format_type != "text")
    finish = "stop"
    if server.draw() < server.faults.truncate_rate:
        content, finish = content[: len(content) // 2], "length"
    prompt_tokens = sum(len(str(t).split()) for t in texts)
    completion_tokens = len(content.split())
    return {
        "id": "chatcmpl-" + hashlib.sha1(orjson.dumps(data)).hexdigest()[:16],
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": [
            {
                "index": 0,
                "finish_reason": finish,
                "message": {"role": "assistant", "content": content},
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


def _chat_role(system: str) -> str:
    match = re.search(r"osiris-role: (\w+)", system)
    return match.group(1) if match else "proposal"


def _chat_answer(role: str, prompt: str, *, structured: bool) -> str:
    """The policy's answer for `role`: the JSON alone when `structured`, else as prose."""
    if role == "assessment":
        answer = {"assessment": _assessment(_json_object(prompt))}
    elif role == "score":
        proposal = _json_object(prompt.removeprefix("PROPOSAL ").split("\n", 1)[0])
        answer = {"score": _score(proposal or {})}
    else:
        answer = propose(prompt)
    if structured:
        return orjson.dumps(answer).decode()
    return _render_output(answer)


def _models() -> dict[str, Any]:
    return {
        "object": "list",
        "data": [{"id": m, "object": "model", "owned_by": "osiris-reference"} for m in MODELS],
    }


Endpoint = Callable[["_Server", dict, dict], dict[str, Any]]
ENDPOINTS: dict[str, Endpoint] = {
    "/generate": _generate,
    "/propose_trade_adjustments": _propose_trade_adjustments,
    "/score/hermes": _score_hermes,
    "/speak": _speak,
    "/v1/chat/completions": _chat_completions,
}
# GET endpoints (no faults, no token).
READ_ONLY = {"/v1/models": _models}
HEALTH = {"status": "ok", "stand_in": True, "models": list(MODELS)}


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
        faults = self.server.faults
        if faults.paths and not path.startswith(faults.paths):
            faults = Faults()
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
        if error_roll < faults.error_rate:
            headers = (
                {} if faults.retry_after_s is None else {"Retry-After": f"{faults.retry_after_s:g}"}
            )
            return _error(faults.error_status, "injected fault", headers=headers)
        if body_roll < faults.garbage_rate:
            return _Reply(200, GARBAGE_BODY, content_type="text/html")
        if body_roll < faults.garbage_rate + faults.wrong_shape_rate:
            return _json_reply(200, WRONG_SHAPE)
        return None

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
