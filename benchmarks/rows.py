"""Realistic `orchestrator_runs` rows without any I/O: the pure nodes on synthetic ticks.

A row is what `nodes.run_row` makes of a finished run whose proposal came from the reference
policy (`reference_sidecar.propose`), so its size, content and compressibility match what the
pipeline records: every row has its own ticks, prompt and proposal (~0.3 ms each to make).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from typing import Any

from osiris_tasks.domain.ids import new_run_id, utc_iso
from osiris_tasks.domain.proposal import build_prompt, parse_completion
from osiris_tasks.domain.risk import RiskLimits, assess
from osiris_tasks.tools.reference_sidecar import _render_output, propose
from osiris_tasks.tools.sim import synthetic_ticks
from osiris_tasks.workflow import nodes
from osiris_tasks.workflow.state import apply_update, initial_state

__all__ = ["finished_state", "run_rows"]

NAV = 100_000.0
TICKS_PER_RUN = 10
SYMBOLS = ("AAPL", "MSFT", "NVDA")


def finished_state(ticks: list[dict[str, Any]]) -> dict[str, Any]:
    state = initial_state(ticks)
    state = apply_update(state, nodes.query_market(state, default_symbol="SPY"))
    limits = RiskLimits()
    prompt = build_prompt(
        state["market_text"],
        state["symbols"],
        nav=NAV,
        daily_pnl=0.0,
        max_position_size_pct=limits.max_position_size_pct,
        max_daily_loss_pct=limits.max_daily_loss_pct,
    )
    proposal, raw = parse_completion({"output": _render_output(propose(prompt))})
    verdict = assess(proposal, nav=NAV, daily_pnl=0.0, symbols=state["symbols"], limits=limits)
    update = {
        "prompt": prompt,
        "raw_completion": raw,
        "proposal": proposal,
        "verdict": verdict.as_dict(),
        "book": {"nav": NAV, "daily_pnl": 0.0},
        "timings_ms": {"query_market": 0.4, "generate_proposal": 3.1},
    }
    if verdict.accepted:
        update.update(
            score=0.62,
            assessment={
                "transaction_id": "tx_0123456789abcdef",
                "phi3_proposal": proposal,
                "hermes_assessment": "The proposal stays within limits; the stand-in approves.",
            },
        )
    return apply_update(state, update)


def run_rows(
    *, seed: int = 7, start_s: float | None = None, step_s: float = 0.001
) -> Iterator[dict[str, Any]]:
    """Endless distinct rows, each from its own batch of synthetic ticks, `step_s` apart."""
    ticks = synthetic_ticks(SYMBOLS, seed=seed, volatility=0.002)
    now_s = time.time() if start_s is None else start_s
    for i in itertools.count():
        row = nodes.run_row(finished_state(list(itertools.islice(ticks, TICKS_PER_RUN))))
        stamp_s = now_s + i * step_s
        yield {**row, "run_id": new_run_id(stamp_s), "timestamp": utc_iso(stamp_s)}
