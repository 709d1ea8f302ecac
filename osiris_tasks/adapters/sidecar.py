"""The HTTP client for the LLM sidecar: timeouts, bounded retries and a circuit breaker.

Every library error is converted here, once, into the `SidecarError` tree (see `errors.py`).
A call retries only retryable errors (unavailable, timeout, 429, 5xx) with full-jitter
exponential backoff, or the server's `Retry-After` for 429/503, and never runs longer than
its wall-clock retry budget. The breaker counts whole calls: a call that ends in a retryable
error is one failure; any answer from the sidecar (2xx, 4xx, a malformed body) proves it is
reachable and counts as a success. The bearer token is sent per request, to the sidecar
only (redirects are not followed), and is scrubbed from every error message.

The transport is urllib3's connection pool, used directly: requests on top of it cost 2.6x
the CPU per call (~465 against ~180 us, measured against the reference sidecar), and a
sidecar-bound worker's CPU per call is what bounds how many calls two cores can carry.
"""

from __future__ import annotations

import email.utils
import json
import logging
import math
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC
from typing import Any
from urllib.parse import urlencode

import orjson
import urllib3
from opentelemetry import propagate
from urllib3.exceptions import DecodeError, HTTPError, NewConnectionError, ProtocolError
from urllib3.exceptions import TimeoutError as TransportTimeout

from osiris_tasks.adapters.completions import CompletionCache
from osiris_tasks.domain.numbers import finite_number
from osiris_tasks.errors import (
    SidecarError,
    SidecarResponseError,
    SidecarStatusError,
    SidecarTimeout,
    SidecarUnavailable,
)
from osiris_tasks.obs import telemetry
from osiris_tasks.settings import (
    DEFAULT_BREAKER_RESET_S,
    DEFAULT_BREAKER_THRESHOLD,
    Settings,
)
from osiris_tasks.settings import DEFAULT_SIDECAR_CONNECT_TIMEOUT_S as DEFAULT_CONNECT_TIMEOUT_S
from osiris_tasks.settings import DEFAULT_SIDECAR_MAX_ATTEMPTS as DEFAULT_MAX_ATTEMPTS
from osiris_tasks.settings import DEFAULT_SIDECAR_READ_TIMEOUT_S as DEFAULT_READ_TIMEOUT_S
from osiris_tasks.settings import DEFAULT_SIDECAR_RETRY_BUDGET_S as DEFAULT_RETRY_BUDGET_S

__all__ = ["CircuitBreaker", "SidecarClient"]

logger = logging.getLogger(__name__)

# Largest response body read; a bigger one is refused rather than held in memory.
MAX_BODY_BYTES = 1024 * 1024
BODY_CHUNK_BYTES = 64 * 1024
# Connections kept per host: one per worker thread sharing the client, with room to spare.
POOL_MAXSIZE = 64
# Full-jitter backoff: retry n waits uniform(0, min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2**n)).
BACKOFF_BASE_S = 0.2
BACKOFF_CAP_S = 5.0
# Floor for a timeout cut down to the budget left (urllib3 refuses a zero timeout).
MIN_TIMEOUT_S = 0.01
# Sent with every request (urllib3 sends none of its own).
USER_AGENT = "osiris-tasks"
# Statuses whose Retry-After header is honoured instead of the backoff.
RETRY_AFTER_STATUSES = frozenset({429, 503})
# Characters of an error body quoted in a SidecarStatusError message.
ERROR_SNIPPET_CHARS = 200

DEFAULT_MODEL_ID = "phi3"


