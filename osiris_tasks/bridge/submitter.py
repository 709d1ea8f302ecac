"""The bridge's submitter: a thread hands formed runs to Celery, so the read loop never waits.

Only the submitter calls `submit` (Celery's `apply_async` does network I/O); runs that queued
up while it was busy go together, in one `submit_many` call (one round trip).

Failures
    A failed `submit` (broker down) is logged with its run_id, counted in `submit_failures` and
    retried with backoff (0.5 s doubling to 10 s); the batch is kept until it goes through or
    the bridge stops.

Hooks (the stream source's)
    `before(jobs)` runs just before jobs are submitted (a failure is a failed submit, retried);
    `after(jobs)` once they are with the broker (it handles its own failures).

Stop
    `close()` gives the submitter up to `drain_timeout_s` (10 s by default) to submit everything
    queued, retries included. Runs still unsubmitted then are logged one by one (run_id, tick
    count) and counted as `runs_abandoned`; with `durable=True` (a stream source) they are not
    lost but left pending in the stream, and their ticks are counted as `ticks_left_pending`.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

from osiris_tasks.bridge.batcher import Job
from osiris_tasks.bridge.stats import BridgeCounters

__all__ = ["MAX_SUBMIT_BATCH", "SUBMIT_BACKOFF_MAX_S", "SUBMIT_BACKOFF_MIN_S", "Submitter"]

logger = logging.getLogger(__name__)

# Backoff between attempts to submit one run: doubles from MIN to MAX.
SUBMIT_BACKOFF_MIN_S, SUBMIT_BACKOFF_MAX_S = 0.5, 10.0
# Runs the submitter hands to `submit_many` at most at once (those queued when it gets to them).
MAX_SUBMIT_BATCH = 32

_CLOSE = object()  # tells the submitter thread that no more jobs will come


class Submitter:
    """A thread that calls `submit` for each job, retrying failures with backoff; with
    `submit_many`, the jobs queued when it gets to them go together (up to MAX_SUBMIT_BATCH),
    and a failed batch is submitted again one job at a time."""

    def __init__(
        self,
        submit: Callable[[dict], None],
        counters: BridgeCounters,
        submit_many: Callable[[list[dict]], object] | None = None,
        *,
        before: Callable[[list[Job]], object] | None = None,
        after: Callable[[list[Job]], object] | None = None,
        durable: bool = False,
    ):
        self._submit, self._submit_many, self._counters = submit, submit_many, counters
        self._before, self._after, self._durable = before, after, durable
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._pending: dict[str, Job] = {}  # queued or being retried, by run_id
        self._lock = threading.Lock()
        self._abort = threading.Event()
        self._thread = threading.Thread(target=self._work, name="osiris-bridge-submit", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def put(self, job: Job) -> None:
        """Queue `job` for submission (never blocks)."""
        with self._lock:
            self._pending[job.run_id] = job
        self._queue.put(job)

    def close(self, timeout_s: float) -> None:
        """Submit what is queued within `timeout_s`; log and count every run left over."""
        self._queue.put(_CLOSE)
        self._thread.join(timeout_s)
        self._abort.set()
        with self._lock:
            leftover, self._pending = list(self._pending.values()), {}
        for job in leftover:
            logger.log(
                logging.WARNING if self._durable else logging.ERROR,
                "run_id=%s NOT submitted: %d ticks (group %s) %s at stop",
                job.run_id,
                len(job.state["ticks"]),
                job.group,
                "left pending in the stream" if self._durable else "dropped",
            )
        if self._durable:
            self._counters.incr("ticks_left_pending", sum(len(j.state["ticks"]) for j in leftover))
        else:
            self._counters.incr("runs_abandoned", len(leftover))

    def _work(self) -> None:
        closing = False
        while not closing and (job := self._queue.get()) is not _CLOSE:
            jobs = [job]
            while self._submit_many is not None and len(jobs) < MAX_SUBMIT_BATCH:
                try:
                    job = self._queue.get_nowait()
                except queue.Empty:
                    break
                if job is _CLOSE:
                    closing = True
                    break
                jobs.append(job)
            if self._abort.is_set():
                return
            if len(jobs) == 1 or not self._submit_together(jobs):
                for job in jobs:
                    self._submit_until_done(job)

    def _submit_together(self, jobs: list[Job]) -> bool:
        """One `submit_many` call for `jobs`; False if it failed (any of them may be out)."""
        try:
            if self._before is not None:
                self._before(jobs)
            self._submit_many([job.state for job in jobs])
        except Exception as exc:  # `submit_many` is the caller's: the jobs go one by one
            self._counters.incr("submit_failures")
            logger.warning(
                "submitting %d runs together failed: %r; submitting them one by one", len(jobs), exc
            )
            return False
        for job in jobs:
            self._done(job, 1)
        if self._after is not None:
            self._after(jobs)
        return True

    def _submit_until_done(self, job: Job) -> None:
        delay_s, attempt = SUBMIT_BACKOFF_MIN_S, 1
        while not self._abort.is_set():
            try:
                if self._before is not None:
                    self._before([job])
                self._submit(job.state)
            except Exception as exc:  # `submit` is the caller's: any failure is retried
                self._counters.incr("submit_failures")
                logger.warning(
                    "run_id=%s submit attempt %d failed (%d ticks): %r; retry in %.1f s",
                    job.run_id,
                    attempt,
                    len(job.state["ticks"]),
                    exc,
                    delay_s,
                )
                self._abort.wait(delay_s)
                delay_s, attempt = min(delay_s * 2, SUBMIT_BACKOFF_MAX_S), attempt + 1
                continue
            self._done(job, attempt)
            if self._after is not None:
                self._after([job])
            return

    def _done(self, job: Job, attempt: int) -> None:
        self._counters.incr("runs_submitted")
        with self._lock:
            known = self._pending.pop(job.run_id, None) is not None
        level = logging.DEBUG if attempt == 1 and known and job.why == "full" else logging.INFO
        logger.log(
            level,
            "run_id=%s submitted: %d ticks (group %s, %s) after %d attempt(s)%s",
            job.run_id,
            len(job.state["ticks"]),
            job.group,
            job.why,
            attempt,
            "" if known else ", after stop had reported it as not submitted",
        )
