"""Tick batches for whole runs: synthetic, 10 ticks each, reproducible from a seed."""

from __future__ import annotations

import itertools
from typing import Any

from osiris_tasks.sim import synthetic_ticks
from osiris_tasks.state import initial_state

__all__ = ["run_states"]

SYMBOLS = ("AAPL", "MSFT", "NVDA")
TICKS_PER_RUN = 10


def run_states(count: int, *, seed: int = 11) -> list[dict[str, Any]]:
    """`count` initial run states, each with its own batch of synthetic ticks."""
    ticks = synthetic_ticks(SYMBOLS, seed=seed, volatility=0.002)
    return [initial_state(list(itertools.islice(ticks, TICKS_PER_RUN))) for _ in range(count)]