class CircuitBreaker:
    """Opens after `threshold` consecutive failed calls; fails fast for `reset_s`, then lets
    one probe through (half-open). Thread-safe."""

    def __init__(self, threshold: int, reset_s: float, *, clock=time.monotonic):
        self._threshold = threshold
        self._reset_s = reset_s
        self._clock = clock
        self._lock = threading.Lock()
        self._failures = 0
        self._opened_at: float | None = None
        # When the half-open probe went out; a probe that never reports is replaced after reset_s.
        self._probe_at: float | None = None

    @property
    def state(self) -> str:
        """`"closed"`, `"open"` or `"half_open"`."""
        with self._lock:
            return self._state()

    def before_call(self) -> None:
        """Return if a call may go out, else raise `SidecarUnavailable`."""
        with self._lock:
            state = self._state()
            if state == "closed":
                return
            if state == "half_open" and self._probe_free():
                self._probe_at = self._clock()
                return
        raise SidecarUnavailable("sidecar unavailable (circuit open)")

    def record_success(self) -> None:
        """A call got an answer: close the circuit and forget past failures."""
        with self._lock:
            self._failures = 0
            self._opened_at = None
            self._probe_at = None

    def record_failure(self) -> None:
        """A call failed: count it, and (re)open the circuit at the threshold or after a probe."""
        with self._lock:
            self._failures += 1
            if self._probe_at is not None or self._failures >= self._threshold:
                self._opened_at = self._clock()
            self._probe_at = None

    def _state(self) -> str:
        if self._opened_at is None:
            return "closed"
        return "half_open" if self._clock() - self._opened_at >= self._reset_s else "open"

    def _probe_free(self) -> bool:
        return self._probe_at is None or self._clock() - self._probe_at >= self._reset_s


@dataclass(frozen=True)
class _Request:
    """One logical call to the sidecar, and the context its errors carry."""

    method: str
    path: str
    run_id: str | None
    params: dict[str, str] | None = None
    payload: dict[str, Any] | None = None
    # Errors after which this call stops retrying, though they are retryable in general (a
    # server that refuses a request's shape with a 500 answers every retry the same way).
    give_up: Callable[[SidecarError], bool] | None = None

    @property
    def where(self) -> str:
        return f"{self.method} {self.path}"


