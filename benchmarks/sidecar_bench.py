"""(d) Sidecar-bound scaling: the reference sidecar (its own process) answering after 100 ms,
N concurrent slots. Sidecar calls/s through Celery (`osiris.score_proposal` tasks, the
`osiris.sidecar` queue) vs the ideal N / 0.1 s vs a ThreadPoolExecutor of N threads making the
same calls with the same `SidecarClient`.

The Celery figure is the workers' drain rate: consumers paused (`cancel_consumer`), every call
queued, consumers resumed (`add_consumer`), clock stopped when the last one is done — so the
bench process's own publishing is not in it. The calls are submitted as the pipeline's chord
parts are: their results are not stored (Redis's chord hands them to the join in its own list).
Worker set-ups per N: one `--pool threads` worker, and
two threads workers of N/2 (N >= 32): one process per core.
Each figure carries the workers' CPU per call, from which one more worker machine is modelled,
and the CPU per call of the sidecar's process and of Redis: the whole machine's CPU per call;
and the workers' RSS after their rounds (a sidecar worker does not load lancedb).

The CPU budget (N >= 32): the target rate (0.9x ideal up to 32 slots, 0.8x the thread pool at
64) times the whole machine's CPU per call is the cores the target takes, against the machine's
2. Its floor, measured in the same run: Celery's own cost of a task with nothing in it
(`floor.step` of `floor_app.py` on a threads xN worker: fetch, trace, ack, with its Redis side)
plus the thread pool's cost of the call itself (the client's CPU and the sidecar's, per call):
an estimate of the least a Celery task per call takes, not a strict bound (the thread pool's
client, many threads in one process, may spend more per call than a worker's task does).

A round ends when the queue and kombu's unacked hash are empty and the workers' task counters
show every call run; if the counters stay short, the shortfall is reported (`never_ran`, and a
note). Two rounds in about 70 of this pause-and-resume flow at 64 slots (2026-12-02) ended one
call short with kombu's stock fetch, which takes a message off the queue (BRPOP) before it
records it as unacknowledged (celery/celery#4354, #7950); this project's fetch (fetch.py) does
both in one step, so a shortfall now means something else lost a call.

Each rate is the median of `ROUNDS` rounds of `CALLS_PER_SLOT` calls per slot (about 3 s at the
ideal rate), the workers started once: resuming a paused pool costs a fixed ~0.1 s ramp before
every slot is busy, which a 1 s window (10 calls per slot) counted as a tenth of the figure and a
sustained stream of calls never pays; and single rounds on this shared machine vary by ~10 %.

The LLM backends, first, at BACKEND_SLOTS slots against the same sidecar: the `openai` backend
(`ChatCompletionsBackend.score`, POST /v1/chat/completions, with its `response_format` schema)
against the `sidecar` one (`SidecarClient.score`, POST /score/hermes/), both built from the same
settings (timeouts, retry budget, breaker), a ThreadPoolExecutor of BACKEND_SLOTS threads each.
The two alternate round by round (sidecar, openai, sidecar, ...) and each figure is the median
of its rounds; their ratios are the medians of the per-round ratios (a round's neighbour saw the
same machine), for calls/s (the target: >= BACKEND_TARGET) and for the client's CPU per call:
this process's CPU time (`time.process_time`, every thread) over the round's calls. The
sidecar process's own CPU per call rides along as a parameter.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import NamedTuple

import redis

from osiris_tasks import app, configure
from osiris_tasks.adapters.llm import ChatCompletionsBackend
from osiris_tasks.adapters.sidecar import SidecarClient
from osiris_tasks.keys import DEFAULT_QUEUE, SIDECAR_QUEUE
from osiris_tasks.settings import Settings
from osiris_tasks.transport import results

from . import floor_app
from .env import Worker, bench_settings, cpu_s, redis_pid, rss_mb, sidecar_process
from .report import Figure, Report

NAME = "sidecar"
LATENCY_MS = 100
CALLS_PER_SLOT = 30
ROUNDS = 3
MIN_CALLS = 40
POLL_S = 0.005
# How long the workers' counters may lag once the queue and the unacked hash are empty.
SETTLE_S = 5.0
# kombu's hash of delivered, unacknowledged messages (its default `unacked_key`).
UNACKED_KEY = "unacked"
CORES = 2
# The targets: calls/s >= this fraction of ideal up to FULL_SLOTS slots, of the thread pool above.
IDEAL_TARGET, THREADS_TARGET, FULL_SLOTS = 0.9, 0.8, 32
PROPOSAL = {
    "ticker": "AAPL",
    "action": "adjust",
    "side": "LONG",
    "quantity": 5,
    "price_estimate": 190.0,
    "new_stop_pct": 1.0,
    "new_target_pct": 2.0,
    "confidence": 0.6,
    "rationale": "benchmark",
}
CONTEXT = "AAPL first=189.00 last=190.00 ret_pct=+0.53 vol_pct=0.20"
# The LLM backends' comparison: slots, and the issue's target for openai / sidecar calls/s.
BACKEND_SLOTS = 64
BACKEND_TARGET = 0.9
# The model the openai backend names (the reference sidecar answers any).
REFERENCE_MODEL = "reference"
# The two backends, in the order their rounds alternate.
BACKEND_LABELS = (
    "sidecar: SidecarClient.score (POST /score/hermes/)",
    "openai: ChatCompletionsBackend.score (POST /v1/chat/completions)",
)


@dataclass(frozen=True)
class BackendSizes:
    """How much the LLM backends' comparison measures."""

    rounds: int  # rounds per backend, the two alternating
    calls_per_slot: int  # calls per slot in a round


