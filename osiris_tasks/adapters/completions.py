"""Every LLM call of a run goes through here: the completion cache, and the call's usage.

`CompletionCache.complete` asks the backend (`ask`) or the cache, as `OSIRIS_LLM_CACHE` says,
and appends the call to the run's `llm_calls` (`record_call`): role, backend, model, tokens,
latency, the request's `key` (`domain/completions.py`) and whether it came from the cache.

* **Writes** (`write`, `readwrite`): an answered call carries its `completion` text in the run's
  state, and `record_run` stages the run's completion rows in Redis (`CompletionStage`: one
  RPUSH, to a list per store). They are written to the `completions` table in batches
  (`RunStore.record_completions`, idempotent by key), by the `record_run` that finds
  `FLUSH_ROWS` staged or its process's last write `FLUSH_INTERVAL_S` old, under a lock so one
  process writes at a time, and by any reader before it reads. A writer killed mid-batch
  leaves the rows staged (they are removed only once written); written again, they add
  nothing. One LanceDB commit per run, measured, cost 0.67x the runs/s and 1.37x the CPU per
  run of the production layout (`docs/performance.md`); a batch of runs shares one.
* **Reads** (`read`, `readwrite`): a lookup answers from an in-memory copy of the table, loaded
  on the first lookup (up to `memory_rows` rows, a few hundred bytes each), and otherwise from
  LanceDB itself (a row another process wrote since), which it then remembers. A hit returns the
  text exactly as it was first answered, so a replay parses byte for byte what the live run
  parsed. Under `read` a miss is `LLMCacheMiss`: the server is never asked.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import orjson
import redis

from osiris_tasks.domain.completions import completion_key
from osiris_tasks.errors import LLMCacheMiss, StoreError
from osiris_tasks.keys import COMPLETIONS_FLUSH_PREFIX, COMPLETIONS_STAGED_PREFIX
from osiris_tasks.obs import telemetry
from osiris_tasks.settings import DEFAULT_LLM_CACHE_MEMORY_ROWS, LLM_CACHE_MODES
from osiris_tasks.store.claims import store_namespace

if TYPE_CHECKING:
    from osiris_tasks.store.runstore import RunStore

__all__ = ["CompletionCache", "CompletionStage", "record_call"]

logger = logging.getLogger(__name__)

# Staged completions are written once this many are staged, or when the process's last write
# is this old (checked when it stages), in batches of FLUSH_BATCH_ROWS, under a lock that a
# killed writer holds at most FLUSH_LOCK_TTL_MS.
FLUSH_ROWS = 200
FLUSH_INTERVAL_S = 5.0
FLUSH_BATCH_ROWS = 500
FLUSH_LOCK_TTL_MS = 60_000
# A cached answer: the completion text and the usage the server reported for it.
_CACHED_COLUMNS = ["completion_key", "completion", "prompt_tokens", "completion_tokens"]


class CompletionCache:
    """The completion cache of one process, in the mode `OSIRIS_LLM_CACHE` names."""

    def __init__(
        self,
        mode: str = "off",
        store: Callable[[], RunStore] | None = None,
        *,
        memory_rows: int = DEFAULT_LLM_CACHE_MEMORY_ROWS,
    ):
        if mode not in LLM_CACHE_MODES:
            raise ValueError(f"cache mode must be one of {LLM_CACHE_MODES}, not {mode!r}")
        self.mode = mode
        self.reads = mode in ("read", "readwrite")
        self.writes = mode in ("write", "readwrite")
        self._store = store
        self._stage: CompletionStage | None = None
        self._memory_rows = memory_rows
        self._memory: dict[str, tuple[str, int | None, int | None]] | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"CompletionCache({self.mode!r})"

    def use_store(
        self, store: Callable[[], RunStore], stage: CompletionStage | None = None
    ) -> None:
        """Read from the store `store()` returns (built on first use), its `stage` written
        first."""
        self._store, self._stage = store, stage

    def complete(
        self,
        *,
        backend: str,
        model: str,
        role: str,
        request: Mapping[str, Any],
        ask: Callable[[], tuple[str, Mapping | None]],
        calls: list[dict] | None,
        run_id: str | None,
    ) -> str:
        """The completion of `request`: from the cache where the mode reads it and has it, else
        `ask()` (the text and the server's usage). The call is appended to `calls`."""
        started = time.perf_counter()
        key = completion_key(backend, model, role, request) if self.mode != "off" else None
        if self.reads:
            hit = self.lookup(key)
            if hit is not None:
                text, prompt_tokens, completion_tokens = hit
                usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens}
                record_call(calls, role, backend, model, started, usage, key=key, cached=True)
                return text
            if not self.writes:
                raise LLMCacheMiss(
                    f"{role} request {key} is not in the completion cache "
                    "(OSIRIS_LLM_CACHE=read answers from the cache only)",
                    run_id=run_id,
                )
        text, usage = ask()
        record_call(
            calls,
            role,
            backend,
            model,
            started,
            usage,
            key=key,
            completion=text if self.writes else None,
            request=request if self.writes else None,
        )
        return text

    def lookup(self, key: str) -> tuple[str, int | None, int | None] | None:
        """`(completion, prompt_tokens, completion_tokens)` cached under `key`, or None."""
        if self._store is None:
            raise ValueError(f"{self!r} has no store to read (see use_store)")
        memory = self._memory if self._memory is not None else self._load()
        hit = memory.get(key)
        if hit is not None:
            return hit
        try:
            row = self._store().get_completion(key)
        except StoreError as exc:  # the cache is an optimisation: a miss, not a failed run
            logger.warning("completion cache lookup failed, treated as a miss: %s", exc)
            return None
        if row is None:
            return None
        hit = (row["completion"], row["prompt_tokens"], row["completion_tokens"])
        with self._lock:
            if len(memory) < self._memory_rows:
                memory[key] = hit
        return hit

    def forget(self) -> None:
        """Drop the in-memory copy (the next lookup loads it again)."""
        with self._lock:
            self._memory = None

    def _load(self) -> dict[str, tuple[str, int | None, int | None]]:
        with self._lock:
            if self._memory is None:
                if self._stage is not None:
                    self._stage.flush()  # completions still staged are read too
                memory: dict[str, tuple[str, int | None, int | None]] = {}
                if self._memory_rows:
                    try:
                        memory = _as_memory(
                            self._store().completion_columns(_CACHED_COLUMNS, self._memory_rows)
                        )
                    except StoreError as exc:
                        logger.warning("completion cache not loaded, LanceDB only: %s", exc)
                self._memory = memory
                logger.info("completion cache: %s completion(s) in memory", len(memory))
            return self._memory