class SidecarClient:
    """A thread-safe client for the sidecar, sharing one urllib3 connection pool."""

    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
        read_timeout_s: float = DEFAULT_READ_TIMEOUT_S,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        retry_budget_s: float = DEFAULT_RETRY_BUDGET_S,
        breaker: CircuitBreaker | None = None,
        cache: CompletionCache | None = None,
        sleep=time.sleep,
        clock=time.monotonic,
    ):
        self.base_url = base_url.rstrip("/")
        # The completion cache of the three LLM calls (off unless given).
        self.cache = cache or CompletionCache()
        self._token = token
        self._connect_timeout_s = connect_timeout_s
        self._read_timeout_s = read_timeout_s
        self._max_attempts = max(1, max_attempts)
        self._retry_budget_s = retry_budget_s
        self._breaker = breaker or CircuitBreaker(
            DEFAULT_BREAKER_THRESHOLD, DEFAULT_BREAKER_RESET_S, clock=clock
        )
        self._path_prefix = (urllib3.util.parse_url(self.base_url).path or "").rstrip("/")
        self._pool = _new_pool(self.base_url)
        self._sleep = sleep
        self._clock = clock

    @classmethod
    def from_settings(cls, settings: Settings) -> SidecarClient:
        """A client configured from a `Settings`, with its own circuit breaker."""
        return cls(
            settings.sidecar_url,
            token=settings.sidecar_token,
            connect_timeout_s=settings.sidecar_connect_timeout_s,
            read_timeout_s=settings.sidecar_read_timeout_s,
            max_attempts=settings.sidecar_max_attempts,
            retry_budget_s=settings.sidecar_retry_budget_s,
            breaker=CircuitBreaker(settings.breaker_threshold, settings.breaker_reset_s),
        )

    @property
    def breaker(self) -> CircuitBreaker:
        """The circuit breaker guarding this client's calls."""
        return self._breaker

    def generate(
        self,
        prompt: str,
        *,
        max_length: int,
        model_id: str = DEFAULT_MODEL_ID,
        symbols: Sequence[str] = (),
        run_id: str | None = None,
        calls: list[dict] | None = None,
    ) -> Any:
        """A completion: the decoded JSON body, or the body as text if it is not JSON. The
        sidecar's API takes no schema, so `symbols` (the ticker's choices) is not sent. The
        call is appended to `calls` (see `record_call`)."""
        payload = {"prompt": prompt, "max_length": max_length, "model_id": model_id}
        request = _Request("POST", "/generate/", run_id, {"model_id": model_id}, payload)
        text = self._completion("proposal", model_id, request, calls)
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError:
            return text

    def propose_trade_adjustments(
        self,
        prompt: str,
        *,
        max_length: int,
        run_id: str | None = None,
        calls: list[dict] | None = None,
    ) -> dict:
        """The sidecar's Hermes-assessed proposal: a dict with a string `hermes_assessment`."""
        payload = {"prompt": prompt, "max_length": max_length}
        request = _Request("POST", "/propose_trade_adjustments/", run_id, payload=payload)
        data = self._json_object(request, self._completion("assessment", "hermes", request, calls))
        transaction_id = data.get("transaction_id")
        if not isinstance(data.get("hermes_assessment"), str) or not (
            transaction_id is None or isinstance(transaction_id, str)
        ):
            raise self._error(request, SidecarResponseError, "answered an unexpected shape")
        return data

    def score(
        self,
        proposal: dict,
        context: str,
        *,
        run_id: str | None = None,
        calls: list[dict] | None = None,
    ) -> float:
        """Hermes' score for `proposal` in `context`, a finite float."""
        request = _Request(
            "POST", "/score/hermes/", run_id, payload={"proposal": proposal, "context": context}
        )
        text = self._completion("score", "hermes", request, calls)
        value = self._json_object(request, text).get("score")
        if finite_number(value) is None:
            raise self._error(request, SidecarResponseError, "answered a score that is not finite")
        return float(value)

    def post_json(
        self,
        path: str,
        payload: dict[str, Any],
        *,
        run_id: str | None = None,
        give_up: Callable[[SidecarError], bool] | None = None,
    ) -> dict:
        """POST `payload` to `path` (below the base URL) with this client's retries, budget and
        breaker; the answer as a JSON object. `give_up` names retryable errors not to retry."""
        request = _Request("POST", path, run_id, payload=payload, give_up=give_up)
        return self._json_object(request, self._call(request))

    def speak(
        self,
        text: str,
        *,
        transaction_id: str | None = None,
        exaggeration: float = 0.5,
        run_id: str | None = None,
    ) -> dict:
        """Ask the sidecar to voice `text`; returns its JSON answer."""
        payload: dict[str, Any] = {"text": text, "exaggeration": exaggeration}
        if transaction_id is not None:
            payload["transaction_id"] = transaction_id
        request = _Request("POST", "/speak", run_id, payload=payload)
        return self._json_object(request, self._call(request))

    def health(self) -> dict:
        """The sidecar's `/health` answer: one attempt, bypassing the circuit breaker."""
        request = _Request("GET", "/health", None)
        deadline = self._clock() + self._retry_budget_s
        return self._json_object(request, self._send(request, deadline))

    def reset_after_fork(self) -> None:
        """Give a forked worker process its own connection pool (the parent's is not shared)."""
        # The old pool is dropped, not closed: its sockets still belong to the parent.
        self._pool = _new_pool(self.base_url)

    def close(self) -> None:
        """Close pooled connections."""
        self._pool.close()

    def _completion(
        self, role: str, model: str, request: _Request, calls: list[dict] | None
    ) -> str:
        """The body of an LLM call as text, through the completion cache (keyed by the path
        and the payload); the call is appended to `calls`."""

        def ask() -> tuple[str, None]:  # the sidecar's API reports no token usage
            return self._call(request).decode("utf-8", errors="replace"), None

        return self.cache.complete(
            backend="sidecar",
            model=model,
            role=role,
            request={"path": request.path, "params": request.params, "payload": request.payload},
            ask=ask,
            calls=calls,
            run_id=request.run_id,
        )

    def _call(self, request: _Request) -> bytes:
        """Send `request` with retries, through the circuit breaker; returns the 2xx body."""
        try:
            self._breaker.before_call()
        except SidecarUnavailable as exc:
            raise self._error(request, SidecarUnavailable, "unavailable (circuit open)") from exc
        try:
            body = self._send_with_retries(request)
        except SidecarError as exc:
            if _worth_retrying(request, exc):
                self._breaker.record_failure()
            else:
                self._breaker.record_success()
            raise
        self._breaker.record_success()
        return body

    def _send_with_retries(self, request: _Request) -> bytes:
        deadline = self._clock() + self._retry_budget_s
        attempt = 1
        while True:
            try:
                return self._send(request, deadline)
            except SidecarError as exc:
                wait_s = self._retry_wait_s(request, exc, attempt, deadline)
                if wait_s is None:
                    raise
                logger.warning(
                    "sidecar retry run_id=%s endpoint=%s attempt=%d/%d wait_s=%.3f error=%s",
                    request.run_id,
                    request.where,
                    attempt,
                    self._max_attempts,
                    wait_s,
                    exc,
                )
            self._sleep(wait_s)
            attempt += 1

    def _retry_wait_s(
        self, request: _Request, exc: SidecarError, attempt: int, deadline: float
    ) -> float | None:
        """How long to wait before the next attempt, or None to give up now."""
        if not _worth_retrying(request, exc) or attempt >= self._max_attempts:
            return None
        wait_s = None
        if isinstance(exc, SidecarStatusError) and exc.status in RETRY_AFTER_STATUSES:
            wait_s = exc.retry_after_s
        if wait_s is None:
            wait_s = random.uniform(0, min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** (attempt - 1)))
        return wait_s if self._clock() + wait_s < deadline else None

    def _send(self, request: _Request, deadline: float) -> bytes:
        """One HTTP exchange, one CLIENT span; returns the 2xx body or raises a `SidecarError`."""
        url = self.base_url + request.path
        with telemetry.client_span(
            f"sidecar {request.where}", request.run_id, method=request.method, url=url
        ) as span:
            body, headers = self._encoded(request)
            connect_s, read_s = self._timeouts(deadline)
            target = self._path_prefix + request.path
            if request.params:
                target += "?" + urlencode(request.params)
            response, read_to_end = None, False
            try:
                response = self._pool.urlopen(
                    request.method,
                    target,
                    body=body,
                    headers=headers,
                    timeout=urllib3.Timeout(connect=connect_s, read=read_s),
                    retries=False,
                    redirect=False,
                    preload_content=False,
                )
                span.set_attribute("http.response.status_code", response.status)
                if not 200 <= response.status < 300:
                    raise self._status_error(request, response)
                content = self._read_body(request, response, deadline)
                read_to_end = True
                return content
            except HTTPError as exc:
                raise self._converted(request, exc) from exc
            finally:
                if response is not None:
                    if not read_to_end:  # the rest of the body would be read as the next answer
                        response.close()
                    response.release_conn()

    def _encoded(self, request: _Request) -> tuple[bytes | None, dict[str, str]]:
        """The request's body (strict JSON: NaN is refused, not sent) and headers."""
        headers = {"User-Agent": USER_AGENT}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        propagate.inject(headers)
        if request.payload is None:
            return None, headers
        try:
            body = json.dumps(request.payload, allow_nan=False, separators=(",", ":"))
        except (TypeError, ValueError) as exc:
            raise self._error(
                request, SidecarError, f"request not sent (its JSON body: {exc})"
            ) from exc
        headers["Content-Type"] = "application/json"
        return body.encode(), headers

    def _timeouts(self, deadline: float) -> tuple[float, float]:
        """Connect and read timeouts, cut down to the budget left."""
        left_s = deadline - self._clock()
        return (
            max(MIN_TIMEOUT_S, min(self._connect_timeout_s, left_s)),
            max(MIN_TIMEOUT_S, min(self._read_timeout_s, left_s)),
        )

    def _read_body(
        self, request: _Request, response: urllib3.BaseHTTPResponse, deadline: float
    ) -> bytes:
        """The body, read as it arrives: refused past `MAX_BODY_BYTES`, and given up once the
        call's budget is spent (the read timeout bounds one read, not a trickle of them)."""
        declared = response.headers.get("Content-Length", "")
        too_big = f"answered a body over {MAX_BODY_BYTES} bytes"
        if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
            raise self._error(request, SidecarResponseError, too_big)
        chunks, size = [], 0
        while chunk := _read_some(response):
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                raise self._error(request, SidecarResponseError, too_big)
            chunks.append(chunk)
            if self._clock() > deadline:
                raise self._error(
                    request,
                    SidecarTimeout,
                    "timed out (the body was still coming when the budget ran out)",
                )
        return b"".join(chunks)

    def _status_error(self, request: _Request, response: urllib3.BaseHTTPResponse) -> SidecarError:
        status = response.status
        return self._error(
            request,
            SidecarStatusError,
            f"answered HTTP {status}: {_snippet(response)}",
            status=status,
            retry_after_s=_retry_after_s(response.headers.get("Retry-After")),
        )

    def _converted(self, request: _Request, exc: HTTPError) -> SidecarError:
        """The `SidecarError` for a urllib3 exception."""
        reason = f"{type(exc).__name__}: {exc}"[:ERROR_SNIPPET_CHARS]
        if isinstance(exc, NewConnectionError | ProtocolError):  # refused, reset, cut short
            return self._error(request, SidecarUnavailable, f"unreachable ({reason})")
        if isinstance(exc, TransportTimeout):
            return self._error(request, SidecarTimeout, f"timed out ({reason})")
        if isinstance(exc, DecodeError):
            return self._error(request, SidecarResponseError, f"sent a bad encoding ({reason})")
        return self._error(request, SidecarError, f"request failed ({reason})")

    def _json_object(self, request: _Request, body: bytes | str) -> dict:
        """`body` decoded as a JSON object, or `SidecarResponseError`."""
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise self._error(request, SidecarResponseError, "answered non-JSON") from exc
        if not isinstance(data, dict):
            raise self._error(request, SidecarResponseError, "answered JSON that is not an object")
        return data

    def _error(self, request: _Request, cls: type[SidecarError], detail: str, **fields):
        """A `cls` naming the endpoint, carrying run_id, with the token scrubbed out."""
        message = f"sidecar {request.where} {detail}"
        if self._token:
            message = message.replace(self._token, "***")
        return cls(message, run_id=request.run_id, **fields)


