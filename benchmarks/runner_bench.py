"""(b) The in-process LangGraph runner, one run after another, against the reference sidecar
on loopback with no added latency: the baseline the Celery pipeline is compared with.

Its CPU per run (this process, the sidecar and Redis) is the work of a run's nodes with no
Celery at all; set against the 20 ms per run that 100 runs/s on 2 cores allows, it bounds what
any task layout can reach (issue 6, target 1)."""

from __future__ import annotations

import os
import tempfile
from collections import Counter

from osiris_tasks.adapters.resources import Resources
from osiris_tasks.workflow.runner import InProcessRunner

from .batches import run_states
from .env import bench_settings, cpu_s, redis_pid
from .report import Figure, Report, timed

NAME = "runner"


def run(report: Report, *, runs: int, redis_url: str, sidecar_url: str) -> Figure:
    """Runs/s of `runs` sequential in-process runs; the figure is (c)'s baseline."""
    with tempfile.TemporaryDirectory(prefix="osiris-bench-runner-") as workdir:
        resources = Resources.from_settings(bench_settings(redis_url, sidecar_url, workdir))
        runner = InProcessRunner(resources)
        runner.run(run_states(1, seed=99, accepted=True)[0])  # warm-up: tables, connections
        states = run_states(runs, accepted=True)
        pids = {
            "bench (runs)": os.getpid(),
            "sidecar": sidecar_url.pid,
            "redis": redis_pid(redis_url),
        }
        before = {name: cpu_s(pid, children=False) for name, pid in pids.items()}
        finals, spent = timed(lambda: [runner.run(state) for state in states])
        cpu_ms = {
            name: round((cpu_s(pid, children=False) - before[name]) / runs * 1000, 2)
            for name, pid in pids.items()
        }
        statuses = Counter(final.get("status") for final in finals)
        resources.close()
    report.note(f"runner: statuses of {runs} runs: {dict(statuses)}")
    figure = report.add(
        NAME, "in-process runner, 1 thread, instant sidecar", runs / spent, "runs/s", runs=runs
    )
    report.add(
        NAME,
        "in-process runner: CPU per run, all processes (the nodes' own work, no Celery)",
        round(sum(cpu_ms.values()), 2),
        "ms",
        **cpu_ms,
    )
    return figure
