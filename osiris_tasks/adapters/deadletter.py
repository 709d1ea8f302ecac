"""Where a run goes when it cannot be recorded: a Redis list, replayable into LanceDB. The
run's risk decision goes with it when that could not be written either."""

from __future__ import annotations

import logging
from typing import Any

import orjson
import redis

from osiris_tasks.domain.ids import utc_iso
from osiris_tasks.errors import StoreError
from osiris_tasks.keys import DEADLETTER_KEY

__all__ = ["DEADLETTER_KEY", "DeadLetter"]

logger = logging.getLogger(__name__)


class DeadLetter:
    """Run rows that could not be written, kept for `osiris runs replay`."""

    def __init__(self, client: redis.Redis, key: str = DEADLETTER_KEY):
        self._redis = client
        self._key = key

    def push(
        self, row: dict[str, Any], *, reason: str, advice: list[dict[str, Any]] | None = None
    ) -> None:
        """Keep `row` (and the run's `advice` rows not written yet); if even Redis fails, they
        go to the error log in full."""
        kept = {"row": row, "reason": reason, "at": utc_iso()}
        if advice:
            kept["advice"] = advice
        entry = orjson.dumps(kept, default=str)
        try:
            self._redis.rpush(self._key, entry)
        except redis.RedisError as exc:
            logger.critical(
                "run_id=%s NOT RECORDED and dead-letter list unreachable (%s); row follows: %s",
                row.get("run_id"),
                exc,
                entry.decode(),
            )
            return
        logger.error(
            "run_id=%s could not be recorded (%s); kept in Redis list %s "
            "(replay: osiris runs replay)",
            row.get("run_id"),
            reason,
            self._key,
        )

    def __len__(self) -> int:
        return int(self._redis.llen(self._key))

    def replay(self, store) -> tuple[int, int]:
        """Write every dead-lettered run (its advice rows first) to `store`; return
        `(replayed, left)`. Idempotent: a row already there is not written again. Redis
        unreachable raises `StoreError`."""
        try:
            return self._replay(store)
        except redis.RedisError as exc:
            raise StoreError(f"the dead-letter list {self._key} is unreachable: {exc}") from exc

    def _replay(self, store) -> tuple[int, int]:
        replayed = 0
        while (entry := self._redis.lindex(self._key, 0)) is not None:
            kept = orjson.loads(entry)
            row = kept["row"]
            try:
                if kept.get("advice"):
                    store.record_advice_many(kept["advice"])
                store.record_run(row, recheck=True)
            except StoreError as exc:
                logger.error("run_id=%s replay failed: %s", row.get("run_id"), exc)
                break
            self._redis.lpop(self._key)
            replayed += 1
        return replayed, len(self)
