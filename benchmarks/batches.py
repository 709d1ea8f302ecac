"""Tick batches for whole runs: synthetic, 10 ticks each unless asked, reproducible from a
seed."""

from __future__ import annotations

import itertools
from typing import Any

from osiris_tasks.tools.sim import synthetic_ticks
from osiris_tasks.workflow.state import initial_state

from .rows import finished_state

__all__ = ["run_states"]

SYMBOLS = ("AAPL", "MSFT", "NVDA")
TICKS_PER_RUN = 10


def run_states(
    count: int, *, seed: int = 11, accepted: bool = False, ticks_per_run: int = TICKS_PER_RUN
) -> list[dict[str, Any]]:
    """`count` initial run states, each with its own batch of synthetic ticks; with `accepted`,
    only batches whose proposal (the reference policy's) the risk gate accepts, so every run
    takes the whole graph: 7 tasks with the evaluators' chord."""
    ticks = synthetic_ticks(SYMBOLS, seed=seed, volatility=0.002)
    batches = (list(itertools.islice(ticks, ticks_per_run)) for _ in itertools.count())
    if accepted:
        batches = (b for b in batches if finished_state(b)["verdict"]["accepted"])
    return [initial_state(batch) for batch in itertools.islice(batches, count)]