class CompletionStage:
    """Completion rows on their way to the `completions` table, staged in Redis."""

    def __init__(
        self,
        client: redis.Redis,
        store: Callable[[], RunStore],
        uri: str,
        *,
        flush_rows: int = FLUSH_ROWS,
        flush_interval_s: float = FLUSH_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._redis = client
        self._store = store
        self._key = COMPLETIONS_STAGED_PREFIX + store_namespace(uri)
        self._lock_key = COMPLETIONS_FLUSH_PREFIX + store_namespace(uri)
        self._flush_rows = flush_rows
        self._flush_interval_s = flush_interval_s
        self._clock = clock
        self._last_flush = clock()

    def stage(self, rows: list[dict[str, Any]], *, run_id: str | None = None) -> None:
        """Stage `rows` (one round trip), and write the staged rows if they are due."""
        try:
            staged = self._redis.rpush(self._key, *(orjson.dumps(row) for row in rows))
        except redis.RedisError as exc:
            raise StoreError(f"cannot stage completions: {exc}", run_id=run_id) from exc
        if staged >= self._flush_rows or self._clock() - self._last_flush >= self._flush_interval_s:
            self.flush()

    def staged(self) -> int:
        """Rows staged, not yet written."""
        return self._redis.llen(self._key)

    def flush(self) -> int:
        """Write every staged row to LanceDB, in batches; how many were written. Skipped (0)
        while another process writes; a failure is logged and the rows stay staged."""
        self._last_flush = self._clock()
        token = secrets.token_hex(8)
        try:
            if not self._redis.set(self._lock_key, token, nx=True, px=FLUSH_LOCK_TTL_MS):
                return 0
        except redis.RedisError as exc:
            logger.warning("completions not written (Redis: %s); they stay staged", exc)
            return 0
        written = 0
        try:
            while True:
                raw = self._redis.lrange(self._key, 0, FLUSH_BATCH_ROWS - 1)
                if not raw:
                    break
                self._store().record_completions([orjson.loads(item) for item in raw])
                self._redis.ltrim(self._key, len(raw), -1)  # written: only now unstaged
                written += len(raw)
                if len(raw) < FLUSH_BATCH_ROWS:
                    break
        except (StoreError, redis.RedisError) as exc:
            logger.warning("completions not written (%s); they stay staged", exc)
        finally:
            with contextlib.suppress(redis.RedisError):
                if self._redis.get(self._lock_key) == token.encode():
                    self._redis.delete(self._lock_key)
        if written:
            logger.debug("completions: %s staged row(s) written", written)
        return written


def _as_memory(table: Any) -> dict[str, tuple[str, int | None, int | None]]:
    columns = [table[name].to_pylist() for name in _CACHED_COLUMNS]
    return {key: (text, p, c) for key, text, p, c in zip(*columns, strict=True)}


def record_call(
    calls: list[dict] | None,
    role: str,
    backend: str,
    model: str,
    started: float,
    usage: Mapping | None = None,
    **extra: Any,
) -> None:
    """Append an LLM call that answered to `calls` (the run's `llm_calls`): its role, backend,
    model, tokens (None where the server does not say), latency since `started`, and `extra`
    (the cache's `key`, `cached`, and the `completion` and `request` it is to write). The call's
    usage goes on the current span too."""
    usage = usage if isinstance(usage, Mapping) else {}
    call = {
        "role": role,
        "backend": backend,
        "model": model,
        "prompt_tokens": usage.get("prompt_tokens"),
        "completion_tokens": usage.get("completion_tokens"),
        "latency_ms": round((time.perf_counter() - started) * 1000, 1),
        "cached": False,
        **{k: v for k, v in extra.items() if v is not None},
    }
    telemetry.tag_llm_call(call)
    if calls is not None:
        calls.append(call)
