"""(b) The in-process LangGraph runner, one run after another, against the reference sidecar
on loopback with no added latency: the baseline the Celery pipeline is compared with."""

from __future__ import annotations

import tempfile
from collections import Counter

from osiris_tasks.resources import Resources
from osiris_tasks.runner import InProcessRunner

from .batches import run_states
from .env import bench_settings
from .report import Figure, Report, timed

NAME = "runner"


def run(report: Report, *, runs: int, redis_url: str, sidecar_url: str) -> Figure:
    """Runs/s of `runs` sequential in-process runs; the figure is (c)'s baseline."""
    with tempfile.TemporaryDirectory(prefix="osiris-bench-runner-") as workdir:
        resources = Resources.from_settings(bench_settings(redis_url, sidecar_url, workdir))
        runner = InProcessRunner(resources)
        runner.run(run_states(1, seed=99, accepted=True)[0])  # warm-up: tables, connections
        states = run_states(runs, accepted=True)
        finals, spent = timed(lambda: [runner.run(state) for state in states])
        statuses = Counter(final.get("status") for final in finals)
        resources.close()
    report.note(f"runner: statuses of {runs} runs: {dict(statuses)}")
    return report.add(NAME, "in-process runner, 1 thread, instant sidecar", runs / spent,
                      "runs/s", runs=runs)
