"""One frozen settings object, read from the environment once per process."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from osiris_tasks.domain.book import BOOK_MODES, FILL_AT
from osiris_tasks.domain.risk import (
    DEFAULT_MAX_GROSS_EXPOSURE_PCT,
    DEFAULT_MAX_ORDERS_PER_MINUTE,
    DEFAULT_MAX_SYMBOL_POSITION_PCT,
    RISK_GATE_CONFIG,
)
from osiris_tasks.domain.ticks import SYMBOL_RE
from osiris_tasks.errors import ConfigError

__all__ = ["Settings", "redact_url", "redacted_repr"]

DEFAULT_REDIS_URL = "redis://localhost:6379/0"
DEFAULT_SIDECAR_URL = "http://localhost:8000"
DEFAULT_LANCEDB_URI = "./lancedb_data"
# Redis broker redelivers a task whose worker died after this long (Celery's default is 1 h).
DEFAULT_VISIBILITY_TIMEOUT_S = 300
# Query parameters of a URL whose value is a secret (redact_url).
SECRET_PARAMETER = re.compile(r"pass|token|secret|key|auth", re.IGNORECASE)
DEFAULT_NAV = 100_000.0
# The book the gate decides against (adapters/portfolio.py): `static` keeps the original
# behaviour; `osiris demo` runs `paper`.
DEFAULT_BOOK = "static"
DEFAULT_BOOK_SLIPPAGE_BPS = 5.0
DEFAULT_BOOK_FEE_BPS = 1.0
# Ticks without a symbol (the original simulator's OHLCV bars) are filed under this one.
DEFAULT_SYMBOL = "SPY"
# Completion length asked of the sidecar for a proposal.
DEFAULT_MAX_LENGTH = 512
DEFAULT_SIDECAR_CONNECT_TIMEOUT_S = 3.0
DEFAULT_SIDECAR_READ_TIMEOUT_S = 30.0
# Attempts per sidecar call, and the wall-clock budget all attempts and backoffs must fit in.
DEFAULT_SIDECAR_MAX_ATTEMPTS = 4
DEFAULT_SIDECAR_RETRY_BUDGET_S = 60.0
# Consecutive failed calls that open the circuit breaker, and how long it stays open.
DEFAULT_BREAKER_THRESHOLD = 5
DEFAULT_BREAKER_RESET_S = 15.0
# LanceDB maintenance: compact every N commits to a table; delete versions older than this.
DEFAULT_STORE_MAINTAIN_EVERY_COMMITS = 100
DEFAULT_STORE_CLEANUP_OLDER_THAN_S = 120.0
# Below this, cleanup can free the version number a concurrent writer is about to commit
# (lance-format/lance#3718): its rows land in an orphaned version no reader sees.
MIN_STORE_CLEANUP_OLDER_THAN_S = 60.0
# Batches of at least this many ticks travel by reference on the Celery path (tickstash.py; 0:
# never). Below it the extra round trips (SET, GET, DEL) cost about what smaller messages save.
DEFAULT_TICKS_BY_REFERENCE_MIN = 50
# The market stream (`--source stream`): the producer trims it to about this many entries
# (0: no cap); a dead bridge's unacknowledged entries are taken over after this long; who else
# trims it ("acked": the bridge, entries every group acknowledged; "maxlen": nobody else).
DEFAULT_MARKET_STREAM_MAXLEN = 1_000_000
DEFAULT_STREAM_CLAIM_IDLE_S = 30.0
STREAM_RETENTIONS = ("acked", "maxlen")
# A run's parallel step (the evaluators) must have joined within this many visibility timeouts
# plus one task time limit (a part redelivered after a killed worker, then run in full) before
# a sweeper records the run with the parts it has (adapters/join.py).
JOIN_DEADLINE_VISIBILITY_TIMEOUTS = 2
# The LLM backend of the three LLM nodes: the Osiris sidecar's API, or any server speaking
# OpenAI's Chat Completions (Ollama, vLLM, llama.cpp's server, LM Studio, OpenAI).
LLM_BACKENDS = ("sidecar", "openai")
DEFAULT_LLM_BACKEND = "sidecar"
DEFAULT_LLM_BASE_URL = "http://localhost:11434/v1"  # Ollama's OpenAI-compatible API
DEFAULT_LLM_MODEL = "phi3"
# How the proposal's JSON is asked for: a strict JSON Schema, JSON mode (with the schema where
# the server takes one, as llama.cpp's does), or the prompt alone. A server that refuses one
# is asked the next way (remembered per server).
LLM_STRUCTURED_MODES = ("json_schema", "json_object", "none")
DEFAULT_LLM_STRUCTURED = "json_schema"
DEFAULT_LLM_TEMPERATURE = 0.0
DEFAULT_LLM_MAX_TOKENS = 512
# The completion cache (LanceDB `completions`): `write` keeps every completion so a run can be
# replayed later; `read` answers from the cache only (a miss is an error, never a live call:
# backtests); `readwrite` answers from the cache, asks the server on a miss and keeps the
# answer; `off` neither.
LLM_CACHE_MODES = ("off", "write", "read", "readwrite")
DEFAULT_LLM_CACHE = "write"
# Cached completions a reading process holds in memory (the lookups' fast path).
DEFAULT_LLM_CACHE_MEMORY_ROWS = 100_000
# How the TTS task waits for `tts.acknowledged.<tx>` before giving up.
DEFAULT_TTS_ACK_TIMEOUT_S = 30.0


@dataclass(frozen=True, repr=False)
class Settings:
    """Everything a worker, the bridge or the CLI needs to know, built once with `from_env()`.

    Its repr leaves out the secrets (`repr=False` fields) and shows every URL redacted
    (`redact_url`), so a settings object can be logged."""

    redis_url: str = DEFAULT_REDIS_URL
    broker_url: str = DEFAULT_REDIS_URL
    result_backend: str = DEFAULT_REDIS_URL
    sidecar_url: str = DEFAULT_SIDECAR_URL
    sidecar_token: str | None = field(default=None, repr=False)
    sidecar_connect_timeout_s: float = DEFAULT_SIDECAR_CONNECT_TIMEOUT_S
    sidecar_read_timeout_s: float = DEFAULT_SIDECAR_READ_TIMEOUT_S
    sidecar_max_attempts: int = DEFAULT_SIDECAR_MAX_ATTEMPTS
    sidecar_retry_budget_s: float = DEFAULT_SIDECAR_RETRY_BUDGET_S
    breaker_threshold: int = DEFAULT_BREAKER_THRESHOLD
    breaker_reset_s: float = DEFAULT_BREAKER_RESET_S
    lancedb_uri: str = DEFAULT_LANCEDB_URI
    store_maintain_every_commits: int = DEFAULT_STORE_MAINTAIN_EVERY_COMMITS
    store_cleanup_older_than_s: float = DEFAULT_STORE_CLEANUP_OLDER_THAN_S
    visibility_timeout_s: int = DEFAULT_VISIBILITY_TIMEOUT_S
    ticks_by_reference_min: int = DEFAULT_TICKS_BY_REFERENCE_MIN
    retention_days: float | None = None  # OSIRIS_RETENTION_DAYS: older runs leave the tables
    archive_dir: str | None = None  # OSIRIS_ARCHIVE_DIR: where expired rows go first (Parquet)
    market_stream_maxlen: int = DEFAULT_MARKET_STREAM_MAXLEN
    market_stream_retention: str = STREAM_RETENTIONS[0]
    stream_claim_idle_s: float = DEFAULT_STREAM_CLAIM_IDLE_S
    events_stream: str | None = None  # OSIRIS_EVENTS_STREAM: every event mirrored to this stream
    events_stream_maxlen: int = DEFAULT_MARKET_STREAM_MAXLEN
    llm_backend: str = DEFAULT_LLM_BACKEND
    llm_base_url: str = DEFAULT_LLM_BASE_URL
    llm_api_key: str | None = field(default=None, repr=False)
    llm_model: str = DEFAULT_LLM_MODEL
    llm_eval_model: str | None = None  # None: llm_model
    llm_structured: str = DEFAULT_LLM_STRUCTURED
    llm_temperature: float = DEFAULT_LLM_TEMPERATURE
    llm_seed: int | None = None
    llm_max_tokens: int = DEFAULT_LLM_MAX_TOKENS
    llm_max_tokens_per_run: int | None = None  # None: no token budget per run
    llm_deadline_s: float | None = None  # None: no deadline for a run's LLM calls
    llm_cache: str = DEFAULT_LLM_CACHE
    llm_cache_memory_rows: int = DEFAULT_LLM_CACHE_MEMORY_ROWS
    llm_cache_uri: str | None = None  # None: lancedb_uri (a backtest reads another store's)
    join_deadline_s: float | None = None  # None: derived (see `run_join_deadline_s`)
    tts_enabled: bool = False
    tts_ack_timeout_s: float = DEFAULT_TTS_ACK_TIMEOUT_S
    max_position_size_pct: float = RISK_GATE_CONFIG["max_position_size_pct"]
    max_daily_loss_pct: float = RISK_GATE_CONFIG["max_daily_loss_pct"]
    max_symbol_position_pct: float = DEFAULT_MAX_SYMBOL_POSITION_PCT
    max_gross_exposure_pct: float = DEFAULT_MAX_GROSS_EXPOSURE_PCT
    max_orders_per_minute: int = DEFAULT_MAX_ORDERS_PER_MINUTE
    nav: float = DEFAULT_NAV
    book: str = DEFAULT_BOOK
    book_fill_at: str = FILL_AT[0]
    book_slippage_bps: float = DEFAULT_BOOK_SLIPPAGE_BPS
    book_fee_bps: float = DEFAULT_BOOK_FEE_BPS
    book_session_start_hour: int = 0
    daily_pnl: float = 0.0
    default_symbol: str = DEFAULT_SYMBOL
    symbols: frozenset[str] | None = None  # OSIRIS_SYMBOLS: the only symbols ticks may carry
    max_length: int = DEFAULT_MAX_LENGTH
    json_logs: bool = False
    task_events: bool = False  # Celery task events for monitors; Flower turns them on itself
    otlp_endpoint: str | None = None  # OTLP/HTTP base URL; tracing is off without it
    otel_service_name: str | None = None  # else each process's default (see telemetry.py)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides) -> Settings:
        """Build settings from `env` (default: `os.environ`); keyword overrides win."""
        env = os.environ if env is None else env
        redis_url = env.get("OSIRIS_REDIS_URL") or DEFAULT_REDIS_URL
        values = dict(
            redis_url=redis_url,
            broker_url=env.get("CELERY_BROKER_URL") or redis_url,
            result_backend=env.get("CELERY_RESULT_BACKEND") or redis_url,
            sidecar_url=(
                env.get("OSIRIS_SIDECAR_URL") or env.get("PHI3_API_URL") or DEFAULT_SIDECAR_URL
            ).rstrip("/"),
            sidecar_token=env.get("OSIRIS_SIDECAR_TOKEN") or None,
            sidecar_read_timeout_s=_float(
                env, "OSIRIS_SIDECAR_READ_TIMEOUT_S", DEFAULT_SIDECAR_READ_TIMEOUT_S
            ),
            sidecar_retry_budget_s=_float(
                env, "OSIRIS_SIDECAR_RETRY_BUDGET_S", DEFAULT_SIDECAR_RETRY_BUDGET_S
            ),
            lancedb_uri=env.get("OSIRIS_LANCEDB_URI") or DEFAULT_LANCEDB_URI,
            store_maintain_every_commits=_int(
                env, "OSIRIS_STORE_MAINTAIN_EVERY_COMMITS", DEFAULT_STORE_MAINTAIN_EVERY_COMMITS
            ),
            store_cleanup_older_than_s=_float(
                env, "OSIRIS_STORE_CLEANUP_OLDER_THAN_S", DEFAULT_STORE_CLEANUP_OLDER_THAN_S
            ),
            visibility_timeout_s=_int(
                env, "OSIRIS_VISIBILITY_TIMEOUT_S", DEFAULT_VISIBILITY_TIMEOUT_S
            ),
            retention_days=_float(env, "OSIRIS_RETENTION_DAYS", None),
            archive_dir=env.get("OSIRIS_ARCHIVE_DIR") or None,
            market_stream_maxlen=_int(
                env, "OSIRIS_MARKET_STREAM_MAXLEN", DEFAULT_MARKET_STREAM_MAXLEN
            ),
            market_stream_retention=env.get("OSIRIS_MARKET_STREAM_RETENTION")
            or STREAM_RETENTIONS[0],
            stream_claim_idle_s=_float(
                env, "OSIRIS_STREAM_CLAIM_IDLE_S", DEFAULT_STREAM_CLAIM_IDLE_S
            ),
            events_stream=env.get("OSIRIS_EVENTS_STREAM") or None,
            events_stream_maxlen=_int(
                env, "OSIRIS_EVENTS_STREAM_MAXLEN", DEFAULT_MARKET_STREAM_MAXLEN
            ),
            ticks_by_reference_min=_int(
                env, "OSIRIS_TICKS_BY_REFERENCE_MIN", DEFAULT_TICKS_BY_REFERENCE_MIN
            ),
            join_deadline_s=_float(env, "OSIRIS_JOIN_DEADLINE_S", None),
            llm_backend=env.get("OSIRIS_LLM_BACKEND") or DEFAULT_LLM_BACKEND,
            llm_base_url=(env.get("OSIRIS_LLM_BASE_URL") or DEFAULT_LLM_BASE_URL).rstrip("/"),
            llm_api_key=env.get("OSIRIS_LLM_API_KEY") or env.get("OPENAI_API_KEY") or None,
            llm_model=env.get("OSIRIS_LLM_MODEL") or DEFAULT_LLM_MODEL,
            llm_eval_model=env.get("OSIRIS_LLM_EVAL_MODEL") or None,
            llm_structured=env.get("OSIRIS_LLM_STRUCTURED") or DEFAULT_LLM_STRUCTURED,
            llm_temperature=_float(env, "OSIRIS_LLM_TEMPERATURE", DEFAULT_LLM_TEMPERATURE),
            llm_seed=_optional_int(env, "OSIRIS_LLM_SEED"),
            llm_max_tokens=_int(env, "OSIRIS_LLM_MAX_TOKENS", DEFAULT_LLM_MAX_TOKENS),
            llm_max_tokens_per_run=_optional_int(env, "OSIRIS_LLM_MAX_TOKENS_PER_RUN"),
            llm_deadline_s=_float(env, "OSIRIS_LLM_DEADLINE_S", None),
            llm_cache=env.get("OSIRIS_LLM_CACHE") or DEFAULT_LLM_CACHE,
            llm_cache_memory_rows=_int(
                env, "OSIRIS_LLM_CACHE_MEMORY_ROWS", DEFAULT_LLM_CACHE_MEMORY_ROWS
            ),
            llm_cache_uri=env.get("OSIRIS_LLM_CACHE_URI") or None,
            tts_enabled=_bool(env, "OSIRIS_TTS_ENABLED"),
            max_position_size_pct=_float(
                env, "OSIRIS_MAX_POSITION_SIZE_PCT", RISK_GATE_CONFIG["max_position_size_pct"]
            ),
            max_daily_loss_pct=_float(
                env, "OSIRIS_MAX_DAILY_LOSS_PCT", RISK_GATE_CONFIG["max_daily_loss_pct"]
            ),
            max_symbol_position_pct=_float(
                env, "OSIRIS_MAX_SYMBOL_POSITION_PCT", DEFAULT_MAX_SYMBOL_POSITION_PCT
            ),
            max_gross_exposure_pct=_float(
                env, "OSIRIS_MAX_GROSS_EXPOSURE_PCT", DEFAULT_MAX_GROSS_EXPOSURE_PCT
            ),
            max_orders_per_minute=_int(
                env, "OSIRIS_MAX_ORDERS_PER_MINUTE", DEFAULT_MAX_ORDERS_PER_MINUTE
            ),
            nav=_float(env, "OSIRIS_NAV", DEFAULT_NAV),
            book=env.get("OSIRIS_BOOK") or DEFAULT_BOOK,
            book_fill_at=env.get("OSIRIS_BOOK_FILL_AT") or FILL_AT[0],
            book_slippage_bps=_float(env, "OSIRIS_BOOK_SLIPPAGE_BPS", DEFAULT_BOOK_SLIPPAGE_BPS),
            book_fee_bps=_float(env, "OSIRIS_BOOK_FEE_BPS", DEFAULT_BOOK_FEE_BPS),
            book_session_start_hour=_int(env, "OSIRIS_BOOK_SESSION_START_HOUR", 0),
            daily_pnl=_float(env, "OSIRIS_DAILY_PNL", 0.0),
            default_symbol=env.get("OSIRIS_DEFAULT_SYMBOL") or DEFAULT_SYMBOL,
            symbols=_symbols(env.get("OSIRIS_SYMBOLS")),
            json_logs=_bool(env, "OSIRIS_JSON_LOGS"),
            task_events=_bool(env, "OSIRIS_TASK_EVENTS"),
            otlp_endpoint=env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or None,
            otel_service_name=env.get("OTEL_SERVICE_NAME") or None,
        )
        values.update(overrides)
        return cls(**values).validated()

    def validated(self) -> Settings:
        """Return self, or raise `ConfigError` naming the first unusable value."""
        if not 0 < self.max_position_size_pct < 1 or not 0 < self.max_daily_loss_pct < 1:
            raise ConfigError("risk limits must be fractions between 0 and 1")
        if not 0 < self.max_symbol_position_pct <= 1:
            raise ConfigError("OSIRIS_MAX_SYMBOL_POSITION_PCT must be a fraction in (0, 1]")
        if not 0 < self.max_gross_exposure_pct <= 10:
            raise ConfigError(
                "OSIRIS_MAX_GROSS_EXPOSURE_PCT must be in (0, 10] (a fraction of NAV)"
            )
        if self.max_orders_per_minute < 1:
            raise ConfigError("OSIRIS_MAX_ORDERS_PER_MINUTE must be at least 1")
        if not math.isfinite(self.nav) or self.nav <= 0:
            raise ConfigError("OSIRIS_NAV must be a finite positive number")
        if self.book not in BOOK_MODES:
            raise ConfigError(f"OSIRIS_BOOK must be one of {', '.join(BOOK_MODES)}")
        if self.book_fill_at not in FILL_AT:
            raise ConfigError(f"OSIRIS_BOOK_FILL_AT must be one of {', '.join(FILL_AT)}")
        if not (0 <= self.book_slippage_bps < 10_000 and 0 <= self.book_fee_bps < 10_000):
            raise ConfigError(
                "OSIRIS_BOOK_SLIPPAGE_BPS and OSIRIS_BOOK_FEE_BPS must be in [0, 10000)"
            )
        if not 0 <= self.book_session_start_hour <= 23:
            raise ConfigError("OSIRIS_BOOK_SESSION_START_HOUR must be an hour, 0 to 23")
        if self.store_cleanup_older_than_s < MIN_STORE_CLEANUP_OLDER_THAN_S:
            raise ConfigError(
                f"OSIRIS_STORE_CLEANUP_OLDER_THAN_S must be at least "
                f"{MIN_STORE_CLEANUP_OLDER_THAN_S:g} s: a shorter window can drop a concurrent "
                "writer's commit (lance-format/lance#3718)"
            )
        if self.retention_days is not None and not (
            math.isfinite(self.retention_days) and self.retention_days > 0
        ):
            raise ConfigError("OSIRIS_RETENTION_DAYS must be a positive number of days (or unset)")
        if self.market_stream_maxlen < 0 or self.events_stream_maxlen < 0:
            raise ConfigError(
                "OSIRIS_MARKET_STREAM_MAXLEN and OSIRIS_EVENTS_STREAM_MAXLEN must be 0 (no cap) "
                "or more"
            )
        if self.market_stream_retention not in STREAM_RETENTIONS:
            raise ConfigError(
                f"OSIRIS_MARKET_STREAM_RETENTION must be one of {', '.join(STREAM_RETENTIONS)}"
            )
        if self.stream_claim_idle_s < 1:
            raise ConfigError("OSIRIS_STREAM_CLAIM_IDLE_S must be at least 1")
        if self.ticks_by_reference_min < 0:
            raise ConfigError("OSIRIS_TICKS_BY_REFERENCE_MIN must be 0 (never) or more")
        if self.llm_backend not in LLM_BACKENDS:
            raise ConfigError(f"OSIRIS_LLM_BACKEND must be one of {', '.join(LLM_BACKENDS)}")
        if self.llm_structured not in LLM_STRUCTURED_MODES:
            raise ConfigError(
                f"OSIRIS_LLM_STRUCTURED must be one of {', '.join(LLM_STRUCTURED_MODES)}"
            )
        if self.llm_cache not in LLM_CACHE_MODES:
            raise ConfigError(f"OSIRIS_LLM_CACHE must be one of {', '.join(LLM_CACHE_MODES)}")
        if self.llm_cache_memory_rows < 0:
            raise ConfigError("OSIRIS_LLM_CACHE_MEMORY_ROWS must be 0 or more")
        if self.llm_max_tokens < 1:
            raise ConfigError("OSIRIS_LLM_MAX_TOKENS must be at least 1")
        if self.llm_max_tokens_per_run is not None and self.llm_max_tokens_per_run < 1:
            raise ConfigError("OSIRIS_LLM_MAX_TOKENS_PER_RUN must be at least 1 (or unset)")
        if self.llm_deadline_s is not None and self.llm_deadline_s <= 0:
            raise ConfigError("OSIRIS_LLM_DEADLINE_S must be positive (or unset)")
        if self.join_deadline_s is not None and self.join_deadline_s <= 0:
            raise ConfigError("OSIRIS_JOIN_DEADLINE_S must be positive (or unset)")
        if self.sidecar_retry_budget_s >= self.visibility_timeout_s:
            raise ConfigError(
                f"OSIRIS_VISIBILITY_TIMEOUT_S ({self.visibility_timeout_s} s) must exceed "
                f"OSIRIS_SIDECAR_RETRY_BUDGET_S ({self.sidecar_retry_budget_s:g} s), or tasks "
                "are delivered twice: raise the first or lower the second"
            )
        return self

    def with_(self, **changes) -> Settings:
        """A copy with some fields changed (tests, CLI flags)."""
        return replace(self, **changes).validated()

    @property
    def retention_s(self) -> float | None:
        """`retention_days` in seconds (None: keep every row)."""
        return None if self.retention_days is None else self.retention_days * 86_400

    @property
    def task_time_limit_s(self) -> int:
        """Hard limit for any task: above the sidecar budget, well under the visibility timeout."""
        return int(min(self.sidecar_retry_budget_s + 30, self.visibility_timeout_s * 0.8))

    def __repr__(self) -> str:
        shown = (f"{f.name}={_redacted(getattr(self, f.name))!r}" for f in fields(self) if f.repr)
        return f"Settings({', '.join(shown)})"

    @property
    def llm_eval_model_or_default(self) -> str:
        """The model that assesses and scores proposals: `llm_eval_model`, else `llm_model`."""
        return self.llm_eval_model or self.llm_model

    @property
    def run_join_deadline_s(self) -> float:
        """How long a run's parallel step may take to join before a sweeper records the run
        with the parts it has: `join_deadline_s`, or by default long enough for a part to be
        redelivered after a killed worker and run in full."""
        if self.join_deadline_s is not None:
            return self.join_deadline_s
        return (
            JOIN_DEADLINE_VISIBILITY_TIMEOUTS * self.visibility_timeout_s + self.task_time_limit_s
        )


def redact_url(url: str) -> str:
    """`url` with any password (in its authority or a query parameter such as `password=`,
    `token=` or `key=`) replaced by `***`, for logs, reprs and records."""
    parts = urlsplit(url)
    if parts.password:
        user = parts.username or ""
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
        parts = parts._replace(netloc=f"{user}:***@{host}{port}")
    if parts.query:
        query = [
            (name, "***" if SECRET_PARAMETER.search(name) else value)
            for name, value in parse_qsl(parts.query, keep_blank_values=True)
        ]
        parts = parts._replace(query=urlencode(query, safe="*"))
    return urlunsplit(parts)


def redacted_repr(instance) -> str:
    """A dataclass's repr with its `repr=False` fields left out and every URL redacted."""
    shown = (
        f"{f.name}={_redacted(getattr(instance, f.name))!r}" for f in fields(instance) if f.repr
    )
    return f"{type(instance).__name__}({', '.join(shown)})"


