"""(d) Sidecar-bound scaling: the reference sidecar answering after 100 ms, N concurrent slots.
Sidecar calls/s through Celery (`osiris.score_proposal` tasks on a `-Q osiris.sidecar --pool
threads --concurrency N` worker) vs the ideal N / 0.1 s vs a ThreadPoolExecutor of N threads
making the same calls with the same `SidecarClient` in this process."""

from __future__ import annotations

import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

from osiris_tasks import app, configure
from osiris_tasks.sidecar import SidecarClient

from .env import Worker, bench_settings, sidecar
from .report import Report

NAME = "sidecar"
LATENCY_MS = 100
CALLS_PER_SLOT = 6
MIN_CALLS = 30
PROPOSAL = {"ticker": "AAPL", "action": "adjust", "side": "LONG", "quantity": 5,
            "price_estimate": 190.0, "new_stop_pct": 1.0, "new_target_pct": 2.0,
            "confidence": 0.6, "rationale": "benchmark"}
CONTEXT = "AAPL first=189.00 last=190.00 ret_pct=+0.53 vol_pct=0.20"


def _calls(slots: int) -> int:
    return max(MIN_CALLS, CALLS_PER_SLOT * slots)


def _threads(settings, slots: int, calls: int) -> float:
    """Seconds for `slots` threads to make `calls` score calls."""
    client = SidecarClient.from_settings(settings)
    with ThreadPoolExecutor(slots) as pool:
        list(pool.map(lambda _: client.score(PROPOSAL, CONTEXT), range(slots)))  # connect
        started = time.perf_counter()
        list(pool.map(lambda _: client.score(PROPOSAL, CONTEXT), range(calls)))
        spent = time.perf_counter() - started
    client.close()
    return spent


def _celery(slots: int, calls: int, timeout_s: float) -> float:
    """Seconds for `calls` osiris.score_proposal tasks, submitted at once, to finish."""
    def submit(index: int):
        run_id = f"bench_{index}"
        state = {"run_id": run_id, "proposal": PROPOSAL, "market_text": CONTEXT}
        return app.signature("osiris.score_proposal", args=(state,),
                             kwargs={"run_id": run_id, "member": True}).apply_async(
                                 ignore_result=False)

    for result in [submit(-i - 1) for i in range(slots)]:  # warm-up: threads and connections
        result.get(timeout=timeout_s)
    started = time.perf_counter()
    results = [submit(i) for i in range(calls)]
    for result in results:
        update = result.get(timeout=timeout_s)["update"]
        if "score" not in update:
            raise RuntimeError(f"score_proposal failed: {update}")
    return time.perf_counter() - started


def run(report: Report, *, slot_counts: tuple[int, ...], redis_url: str,
        timeout_s: float = 300.0) -> None:
    with sidecar(latency_ms=LATENCY_MS) as url, \
            tempfile.TemporaryDirectory(prefix="osiris-bench-sidecar-") as workdir:
        settings = bench_settings(redis_url, url, workdir)
        configure(app, settings)
        for slots in slot_counts:
            calls = _calls(slots)
            ideal = report.add(NAME, f"ideal, {slots} slots x {LATENCY_MS} ms",
                               slots / (LATENCY_MS / 1000), "calls/s")
            threads = report.add(NAME, f"ThreadPoolExecutor, {slots} threads",
                                 calls / _threads(settings, slots, calls), "calls/s",
                                 baseline=ideal, calls=calls)
            with Worker(settings, "-Q", "osiris.sidecar", "--pool", "threads",
                        "--concurrency", str(slots)) as worker:
                worker.wait_ready(app)
                spent = _celery(slots, calls, timeout_s)
            report.add(NAME, f"Celery score_proposal, threads x{slots}", calls / spent,
                       "calls/s", baseline=threads, calls=calls)
            report.add(NAME, f"Celery score_proposal, threads x{slots}, vs ideal",
                       calls / spent, "calls/s", baseline=ideal, calls=calls)
