"""The bridge's batching and backpressure: ticks in, runs out; no I/O.

The read loop hands every validated tick to the `Batcher`, which forms runs and hands each
to `dispatch` (the submitter's non-blocking `put`). It calls no Redis and no broker, so the
read loop stays fast.

Batching
    Ticks are grouped per symbol (`group_by="symbol"`) or all in one buffer (`"none"`). A group
    whose buffer holds `ticks_per_proposal` ticks is due. With `max_wait_s`, a non-empty buffer
    whose first tick arrived `max_wait_s` ago is due too (checked every 0.1 s, with or without
    traffic). A due group becomes one run: `initial_state(ticks, run_id=new_run_id(),
    created_at=<clock() when the batch is formed>, ttl_s=proposal_ttl_s)`, its ticks held as an
    `EncodedList` (their JSON, a third of their dicts' memory while the run waits for the
    submitter; the task message carries the JSON as it is).

Backpressure (`max_inflight=N`)
    A run is in flight from the moment its batch is formed until the bridge sees
    `advice.generated` with its `run_id` (the bridge subscribes to that channel on the same
    connection), or until 10 minutes have passed (the run is then released with a warning, so
    a lost event cannot wedge the bridge). While N runs are in flight, a due group is not
    submitted: it waits in arrival order, and its buffer keeps only the freshest
    `ticks_per_proposal` ticks; each older tick it pushes out is dropped and counted as
    `ticks_coalesced`. As soon as a slot frees, the group that has waited longest is submitted
    with its freshest window. At any moment
    `ticks_received = ticks_rejected + ticks_batched + ticks_coalesced + ticks still buffered`.

Stop
    `drain()` turns every non-empty buffer (partial or held back) into a run, ignoring
    `max_inflight`, with one log line per batch (run_id, tick count).

From a stream (`stream=` the stream's name)
    Each tick comes with its entry id; a batch's run_id is derived from its entry ids
    (`stream_run_id`) and the job carries them (the submitter acknowledges them). Nothing is
    coalesced or held back: backpressure is the read loop's (it stops reading while
    `max_inflight` runs are in flight; the stream keeps the rest). `reform` submits a batch
    formed before a crash again, as it was. At stop, partial buffers are not formed: their
    entries stay pending in the stream for the next reader, so each batch stays full.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from osiris_tasks.bridge.config import BridgeConfig
from osiris_tasks.bridge.stats import BridgeCounters
from osiris_tasks.domain.ids import new_run_id, stream_run_id
from osiris_tasks.keys import ADVICE_CHANNEL
from osiris_tasks.transport.serialization import EncodedList
from osiris_tasks.workflow.state import initial_state

__all__ = ["ALL_SYMBOLS", "INFLIGHT_TIMEOUT_S", "Batcher", "Job"]

logger = logging.getLogger(__name__)

# The group key of the single buffer when group_by="none".
ALL_SYMBOLS = "*"
# A run with no advice.generated after this long is released from the in-flight set.
INFLIGHT_TIMEOUT_S = 600.0


@dataclass
class Job:
    """A run waiting for the submitter."""

    state: dict[str, Any]
    group: str
    why: str  # "full", "max_wait", "stop" or "reformed"
    entry_ids: list[str] = field(default_factory=list)  # its stream entries (stream source)

    @property
    def run_id(self) -> str:
        return self.state["run_id"]


class Batcher:
    """Buffers per group, the groups waiting for a slot, and the in-flight runs; no I/O."""

    def __init__(
        self,
        config: BridgeConfig,
        counters: BridgeCounters,
        *,
        clock: Callable[[], float],
        dispatch: Callable[[Job], None],
        stream: str | None = None,
    ):
        self._config, self._counters = config, counters
        self._clock, self._dispatch = clock, dispatch
        self._stream = stream
        self._buffers: dict[str, deque] = {}
        self._entry_ids: dict[str, list[str]] = {}  # group -> its buffer's entry ids (stream)
        self._started_at: dict[str, float] = {}  # clock() at a buffer's first tick
        self._due: dict[str, str] = {}  # group -> why; insertion order is waiting order
        self._inflight: dict[str, float] = {}  # run_id -> monotonic time it was formed

    @property
    def inflight(self) -> int:
        """Runs formed and not yet finished (see `release`)."""
        return len(self._inflight)

    def add(self, tick: dict[str, Any], entry_id: str | None = None) -> None:
        """Buffer a validated tick (with its stream entry id, from a stream); submit its
        group's batch if it is due and a slot is free."""
        key = tick["symbol"] if self._config.group_by == "symbol" else ALL_SYMBOLS
        buffer = self._buffers.get(key)
        if buffer is None:
            buffer = self._buffers[key] = deque(maxlen=self._config.ticks_per_proposal)
            self._started_at[key] = self._clock()
        elif len(buffer) == buffer.maxlen:
            self._counters.incr("ticks_coalesced")  # held back: the oldest tick falls out
        buffer.append(tick)
        if entry_id is not None:
            self._entry_ids.setdefault(key, []).append(entry_id)
        if len(buffer) == buffer.maxlen and self._due.get(key) != "full":
            self._due[key] = "full"
            self._dispatch_due()

    def flush_aged(self) -> None:
        """Mark buffers whose first tick is `max_wait_s` old as due, and submit what can be."""
        if self._config.max_wait_s is not None:
            oldest_start = self._clock() - self._config.max_wait_s
            for key, started_at in self._started_at.items():
                if started_at <= oldest_start and key not in self._due:
                    self._due[key] = "max_wait"
        self._dispatch_due()

    def release(self, run_id: str) -> None:
        """`run_id` finished: free its slot (unknown run ids are someone else's)."""
        if self._inflight.pop(run_id, None) is not None:
            self._counters.set("inflight", len(self._inflight))
            self._dispatch_due()

    def expire(self) -> None:
        """Release runs in flight for longer than INFLIGHT_TIMEOUT_S (a lost event)."""
        cutoff = time.monotonic() - INFLIGHT_TIMEOUT_S
        while self._inflight:
            run_id, formed_at = next(iter(self._inflight.items()))
            if formed_at > cutoff:
                break
            logger.warning(
                "run_id=%s no %s within %.0f s; released from the in-flight set",
                run_id,
                ADVICE_CHANNEL,
                INFLIGHT_TIMEOUT_S,
            )
            self.release(run_id)

    def reform(self, run_id: str, ticks: list[dict[str, Any]], entry_ids: list[str]) -> Job:
        """Submit a batch formed before (from a stream, after a crash) again, as it was."""
        created_at = self._clock()
        state = initial_state(
            EncodedList(ticks),
            run_id=run_id,
            created_at=created_at,
            ttl_s=self._config.proposal_ttl_s,
            copy_ticks=False,
        )
        group = ticks[0]["symbol"] if ticks and self._config.group_by == "symbol" else ALL_SYMBOLS
        return self._start(Job(state, group, "reformed", entry_ids))

    def drain(self) -> None:
        """At stop: every non-empty buffer becomes a run now, whatever is in flight (from a
        stream: buffers are left, their entries pending for the next reader)."""
        if self._stream is not None:
            left = sum(len(buffer) for buffer in self._buffers.values())
            if left:
                logger.info(
                    "%d buffered ticks left pending in %s for the next reader", left, self._stream
                )
            self._counters.incr("ticks_left_pending", left)
            self._buffers.clear()
            self._entry_ids.clear()
            self._started_at.clear()
            self._due.clear()
            return
        for key in [*self._due, *(k for k in self._buffers if k not in self._due)]:
            job = self._form(key, "stop")
            logger.info(
                "run_id=%s batch of %d ticks (group %s) formed at stop",
                job.run_id,
                len(job.state["ticks"]),
                key,
            )
        self._due.clear()

    def _dispatch_due(self) -> None:
        limit = None if self._stream is not None else self._config.max_inflight
        while self._due and (limit is None or len(self._inflight) < limit):
            key = next(iter(self._due))
            self._form(key, self._due.pop(key))

    def _form(self, key: str, why: str) -> Job:
        # Encoded now: a formed run may wait for the submitter through a burst, and its JSON
        # is a third of its dicts' memory (the message carries the JSON as it is).
        ticks = EncodedList(self._buffers.pop(key))
        entry_ids = self._entry_ids.pop(key, [])
        del self._started_at[key]
        created_at = self._clock()
        run_id = (
            stream_run_id(self._stream, entry_ids)
            if self._stream is not None
            else new_run_id(created_at)
        )
        state = initial_state(
            ticks,
            run_id=run_id,
            created_at=created_at,
            ttl_s=self._config.proposal_ttl_s,
            copy_ticks=False,
        )
        return self._start(Job(state, key, why, entry_ids))

    def _start(self, job: Job) -> Job:
        self._inflight[job.run_id] = time.monotonic()
        self._counters.incr("ticks_batched", len(job.state["ticks"]))
        self._counters.set("inflight", len(self._inflight))
        self._dispatch(job)
        return job
