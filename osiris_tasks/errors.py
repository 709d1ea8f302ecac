"""The osiris_tasks error tree.

Library errors (urllib3, redis, lancedb) are converted once, at the adapter that calls the
library, and re-raised ``from`` the original. A risk rejection is a decision, not an error::

    OsirisError
    ├── ConfigError              bad settings or flags
    ├── TickRejected             a tick failed validation (carries the reason)
    ├── ProposalInvalid          a completion did not yield a valid proposal (carries raw text)
    ├── SidecarError             any failure talking to the LLM sidecar
    │   ├── SidecarUnavailable   connection refused / reset, or the circuit breaker is open
    │   ├── SidecarTimeout       connect or read timeout
    │   ├── SidecarStatusError   non-2xx answer (carries status, retry_after_s)
    │   └── SidecarResponseError 2xx answer whose body is not what the API promises
    ├── LLMBudgetExceeded        the run's LLM token budget or deadline is spent: not asked
    ├── LLMCacheMiss             OSIRIS_LLM_CACHE=read and the request is not in the cache
    ├── BookError                the paper book or the kill switch could not be read or updated
    ├── StoreError               LanceDB could not read or write
    ├── MaintenanceProcessDied   the store's maintenance process died mid-call (retried)
    ├── EventError               Redis Pub/Sub publish failed
    ├── JoinError                a run's parallel step could not be joined (or never was)
    ├── BridgeError              the tick bridge cannot go on
    └── RequestRefused           the reference sidecar refuses a request (carries its HTTP status)
"""

from __future__ import annotations

__all__ = [
    "BookError",
    "BridgeError",
    "ConfigError",
    "EventError",
    "JoinError",
    "LLMBudgetExceeded",
    "LLMCacheMiss",
    "MaintenanceProcessDied",
    "OsirisError",
    "ProposalInvalid",
    "RequestRefused",
    "SidecarError",
    "SidecarResponseError",
    "SidecarStatusError",
    "SidecarTimeout",
    "SidecarUnavailable",
    "StoreError",
    "TickRejected",
]


class OsirisError(Exception):
    """Root of every error osiris_tasks raises on purpose."""

    def __init__(self, message: str, *, run_id: str | None = None, node: str | None = None):
        super().__init__(message)
        self.message = message
        self.run_id = run_id
        self.node = node

    def __str__(self) -> str:
        where = " ".join(f"{k}={v}" for k, v in (("run_id", self.run_id), ("node", self.node)) if v)
        return f"{self.message} [{where}]" if where else self.message


class ConfigError(OsirisError):
    """A setting or command-line flag has an unusable value."""


class TickRejected(OsirisError):
    """A market tick failed validation and never enters a batch."""

    def __init__(self, reason: str, *, sample: str = ""):
        super().__init__(reason)
        self.reason = reason
        self.sample = sample


class ProposalInvalid(OsirisError):
    """The sidecar's completion did not yield a proposal that fits the schema."""

    def __init__(self, message: str, *, raw: str = "", **context):
        super().__init__(message, **context)
        self.raw = raw


class SidecarError(OsirisError):
    """The LLM sidecar could not give a usable answer."""

    retryable = False


class SidecarUnavailable(SidecarError):
    """The sidecar refused or dropped the connection, or its circuit breaker is open."""

    retryable = True


class SidecarTimeout(SidecarError):
    """The sidecar did not connect or answer within the configured timeout."""

    retryable = True


class SidecarStatusError(SidecarError):
    """The sidecar answered with a non-2xx HTTP status."""

    def __init__(self, message: str, *, status: int, retry_after_s: float | None = None, **ctx):
        super().__init__(message, **ctx)
        self.status = status
        self.retry_after_s = retry_after_s

    @property
    def retryable(self) -> bool:  # type: ignore[override]
        return self.status == 429 or self.status >= 500


class SidecarResponseError(SidecarError):
    """The sidecar answered 2xx with a body that is not what its API promises."""


class LLMBudgetExceeded(OsirisError):
    """The run's LLM token budget or deadline is spent: the LLM was not asked."""


class LLMCacheMiss(OsirisError):
    """`OSIRIS_LLM_CACHE=read` (replay only) and the request is not in the completion cache:
    the LLM was not asked."""


class BookError(OsirisError):
    """The paper book or the kill switch could not be read or updated (Redis)."""


class StoreError(OsirisError):
    """LanceDB could not read or write a table."""


class MaintenanceProcessDied(OsirisError, RuntimeError):
    """The store's maintenance process died before it answered a call (`RunStore` retries
    it, as a RuntimeError)."""


class EventError(OsirisError):
    """An event could not be published on Redis."""


class JoinError(OsirisError):
    """A run's parallel step could not be joined in Redis, or a part never arrived."""


class BridgeError(OsirisError):
    """The tick bridge hit a condition it cannot recover from."""


class RequestRefused(OsirisError):
    """The reference sidecar refuses a request; carries the HTTP status and headers to answer
    with."""

    def __init__(self, message: str, *, status: int, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.headers = dict(headers or {})
