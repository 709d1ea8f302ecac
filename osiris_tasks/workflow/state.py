"""The run state: its keys, the reducers for keys that parallel nodes share, and its outcome.

The reducers declared here (in `RunState`'s `Annotated` metadata) are the single definition of
how updates merge: LangGraph reads them for the in-process runner, and `apply_update` reads the
same annotations for the Celery chord's join, applying parallel updates in node-name order as
LangGraph does.
"""

from __future__ import annotations

import operator
import time
from collections.abc import Iterable, Mapping
from typing import Annotated, Any, TypedDict, get_args, get_origin, get_type_hints

from osiris_tasks.domain.ids import new_run_id

__all__ = [
    "RunState",
    "RunStatus",
    "UPSTREAM_ERROR_RULE",
    "apply_update",
    "apply_updates",
    "comparable",
    "initial_state",
    "run_status",
]


def merge_dicts(left: dict | None, right: dict | None) -> dict:
    """Reducer: shallow merge, right wins."""
    return {**(left or {}), **(right or {})}


class RunState(TypedDict, total=False):
    """Everything a run knows; each node returns an update of some of these keys."""

    run_id: str
    created_at: float  # epoch seconds when the bridge formed the batch
    ttl_s: float | None  # a run older than this when picked up is recorded as expired
    ticks: list[dict]  # validated ticks of the batch (empty while they are stashed)
    ticks_ref: str  # Redis key of a large batch's ticks, Celery path (tickstash.py)
    rejected_ticks: int  # ticks of a direct submission that failed validation
    summary: dict[str, dict]  # per-symbol market summary
    market_text: str  # the summary as prompt lines
    symbols: list[str]
    book_at_prompt: dict  # NAV and daily P&L the prompt was built with
    prompt: str
    raw_completion: str
    proposal: dict | None
    book: dict  # NAV and daily P&L the risk gate decided with (and the paper book's holdings)
    # Orders the paper book filled in this run (a batch's ticks filling earlier runs' pending
    # orders, or this run's own at batch close): `domain/book.py` `Fill`s, as dicts.
    fills: Annotated[list[dict], operator.add]
    book_after: dict | None  # the paper book after this run's changes, if it changed it
    halted: dict | None  # a kill switch this run threw (a daily loss at or beyond the limit)
    verdict: dict  # {"accepted", "reason", "rule"}
    unrecorded_advice: list[dict]  # the advice row risk_management could not write (record_run)
    assessment: dict | None  # {"transaction_id", "phi3_proposal", "hermes_assessment"}
    score: float | None
    expired: bool
    status: str
    events: list[dict]  # [{"channel", "event_id"}] published (or `queued`) for this run
    unsent_events: list[dict]  # events Redis refused: record_run puts them in the outbox
    recorded: bool
    errors: Annotated[list[dict], operator.add]  # [{"node", "type", "message"}]
    # One entry per LLM call that answered: role, backend, model, prompt_tokens,
    # completion_tokens (None where the backend does not say), latency_ms.
    llm_calls: Annotated[list[dict], operator.add]
    timings_ms: Annotated[dict[str, float], merge_dicts]


class RunStatus:
    """The run statuses recorded in `orchestrator_runs.status`."""

    SUCCESS = "success"
    RISK_REJECTED = "success_risk_rejected"
    PARTIAL = "partial_success_with_errors"
    REJECTED_WITH_ERRORS = "risk_rejected_with_errors"
    ERROR_RISK_REJECTED = "error_risk_rejected"
    ERROR = "error"
    EXPIRED = "expired"


def _reducers() -> dict[str, Any]:
    hints = get_type_hints(RunState, include_extras=True)
    return {key: get_args(hint)[1] for key, hint in hints.items() if get_origin(hint) is Annotated}


REDUCERS = _reducers()


def apply_update(state: Mapping[str, Any], update: Mapping[str, Any] | None) -> dict[str, Any]:
    """`state` with `update` applied: reducer keys merged, the rest overwritten."""
    merged = dict(state)
    for key, value in (update or {}).items():
        reducer = REDUCERS.get(key)
        merged[key] = reducer(merged.get(key) or _empty(key), value) if reducer else value
    return merged


def apply_updates(state: Mapping[str, Any], updates: Iterable[tuple[str, Mapping]]) -> dict:
    """Apply `(node, update)` pairs of one parallel step in node-name order, as LangGraph does."""
    for _, update in sorted(updates, key=operator.itemgetter(0)):
        state = apply_update(state, update)
    return dict(state)


def _empty(key: str) -> Any:
    return [] if REDUCERS[key] is operator.add else {}


# The risk gate's rule for a run it rejected because a node before it failed.
UPSTREAM_ERROR_RULE = "upstream_error"


def run_status(state: Mapping[str, Any]) -> str:
    """The run's outcome, from its verdict and errors: where it failed, if it did. An error
    before the gate makes the gate reject with `UPSTREAM_ERROR_RULE`; any other error came
    after the gate's decision (an evaluator, publishing, the join, recording)."""
    if state.get("expired"):
        return RunStatus.EXPIRED
    verdict = state.get("verdict") or {}
    if state.get("errors"):
        if not verdict:
            return RunStatus.ERROR
        if verdict.get("accepted"):
            return RunStatus.PARTIAL
        if verdict.get("rule") == UPSTREAM_ERROR_RULE:
            return RunStatus.ERROR_RISK_REJECTED
        return RunStatus.REJECTED_WITH_ERRORS
    return RunStatus.SUCCESS if verdict.get("accepted") else RunStatus.RISK_REJECTED


# Keys that legitimately differ between two executions of the same batch.
VOLATILE_KEYS = frozenset({"timings_ms"})


def comparable(state: Mapping[str, Any]) -> dict[str, Any]:
    """The state without what differs between executions (timings, LLM call latencies), for
    parity checks."""
    same = {k: v for k, v in state.items() if k not in VOLATILE_KEYS}
    if "llm_calls" in same:
        same["llm_calls"] = [
            {k: v for k, v in call.items() if k != "latency_ms"} for call in same["llm_calls"]
        ]
    return same


def initial_state(
    ticks: Iterable[Mapping[str, Any]],
    *,
    run_id: str | None = None,
    created_at: float | None = None,
    ttl_s: float | None = None,
    copy_ticks: bool = True,
) -> dict[str, Any]:
    """The state a run starts with; it holds copies of `ticks`, or, with `copy_ticks=False`,
    the caller's `ticks` sequence itself (the bridge's `EncodedList`, which nothing else
    holds)."""
    created_at = time.time() if created_at is None else created_at
    return {
        "run_id": run_id or new_run_id(created_at),
        "created_at": created_at,
        "ttl_s": ttl_s,
        "ticks": [dict(t) for t in ticks] if copy_ticks else ticks,
        "errors": [],
        "fills": [],  # as LangGraph's aggregate channel starts: the same state on both paths
        "timings_ms": {},
    }
