"""Row-key claims in Redis: one writer at a time per key, across processes and hosts, and the
marks that let a key's first write skip LanceDB's existence query.

Claims
    A claim is `SET osiris:lock:<table>:<key> <token> NX PX claim_ttl` (redis-py `Lock`'s key
    format), all keys of a batch in one pipeline, released by one script that deletes only the
    claims still holding the writer's token. While the writer works, a thread renews its claims
    every third of their TTL, so a killed writer's keys come free within `claim_ttl_s`.

Seen marks (why a first write needs no query)
    The same pipeline sets `osiris:seen:<table>:<key>` with `NX EX seen_ttl_s`. Every writer sets
    that mark *before* it writes, so a key whose mark this pipeline created (and whose claim it
    holds) has never been written: the store appends it without asking LanceDB. Any other key —
    a redelivered task, a retry, a replay — is looked up as before. A mark must outlive every
    duplicate of its write: `seen_ttl_s` is at least 4 broker visibility timeouts (Resources).

    Marks are only as complete as Redis' memory. The hash `osiris:seen:since` holds, per table and
    LanceDB URI, the time from which marks are trusted: when the store found the table empty
    (every row written since was marked first), otherwise `now + seen_ttl_s` — so after a
    flush, a restart without persistence, or on first use of an existing table, every write
    looks rows up until any row written before has aged past the marks' horizon. Redis must not
    evict keys (`maxmemory-policy noeviction`, which the Celery broker needs anyway).

`renewing` and `release_lock` also serve the store's redis-py locks (table creation in
`runstore.py`, maintenance in `maintenance_schedule.py`).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from redis.exceptions import LockNotOwnedError, RedisError

from osiris_tasks import lua
from osiris_tasks.errors import StoreError
from osiris_tasks.keys import LOCK_PREFIX, SEEN_PREFIX
from osiris_tasks.keys import SEEN_SINCE_KEY as SINCE_KEY

if TYPE_CHECKING:
    import redis

__all__ = [
    "Claim",
    "RedisClaims",
    "ids_text",
    "one_run_id",
    "release_lock",
    "renewing",
]

log = logging.getLogger(__name__)

# A key's seen mark lives this long: longer than any duplicate of its write can come later.
DEFAULT_SEEN_TTL_S = 3600.0


class Claim(NamedTuple):
    """What one claim attempt got: the keys now held, and those of them never written."""

    held: list[str]
    fresh: frozenset[str]


def ids_text(run_ids: Sequence[str | None]) -> str:
    """`run_id=X` for one run, `run_ids=X,Y,Z (+n)` for a batch: for log lines."""
    unique = list(dict.fromkeys(run_id for run_id in run_ids if run_id))
    if len(unique) <= 1:
        return f"run_id={unique[0] if unique else None}"
    more = f" (+{len(unique) - 3})" if len(unique) > 3 else ""
    return f"run_ids={','.join(unique[:3])}{more}"


def one_run_id(run_ids: Sequence[str | None]) -> str | None:
    """The run_id a StoreError carries: the batch's only run_id, else None."""
    unique = set(run_ids)
    return unique.pop() if len(unique) == 1 else None


def store_namespace(uri: str) -> str:
    """A short stable name for a LanceDB URI (local paths made absolute)."""
    canonical = uri if "://" in uri else os.path.abspath(uri)
    return hashlib.sha1(canonical.encode()).hexdigest()[:16]


@contextlib.contextmanager
def renewing(interval_s: float, renew: Callable[[], None], name: str) -> Iterator[None]:
    """Call `renew()` every `interval_s` on a thread named `name` until the block ends."""
    done = threading.Event()

    def loop() -> None:
        while not done.wait(interval_s):
            renew()

    renewer = threading.Thread(target=loop, name=name, daemon=True)
    renewer.start()
    try:
        yield
    finally:
        done.set()
        renewer.join()


def release_lock(lock: Any, run_id: str | None) -> None:
    """Release `lock`; by now the write is done, so a failure is logged, not raised."""
    try:
        lock.release()
    except LockNotOwnedError:
        log.warning(
            "lock %s expired before the write finished; raise lock_timeout_s run_id=%s",
            lock.name,
            run_id,
        )
    except RedisError as exc:
        log.warning(
            "could not release lock %s (it expires on its own) run_id=%s: %s",
            lock.name,
            run_id,
            exc,
        )