def _redacted(value):
    return redact_url(value) if isinstance(value, str) and "://" in value else value


def _symbols(raw: str | None) -> frozenset[str] | None:
    """`OSIRIS_SYMBOLS` (comma-separated) as a set; None when unset (every valid symbol)."""
    if not raw or not raw.strip():
        return None
    names = frozenset(name.strip() for name in raw.split(",") if name.strip())
    bad = sorted(name for name in names if not SYMBOL_RE.fullmatch(name))
    if bad:
        raise ConfigError(f"OSIRIS_SYMBOLS: {bad} are not symbols (1-16 letters, digits, . - _)")
    return names


def _float(env: Mapping[str, str], name: str, default: float | None) -> float | None:
    raw = env.get(name)
    if raw in (None, ""):
        return default
    try:
        value = float(raw)
    except ValueError as exc:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from exc
    if not math.isfinite(value):
        raise ConfigError(f"{name} must be finite, got {raw!r}")
    return value


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    return int(_float(env, name, default))


def _optional_int(env: Mapping[str, str], name: str) -> int | None:
    value = _float(env, name, None)
    return None if value is None else int(value)


def _bool(env: Mapping[str, str], name: str) -> bool:
    return (env.get(name) or "").strip().lower() in {"1", "true", "yes", "on"}