def _worth_retrying(request: _Request, exc: SidecarError) -> bool:
    """Whether `exc` is retryable for this request (and so counts against the breaker)."""
    return exc.retryable and not (request.give_up is not None and request.give_up(exc))


def _new_pool(base_url: str) -> urllib3.HTTPConnectionPool:
    """A pool that fits many threads (a busy pool opens extra connections rather than
    waiting); retries are ours, so urllib3 makes none. No proxy, netrc or CA-bundle
    environment variables are read: settings are read once."""
    return urllib3.connection_from_url(base_url, maxsize=POOL_MAXSIZE, block=False, retries=False)


def _snippet(response: urllib3.BaseHTTPResponse) -> str:
    """The start of an error body, for the message; empty if it cannot be read."""
    try:
        head = response.read(ERROR_SNIPPET_CHARS, decode_content=True)
    except HTTPError:
        return ""
    return head.decode("utf-8", errors="replace").strip()


def _retry_after_s(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (delay-seconds or HTTP-date); None if unusable."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return _retry_after_date_s(value)
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def _retry_after_date_s(value: str) -> float | None:
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - time.time())


def _read_some(response: urllib3.BaseHTTPResponse) -> bytes:
    """What has arrived of the body, after at most one read (b"" at its end)."""
    return response.read1(BODY_CHUNK_BYTES, decode_content=True)