QUICK_BACKENDS = BackendSizes(rounds=5, calls_per_slot=10)
FULL_BACKENDS = BackendSizes(rounds=7, calls_per_slot=30)


def layouts(slots: int) -> dict[str, list[tuple[str, ...]]]:
    """Worker set-ups for `slots` concurrent calls: label -> one argument tuple per worker."""

    def pool(kind: str, n: int) -> tuple[str, ...]:
        return ("-Q", SIDECAR_QUEUE, "--pool", kind, "--concurrency", str(n))

    found = {f"threads x{slots}": [pool("threads", slots)]}
    if slots >= 32:
        found[f"2 workers, threads x{slots // 2}"] = [pool("threads", slots // 2)] * 2
    return found


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


def _submit(index: int, *, stored: bool = False):
    """One score call as the pipeline makes it: a chord part, its result not stored (Redis's
    chord carries it to the join); `stored` for the warm-up calls, whose results are checked."""
    run_id = f"bench_{index}"
    state = {"run_id": run_id, "proposal": PROPOSAL, "market_text": CONTEXT}
    return app.signature(
        "osiris.score_proposal", args=(state,), kwargs={"run_id": run_id, "member": True}
    ).apply_async(ignore_result=not stored)


def _completed(workers: list[str]) -> int:
    """Score tasks the `workers` have finished (their `total` counters)."""
    stats = app.control.inspect(destination=workers, timeout=5).stats() or {}
    return sum(s.get("total", {}).get("osiris.score_proposal", 0) for s in stats.values())


def _celery(
    client: redis.Redis, workers: list[str], calls: int, timeout_s: float
) -> tuple[float, int]:
    """Seconds from resuming the paused consumers until `calls` queued tasks are done: the
    queue empty and nothing unacknowledged (tasks ack when done), confirmed by the workers'
    counters (a message between its BRPOP and its unacked entry is in neither); and how many
    of the calls never ran: counters still short SETTLE_S after the queue and the unacked
    hash emptied (a message lost in the broker's at-most-once window, see the module doc)."""
    warm_up = [_submit(-i - 1, stored=True) for i in range(len(workers) * 2)]
    for result in warm_up:
        update = result.get(timeout=timeout_s)["update"]
        if "score" not in update:
            raise RuntimeError(f"score_proposal failed: {update}")
    expected = _completed(workers) + calls
    app.control.cancel_consumer(SIDECAR_QUEUE, reply=True, destination=workers, timeout=5)
    for index in range(calls):
        _submit(index)
    started = time.perf_counter()
    app.control.add_consumer(SIDECAR_QUEUE, reply=True, destination=workers, timeout=5)
    deadline, spent = time.monotonic() + timeout_s, None
    while True:
        if time.monotonic() > deadline:
            raise RuntimeError(f"sidecar calls not done after {timeout_s} s")
        if client.llen(SIDECAR_QUEUE) == 0 and client.hlen(UNACKED_KEY) == 0:
            # Clocked when the broker first showed everything done, not when the counters
            # (a broadcast round trip, or SETTLE_S of waiting in a short round) agreed.
            spent = spent or time.perf_counter() - started
            done = _completed(workers)
            if done >= expected or time.perf_counter() - started - spent > SETTLE_S:
                return spent, max(expected - done, 0)
        else:
            spent = None
        time.sleep(POLL_S)


def run(
    report: Report,
    *,
    slot_counts: tuple[int, ...],
    backend_sizes: BackendSizes,
    redis_url: str,
    timeout_s: float = 300.0,
) -> None:
    client = redis.Redis.from_url(redis_url)
    with (
        sidecar_process(latency_ms=LATENCY_MS) as url,
        tempfile.TemporaryDirectory(prefix="osiris-bench-sidecar-") as workdir,
    ):
        settings = bench_settings(redis_url, url, workdir)
        # First, while this process runs nothing else: its CPU time is the clients' alone.
        _backends(report, settings, url.pid, backend_sizes)
        configure(app, settings)
        pids = {"sidecar": url.pid, "redis": redis_pid(redis_url)}
        for slots in slot_counts:
            calls = _calls(slots)
            ideal = report.add(
                NAME,
                f"ideal, {slots} slots x {LATENCY_MS} ms",
                slots / (LATENCY_MS / 1000),
                "calls/s",
            )
            before = _cpu(pids, bench=True)
            spent = statistics.median(_threads(settings, slots, calls) for _ in range(ROUNDS))
            call_ms = _cpu_ms(before, _cpu(pids, bench=True), calls * ROUNDS)
            threads = report.add(
                NAME,
                f"ThreadPoolExecutor, {slots} threads",
                calls / spent,
                "calls/s",
                baseline=ideal,
                calls=calls,
                rounds=ROUNDS,
                cpu_ms_per_call=call_ms,
            )
            target = _target(slots, ideal, threads)
            for label, worker_args in layouts(slots).items():
                _layout(
                    report,
                    client,
                    settings,
                    label,
                    worker_args,
                    calls,
                    timeout_s,
                    ideal=ideal,
                    threads=threads,
                    pids=pids,
                    target=target,
                )
            if target is not None:
                _floor(
                    report,
                    client,
                    settings,
                    slots,
                    timeout_s,
                    pids=pids,
                    call_ms=call_ms["bench"] + call_ms["sidecar"],
                    target=target,
                )
    client.close()


class _Round(NamedTuple):
    """One backend's round: calls/s, client CPU ms per call, the sidecar process's CPU s."""

    calls_per_s: float
    client_ms: float
    server_s: float


def _backends(report: Report, settings: Settings, sidecar_pid: int, sizes: BackendSizes) -> None:
    """The `openai` LLM backend against the `sidecar` one: calls/s and client CPU per call at
    BACKEND_SLOTS slots, rounds alternating, ratios the medians of the per-round ratios."""
    openai = settings.with_(
        llm_backend="openai", llm_base_url=f"{settings.sidecar_url}/v1", llm_model=REFERENCE_MODEL
    )
    backends = {
        "sidecar": SidecarClient.from_settings(settings),
        "openai": ChatCompletionsBackend.from_settings(openai),
    }
    calls = BACKEND_SLOTS * sizes.calls_per_slot
    rounds: dict[str, list[_Round]] = {name: [] for name in backends}
    with ThreadPoolExecutor(BACKEND_SLOTS) as pool:
        for backend in backends.values():  # connect every slot
            _scores(pool, backend, BACKEND_SLOTS)
        for _ in range(sizes.rounds):
            for name, backend in backends.items():
                server_before = cpu_s(sidecar_pid)
                wall_s, client_s = _scores(pool, backend, calls)
                server_s = cpu_s(sidecar_pid) - server_before
                rounds[name].append(_Round(calls / wall_s, client_s * 1000 / calls, server_s))
    for backend in backends.values():
        backend.close()
    _backend_figures(report, rounds["sidecar"], rounds["openai"], calls)


def _scores(pool: ThreadPoolExecutor, backend, calls: int) -> tuple[float, float]:
    """Wall seconds, and this process's CPU seconds (every thread), for `calls` score calls
    made by `pool`'s threads through `backend`."""
    cpu_started, started = time.process_time(), time.perf_counter()
    list(pool.map(lambda _: backend.score(PROPOSAL, CONTEXT), range(calls)))
    return time.perf_counter() - started, time.process_time() - cpu_started


def _backend_figures(
    report: Report, sidecar: list[_Round], openai: list[_Round], calls: int
) -> None:
    """Calls/s and client CPU per call of each backend, each with openai / sidecar."""
    ideal = {"ideal_calls_per_s": BACKEND_SLOTS / (LATENCY_MS / 1000)}
    _compare(
        report,
        "calls/s",
        "calls/s",
        ([r.calls_per_s for r in sidecar], [r.calls_per_s for r in openai]),
        calls,
        (ideal, ideal),
        target=BACKEND_TARGET,
    )
    _compare(
        report,
        "client CPU per call",
        "ms",
        ([r.client_ms for r in sidecar], [r.client_ms for r in openai]),
        calls,
        (_server_ms(sidecar, calls), _server_ms(openai, calls)),
    )


def _server_ms(rounds: list[_Round], calls: int) -> dict[str, float]:
    """The sidecar process's CPU per call over a backend's rounds of `calls` calls."""
    server_ms = sum(r.server_s for r in rounds) * 1000 / (calls * len(rounds))
    return {"sidecar_process_cpu_ms_per_call": round(server_ms, 3)}


def _compare(
    report: Report,
    what: str,
    unit: str,
    values: tuple[list[float], list[float]],
    calls: int,
    params: tuple[dict, dict],
    *,
    target: float | None = None,
) -> None:
    """`what` per round of the sidecar and the openai backend: each one's median (openai's
    against the sidecar's), and openai / sidecar as the median of the per-round ratios."""
    base = None
    for label, found, extra in zip(BACKEND_LABELS, values, params, strict=True):
        base = report.add(
            NAME,
            f"LLM backend {label}, {BACKEND_SLOTS} threads: {what}",
            statistics.median(found),
            unit,
            baseline=base,
            calls=calls,
            rounds=[round(v, 3) for v in found],
            **extra,
        )
    per_round = [o / s for s, o in zip(*values, strict=True)]
    ratio = statistics.median(per_round)
    report.add(
        NAME,
        f"LLM backends, {BACKEND_SLOTS} threads: {what}, openai / sidecar, median per-round ratio",
        round(ratio, 3),
        "x",
        per_round=[round(r, 3) for r in per_round],
        **({} if target is None else {"target": target, "meets_target": ratio >= target}),
    )


def _target(slots: int, ideal: Figure, threads: Figure) -> float | None:
    """The calls/s target 2 asks for at `slots` (None below FULL_SLOTS: no budget there)."""
    if slots < FULL_SLOTS:
        return None
    if slots == FULL_SLOTS:
        return IDEAL_TARGET * ideal.value
    return THREADS_TARGET * threads.value


def _cpu(pids: dict[str, int], *, bench: bool = False) -> dict[str, float]:
    """CPU seconds so far of the processes in `pids` (and of this one, with `bench`)."""
    found = {name: cpu_s(pid) for name, pid in pids.items()}
    if bench:  # the thread pool's client: this process alone (the others are its children)
        found["bench"] = cpu_s(os.getpid(), children=False)
    return found


def _cpu_ms(before: dict[str, float], after: dict[str, float], calls: int) -> dict[str, float]:
    """Milliseconds of CPU per call of each process between two `_cpu` readings."""
    return {name: round((after[name] - before[name]) / calls * 1000, 3) for name in before}


def _budget(report: Report, name: str, cpu_ms: float, target: float, **params) -> None:
    """The cores `target` calls/s take at `cpu_ms` of CPU per call, against the machine's."""
    report.add(
        NAME,
        name,
        round(target * cpu_ms / 1000, 2),
        "cores",
        cores=CORES,
        target_calls_per_s=round(target, 1),
        cpu_ms_per_call=round(cpu_ms, 3),
        **params,
    )


def _layout(
    report: Report,
    client,
    settings,
    label: str,
    worker_args,
    calls: int,
    timeout_s: float,
    *,
    ideal: Figure,
    threads: Figure,
    pids: dict[str, int],
    target: float | None,
) -> None:
    with contextlib.ExitStack() as stack:
        workers = [stack.enter_context(Worker(settings, *args)) for args in worker_args]
        for worker in workers:
            worker.wait_ready(app)
        procs = {**pids, **{f"worker {i + 1}": w.proc.pid for i, w in enumerate(workers)}}
        before = _cpu(procs)
        rounds = [
            _celery(client, [worker.name for worker in workers], calls, timeout_s)
            for _ in range(ROUNDS)
        ]
        per_process = _cpu_ms(before, _cpu(procs), calls * ROUNDS)
        rss = [round(rss_mb(worker.proc.pid), 1) for worker in workers]
        lancedb = [_loads_lancedb(worker.proc.pid) for worker in workers]
    cpu_ms = sum(ms for name, ms in per_process.items() if name.startswith("worker"))
    rates = [calls / spent for spent, _ in rounds]
    never_ran = [missing for _, missing in rounds]
    if any(never_ran):
        report.note(
            f"sidecar: {label}: calls that never ran, per round: {never_ran} of "
            f"{calls} (queue and unacked hash empty, workers' counters short)"
        )
    rate = statistics.median(rates)
    report.add(
        NAME,
        f"Celery score_proposal, {label}",
        rate,
        "calls/s",
        baseline=threads,
        calls=calls,
        rounds=[round(r, 1) for r in rates],
        never_ran=never_ran,
        worker_cpu_ms_per_call=round(cpu_ms, 3),
    )
    report.add(
        NAME,
        f"Celery score_proposal, {label}, vs ideal",
        rate,
        "calls/s",
        baseline=ideal,
        calls=calls,
    )
    # The warm-up calls are in the CPU figures too: an upper bound of the per-call cost.
    report.add(
        NAME,
        f"Celery score_proposal, {label}: worker CPU per call",
        cpu_ms,
        "ms",
        ceiling_calls_per_s_per_2_core_machine=round(CORES * 1000 / cpu_ms) if cpu_ms else None,
    )
    report.add(
        NAME,
        f"Celery score_proposal, {label}: worker RSS after the rounds",
        max(rss),
        "MB",
        per_worker=rss,
        lancedb_loaded=lancedb,
    )
    if target is not None:
        _budget(
            report,
            f"Celery score_proposal, {label}: cores the target takes",
            sum(per_process.values()),
            target,
            **per_process,
        )


def _loads_lancedb(pid: int) -> bool:
    """Whether process `pid` has lancedb's library mapped (a sidecar worker never needs it)."""
    with open(f"/proc/{pid}/maps") as maps:
        return "_lancedb" in maps.read()


def _floor(
    report: Report,
    client: redis.Redis,
    settings,
    slots: int,
    timeout_s: float,
    *,
    pids: dict[str, int],
    call_ms: float,
    target: float,
) -> None:
    """The CPU budget's floor at `slots`: Celery's cost of a no-op task on a threads x`slots`
    worker (the worker's and Redis's CPU per task), plus `call_ms`, the call's own cost."""
    floor_app.app.conf.update(
        broker_url=settings.broker_url, result_backend=results.backend_url(settings.broker_url)
    )
    tasks = _calls(slots) * ROUNDS
    with Worker(
        settings,
        "-Q",
        DEFAULT_QUEUE,
        "--pool",
        "threads",
        "--concurrency",
        str(slots),
        app_module=floor_app.__name__,
    ) as worker:
        worker.wait_ready(floor_app.app)
        procs = {"redis": pids["redis"], "worker": worker.proc.pid}
        step = floor_app.app.signature("floor.step", args=({"run_id": "floor"},))
        step.apply_async(ignore_result=True)  # warm-up: imports, connections
        _drained(client, DEFAULT_QUEUE, timeout_s)
        before = _cpu(procs)
        for _ in range(tasks):
            step.apply_async(ignore_result=True)
        _drained(client, DEFAULT_QUEUE, timeout_s)
        task_ms = _cpu_ms(before, _cpu(procs), tasks)
    _budget(
        report,
        f"floor at {slots} slots: a no-op Celery task per call, plus the call: "
        "cores the target takes",
        sum(task_ms.values()) + call_ms,
        target,
        celery_ms_per_task=task_ms,
        call_ms=call_ms,
    )


def _drained(client: redis.Redis, queue: str, timeout_s: float) -> None:
    """Until `queue` is empty and nothing is unacknowledged (tasks ack when done)."""
    deadline = time.monotonic() + timeout_s
    while client.llen(queue) or client.hlen(UNACKED_KEY):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{queue} not drained after {timeout_s} s")
        time.sleep(POLL_S)