class RedisClaims:
    """Claims and seen marks for the tables of one LanceDB URI."""

    def __init__(self, client: redis.Redis, *, uri: str, claim_ttl_s: float, seen_ttl_s: float):
        self._redis = client
        self._release_script = lua.script(client, "claims_release")
        self._renew_script = lua.script(client, "claims_renew")
        self._namespace = store_namespace(uri)
        self._claim_ttl_ms = max(1, int(claim_ttl_s * 1000))
        self._seen_ttl_s = max(1, int(seen_ttl_s))

    def table_empty(self, table: str) -> None:
        """`table` has no row now: every row written from now on is marked first."""
        try:
            self._redis.hset(SINCE_KEY, self._since_field(table), time.time())
        except RedisError as exc:  # only speed is lost: writes look rows up
            log.warning("%s: cannot record when seen marks start: %s", table, exc)

    @contextlib.contextmanager
    def claim(self, table: str, keys: list[str], run_ids: list[str]) -> Iterator[Claim]:
        """Claim `keys` of `table` for the block; a key another writer holds is not held."""
        token = secrets.token_hex(16)
        names = [f"{LOCK_PREFIX}:{table}:{key}" for key in keys]
        try:
            pipe = self._redis.pipeline(transaction=False)
            for name in names:
                pipe.set(name, token, nx=True, px=self._claim_ttl_ms)
            for key in keys:
                pipe.set(f"{SEEN_PREFIX}:{table}:{key}", 1, nx=True, ex=self._seen_ttl_s)
            pipe.hget(SINCE_KEY, self._since_field(table))
            replies = pipe.execute()
        except RedisError as exc:
            raise StoreError(
                f"cannot claim {len(keys)} key(s) of {table}: {exc}", run_id=one_run_id(run_ids)
            ) from exc
        claimed, first, since = replies[: len(keys)], replies[len(keys) : -1], replies[-1]
        trusted = self._trusted(table, since)
        held = [key for key, ok in zip(keys, claimed, strict=True) if ok]
        fresh = frozenset(
            key for key, ok, new in zip(keys, claimed, first, strict=True) if ok and new and trusted
        )
        held_names = [f"{LOCK_PREFIX}:{table}:{key}" for key in held]
        try:
            with self._renewing(held_names, token, run_ids):
                yield Claim(held, fresh)
        finally:
            self._release(held_names, token, run_ids)

    def _since_field(self, table: str) -> str:
        return f"{table}:{self._namespace}"

    def _trusted(self, table: str, since: bytes | None) -> bool:
        """Whether seen marks of `table` can be trusted now (starting the clock if unset)."""
        if since is not None:
            return float(since) <= time.time()
        try:  # first use of an existing table, or Redis lost its data
            self._redis.hsetnx(SINCE_KEY, self._since_field(table), time.time() + self._seen_ttl_s)
        except RedisError as exc:
            log.warning("%s: cannot record when seen marks start: %s", table, exc)
        return False

    def _renewing(
        self, names: list[str], token: str, run_ids: list[str]
    ) -> contextlib.AbstractContextManager:
        """Renew the claims `names` every third of their TTL until the block ends."""
        if not names:
            return contextlib.nullcontext()

        def renew() -> None:
            try:
                self._renew_script(keys=names, args=[token, self._claim_ttl_ms])
            except RedisError as exc:
                log.warning(
                    "could not renew %s claim(s) %s: %s", len(names), ids_text(run_ids), exc
                )

        return renewing(self._claim_ttl_ms / 3000, renew, "osiris-claim-renewer")

    def _release(self, names: list[str], token: str, run_ids: list[str]) -> None:
        """Release claims; by now the write is done, so a failure is logged, not raised."""
        if not names:
            return
        try:
            released = self._release_script(keys=names, args=[token])
        except RedisError as exc:
            log.warning(
                "could not release %s claim(s) (they expire on their own) %s: %s",
                len(names),
                ids_text(run_ids),
                exc,
            )
            return
        if released < len(names):
            log.warning(
                "%s claim(s) expired before the write finished (not renewed in time) %s",
                len(names) - released,
                ids_text(run_ids),
            )
