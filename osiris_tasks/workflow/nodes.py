"""The workflow's nodes as pure functions: a state in, an update out, dependencies explicit.

No Celery, Redis, LanceDB or HTTP here (the adapters come as arguments): the same functions
serve the in-process LangGraph runner and the Celery tasks.
Expected failures raise `OsirisError` subclasses; `guard.guarded` turns them into recorded
error outcomes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Container, Mapping
from typing import TYPE_CHECKING, Any

import orjson

from osiris_tasks.domain.book import Order
from osiris_tasks.domain.budget import LLMBudget
from osiris_tasks.domain.completions import completion_rows, usage_of
from osiris_tasks.domain.ids import utc_iso
from osiris_tasks.domain.market import summarize, summary_text
from osiris_tasks.domain.numbers import finite_number
from osiris_tasks.domain.proposal import build_prompt, parse_completion
from osiris_tasks.domain.risk import Holdings, RiskLimits, Verdict, assess
from osiris_tasks.domain.ticks import validate_tick
from osiris_tasks.errors import EventError, OsirisError, ProposalInvalid, StoreError, TickRejected
from osiris_tasks.keys import (
    ADVICE_CHANNEL,
    ORDER_FILLED_CHANNEL,
    PORTFOLIO_UPDATED_CHANNEL,
    PROPOSAL_ASSESSED_CHANNEL,
    PROPOSAL_CREATED_CHANNEL,
    RISK_HALTED_CHANNEL,
)
from osiris_tasks.workflow.state import UPSTREAM_ERROR_RULE, apply_update, run_status

if TYPE_CHECKING:  # the adapters are given to the nodes: the workflow imports none of them
    from osiris_tasks.adapters.completions import CompletionStage
    from osiris_tasks.adapters.deadletter import DeadLetter
    from osiris_tasks.adapters.events import EventBus, EventOutbox
    from osiris_tasks.adapters.portfolio import Portfolio
    from osiris_tasks.adapters.sidecar import SidecarClient
    from osiris_tasks.adapters.tickstash import TickStash
    from osiris_tasks.store.runstore import RunStore

__all__ = [
    "evaluate_proposal",
    "generate_proposal",
    "publish_events",
    "query_market",
    "record_run",
    "risk_management",
    "send_events",
    "error_entry",
    "run_row",
    "score_proposal",
]

logger = logging.getLogger(__name__)

NO_BUDGET = LLMBudget()

State = Mapping[str, Any]
# State keys with a column of their own in `orchestrator_runs`, left out of `final_output`
# (`ticks_ref` is where the ticks of `input_query` were kept).
SEPARATE_COLUMNS = frozenset(
    {
        "ticks",
        "ticks_ref",
        "prompt",
        "raw_completion",
        "llm_calls",
        "unrecorded_advice",
        "unsent_events",
    }
)


def _json(value: Any) -> str:
    return orjson.dumps(value, default=str, option=orjson.OPT_SORT_KEYS).decode()


def query_market(
    state: State,
    *,
    default_symbol: str,
    stash: TickStash | None = None,
    portfolio: Portfolio | None = None,
    symbols: Container[str] | None = None,
) -> dict[str, Any]:
    """Re-validate the batch's ticks and summarise them per symbol; with a `stash`, a large
    batch's ticks go there and the state carries their key (`ticks_ref`) instead. A paper book
    (`portfolio`) takes the batch's prices: its marks, and the pending orders they fill."""
    valid, rejected = [], 0
    for raw in state.get("ticks") or []:
        try:
            valid.append(
                validate_tick(
                    raw,
                    default_symbol=default_symbol,
                    now_s=state.get("created_at"),
                    symbols=symbols,
                )
            )
        except TickRejected:
            rejected += 1
    if not valid:
        raise TickRejected(f"no valid ticks in the batch ({rejected} rejected)")
    summary = summarize(valid)
    update = {
        "ticks": valid,
        "rejected_ticks": rejected,
        "summary": summary,
        "market_text": summary_text(summary),
        "symbols": list(summary),
    }
    if portfolio is not None and portfolio.mode == "paper":
        fills, after, halted = portfolio.on_ticks(state["run_id"], price_series(valid))
        update.update(fills=fills, book_after=after, halted=halted)
    if stash is not None and stash.wants(len(valid)):
        key = stash.put(state["run_id"], _json(valid))
        if key is not None:
            update.update(ticks=[], ticks_ref=key)
    return update


def generate_proposal(
    state: State,
    *,
    sidecar: SidecarClient,
    portfolio: Portfolio,
    limits: RiskLimits,
    max_length: int,
    budget: LLMBudget = NO_BUDGET,
) -> dict[str, Any]:
    """Ask the sidecar for a proposal and parse it; an unusable completion is kept raw."""
    if state.get("errors") or state.get("expired"):
        return {}
    budget.check(state, now_s=time.time(), node="generate_proposal")
    book = portfolio.snapshot(state["run_id"])
    prompt = build_prompt(
        state["market_text"],
        state["symbols"],
        nav=book["nav"] or 0.0,
        daily_pnl=book["daily_pnl"] or 0.0,
        max_position_size_pct=limits.max_position_size_pct,
        max_daily_loss_pct=limits.max_daily_loss_pct,
    )
    calls: list[dict] = []
    update: dict[str, Any] = {"prompt": prompt, "book_at_prompt": book, "llm_calls": calls}
    body = sidecar.generate(
        prompt,
        max_length=max_length,
        symbols=state["symbols"],
        run_id=state["run_id"],
        calls=calls,
    )
    try:
        update["proposal"], update["raw_completion"] = parse_completion(body)
    except ProposalInvalid as exc:
        update.update(
            proposal=None, raw_completion=exc.raw, errors=[error_entry("generate_proposal", exc)]
        )
    return update


def risk_management(
    state: State,
    *,
    store: RunStore,
    portfolio: Portfolio,
    limits: RiskLimits,
) -> dict[str, Any]:
    """Decide with the risk gate and log the decision to `advice`; an upstream error rejects.
    A paper book takes an accepted proposal as an order in the same step (once per run)."""

    def decide(book: Mapping[str, Any]) -> Verdict:
        if book.get("halted"):
            return Verdict(False, f"trading halted: {book['halted']['reason']}", "halted")
        if state.get("expired"):
            return Verdict(False, "batch expired before a proposal was made", "expired")
        if state.get("errors"):
            return Verdict(
                False, f"upstream error: {state['errors'][0]['message']}", UPSTREAM_ERROR_RULE
            )
        return assess(
            state.get("proposal"),
            nav=book["nav"],
            daily_pnl=book["daily_pnl"],
            symbols=state.get("symbols") or (),
            limits=limits,
            holdings=Holdings(**book.get("holdings", {})),
        )

    decision = portfolio.decide(state["run_id"], decide, order_of(state))
    verdict, book = decision.verdict, decision.book
    advice = {
        "advice_id": f"adv_{state['run_id']}",
        "run_id": state["run_id"],
        "timestamp": utc_iso(),
        "proposal": _json(state.get("proposal")),
        "accepted": verdict.accepted,
        "reason": verdict.reason,
        "rule": verdict.rule,
        "nav_before_trade": book["nav"],
        "daily_pnl_before_trade": book["daily_pnl"],
    }
    update: dict[str, Any] = {"verdict": verdict.as_dict(), "book": book}
    try:
        store.record_advice(advice)
    except StoreError as exc:  # the decision stands; its row goes on with the run
        logger.error("run_id=%s advice not written (%s): kept with the run", state["run_id"], exc)
        update["unrecorded_advice"] = [advice]
    logger.info(
        "run_id=%s risk verdict accepted=%s rule=%s",
        state["run_id"],
        verdict.accepted,
        verdict.rule,
    )
    if decision.fills:
        update["fills"] = decision.fills
    if decision.after is not None:
        update["book_after"] = decision.after
    if decision.halted is not None:
        update["halted"] = decision.halted
    return update


def order_of(state: State) -> Order | None:
    """The order an accepted proposal becomes: its side and quantity, at the batch's last
    price of its symbol (None if the proposal names no symbol of the batch)."""
    proposal = state.get("proposal") or {}
    symbol = (state.get("summary") or {}).get(proposal.get("ticker"))
    quantity = finite_number(proposal.get("quantity"))
    if symbol is None or quantity is None or proposal.get("side") not in ("LONG", "SHORT"):
        return None
    return Order(
        order_id=state["run_id"],
        symbol=proposal["ticker"],
        side=proposal["side"],
        quantity=quantity,
        reference_price=symbol["last"],
        placed_at=symbol["end_ts"],
    )


def price_series(ticks: list[Mapping[str, Any]]) -> dict[str, list[tuple[float, float]]]:
    """A batch's prices per symbol, `[(timestamp, close)...]` in time order."""
    series: dict[str, list[tuple[float, float]]] = {}
    for tick in sorted(ticks, key=lambda t: t["timestamp"]):
        series.setdefault(tick["symbol"], []).append((tick["timestamp"], tick["close"]))
    return series


def evaluate_proposal(
    state: State, *, sidecar: SidecarClient, max_length: int, budget: LLMBudget = NO_BUDGET
) -> dict:
    """Hermes assessment of the accepted proposal."""
    budget.check(state, now_s=time.time(), node="evaluate_proposal")
    calls: list[dict] = []
    body = sidecar.propose_trade_adjustments(
        _json(state["proposal"]), max_length=max_length, run_id=state["run_id"], calls=calls
    )
    return {
        "llm_calls": calls,
        "assessment": {
            "transaction_id": body.get("transaction_id") or f"tx_{state['run_id']}",
            "phi3_proposal": body.get("phi3_proposal"),
            "hermes_assessment": body["hermes_assessment"],
        },
    }


def score_proposal(
    state: State, *, sidecar: SidecarClient, budget: LLMBudget = NO_BUDGET
) -> dict[str, Any]:
    """Hermes score of the accepted proposal, in the context of the market summary."""
    budget.check(state, now_s=time.time(), node="score_proposal")
    calls: list[dict] = []
    score = sidecar.score(
        dict(state["proposal"]), state.get("market_text", ""), run_id=state["run_id"], calls=calls
    )
    return {"score": score, "llm_calls": calls}


def advice_event(state: State, status: str) -> dict[str, Any]:
    """The `advice.generated` payload."""
    assessment = state.get("assessment") or {}
    return {
        "timestamp": utc_iso(),
        "status": status,
        "proposal": state.get("proposal"),
        "risk_gate_verdict": state.get("verdict"),
        "hermes_assessment": assessment.get("hermes_assessment"),
        "hermes_score": state.get("score"),
        "error": "; ".join(e["message"] for e in state.get("errors") or []) or None,
    }


def publish_events(
    state: State,
    *,
    bus: EventBus,
    speak: Callable[..., Any] | None = None,
) -> dict[str, Any]:
    """Publish the run's events; ask `speak` (when TTS is on) to voice the assessment. Events
    Redis refuses go on in the state (`unsent_events`) for `record_run` to put in the outbox:
    an outage delays them, never drops them."""
    run_id, status = state["run_id"], run_status(state)
    events = [bus.encode(ADVICE_CHANNEL, advice_event(state, status), run_id=run_id)]
    assessment = state.get("assessment")
    if assessment:
        tx = assessment["transaction_id"]
        events.append(
            bus.encode(
                PROPOSAL_CREATED_CHANNEL,
                {
                    **(state.get("proposal") or {}),
                    "orchestrator_run_id": run_id,
                    "transaction_id": tx,
                },
                run_id=run_id,
            )
        )
        events.append(
            bus.encode(
                PROPOSAL_ASSESSED_CHANNEL,
                {
                    "proposal_transaction_id": tx,
                    "orchestrator_run_id": run_id,
                    "assessment_text": assessment["hermes_assessment"],
                },
                run_id=run_id,
            )
        )
    events += book_events(state, bus)
    sent, unsent = send_events(bus, events, run_id)
    if assessment and speak is not None and not unsent:
        speak(run_id=run_id, transaction_id=tx, text=assessment["hermes_assessment"])
    update = {"events": sent + [_ref(e, queued=True) for e in unsent], "status": status}
    return {**update, "unsent_events": unsent} if unsent else update


def send_events(
    bus: EventBus, events: list[dict[str, str]], run_id: str
) -> tuple[list[dict], list[dict[str, str]]]:
    """Send encoded events in order until Redis refuses one: (refs of those sent, the rest)."""
    sent: list[dict] = []
    for i, event in enumerate(events):
        try:
            sent.append(bus.send(event))
        except EventError as exc:
            logger.warning(
                "run_id=%s %s; %d events kept for the outbox (%s)",
                run_id,
                exc.message,
                len(events) - i,
                ", ".join(e["channel"] for e in events[i:]),
            )
            return sent, events[i:]
    return sent, []


def _ref(event: Mapping[str, str], **extra: Any) -> dict[str, Any]:
    return {"channel": event["channel"], "event_id": event["event_id"], **extra}


def book_events(state: State, bus: EventBus) -> list[dict[str, str]]:
    """`order.filled` per fill (its id is the order's run_id), `portfolio.updated` after them,
    `risk.halted` if the run threw the kill switch: encoded, to send."""
    run_id, events = state["run_id"], []
    for fill in state.get("fills") or ():
        events.append(
            bus.encode(
                ORDER_FILLED_CHANNEL, {**fill, "filled_in_run_id": run_id}, run_id=fill["fill_id"]
            )
        )
    if state.get("fills") and state.get("book_after"):
        events.append(bus.encode(PORTFOLIO_UPDATED_CHANNEL, state["book_after"], run_id=run_id))
    if state.get("halted"):
        events.append(bus.encode(RISK_HALTED_CHANNEL, state["halted"], run_id=run_id))
    return events


def run_row(state: State, *, ticks_json: str | None = None) -> dict[str, Any]:
    """The `orchestrator_runs` row for a finished run (`ticks_json`: its ticks, already JSON)."""
    proposal, verdict = state.get("proposal") or {}, state.get("verdict") or {}
    errors = state.get("errors") or []
    return {
        "run_id": state["run_id"],
        "timestamp": utc_iso(),
        "created_at": utc_iso(state.get("created_at")),
        "status": run_status(state),
        "symbols": ",".join(state.get("symbols") or []),
        "side": proposal.get("side"),
        "quantity": proposal.get("quantity"),
        "verdict": ("accepted" if verdict.get("accepted") else "rejected") if verdict else None,
        "rule": verdict.get("rule"),
        "score": state.get("score"),
        "transaction_id": (state.get("assessment") or {}).get("transaction_id"),
        "input_query": ticks_json if ticks_json is not None else _json(state.get("ticks") or []),
        "final_output": _json({k: v for k, v in state.items() if k not in SEPARATE_COLUMNS}),
        "error_message": "; ".join(f"{e['node']}: {e['message']}" for e in errors) or None,
        "prompt": state.get("prompt"),
        "raw_completion": state.get("raw_completion"),
        "proposal": _json(state.get("proposal")),
        "risk_verdict": _json(verdict or None),
        "assessment": (state.get("assessment") or {}).get("hermes_assessment"),
        "timings_ms": _json(state.get("timings_ms") or {}),
        "events": _json(state.get("events") or []),
        "llm_calls": _json([usage_of(call) for call in state.get("llm_calls") or ()]),
    }


def record_run(
    state: State,
    *,
    store: RunStore,
    deadletter: DeadLetter,
    stash: TickStash | None = None,
    completions: CompletionStage | None = None,
    outbox: EventOutbox | None = None,
    bus: EventBus | None = None,
    final: bool = True,
) -> dict[str, Any]:
    """Write the run to `orchestrator_runs` (idempotent by run_id), its ticks read back from
    the `stash` if they went by reference (and forgotten there once written); its fills to
    `fills`; its completions to the cache's stage; the events `publish_events` could not send
    to the `outbox`, which it then relays on `bus`.

    On the `final` attempt a write that fails goes to the dead-letter list instead of being lost,
    and ticks that cannot be read back are recorded as an error, never made up.
    """
    run_id, ref, ticks_json, update = state["run_id"], state.get("ticks_ref"), None, {}
    if ref:
        ticks_json = _stashed_ticks(run_id, ref, stash, final)
        if ticks_json is None:
            done = _recorded_row(store, run_id)
            if done is not None:  # redelivered after an attempt that recorded it and forgot them
                return {"recorded": True, "status": done["status"]}
            logger.error("run_id=%s the batch's ticks (%s) are gone from Redis", run_id, ref)
            update["errors"] = [
                error_entry(
                    "record_run",
                    StoreError(
                        f"the batch's ticks ({ref}) were gone from Redis; input_query left empty",
                        run_id=run_id,
                        node="record_run",
                    ),
                )
            ]
            state = apply_update(state, update)
    row = run_row(state, ticks_json=ticks_json)
    _record_completions(completions, state, row["timestamp"], final)
    _record_fills(store, state, final)
    advice = state.get("unrecorded_advice") or []
    try:
        if advice:  # the risk decision its node could not write
            store.record_advice_many(advice)
        written = store.record_run(row)
    except StoreError as exc:
        if not final:
            raise
        deadletter.push(row, reason=str(exc), advice=advice)
        written = None
    if ticks_json is not None:
        stash.delete(ref)
    _queue_events(outbox, bus, state, final)
    if written is None:
        return {**update, "recorded": False, "status": row["status"]}
    logger.info("run_id=%s recorded status=%s (new row: %s)", run_id, row["status"], written)
    return {**update, "recorded": True, "status": row["status"]}


def _queue_events(
    outbox: EventOutbox | None, bus: EventBus | None, state: State, final: bool
) -> None:
    """Put the run's unsent events in the outbox and relay it. Redis still down: retried with
    the task (as a storage failure); on the `final` attempt the events are logged in full."""
    unsent, run_id = state.get("unsent_events"), state["run_id"]
    if not unsent or outbox is None:
        return
    try:
        outbox.put(unsent)
    except EventError as exc:
        if not final:
            raise StoreError(exc.message, run_id=run_id, node="record_run") from exc
        logger.critical(
            "run_id=%s %d events NOT published and NOT queued (%s): %s",
            run_id,
            len(unsent),
            exc.message,
            orjson.dumps(unsent).decode(),
        )
        return
    logger.info("run_id=%s %d events queued in the outbox", run_id, len(unsent))
    if bus is not None:
        try:
            outbox.relay(bus)
        except EventError as exc:  # queued: a worker's relay sends them
            logger.warning("run_id=%s relaying the outbox failed: %s", run_id, exc.message)


def _record_completions(
    completions: CompletionStage | None, state: State, timestamp: str, final: bool
) -> None:
    """Stage the completions the cache is to keep (written to LanceDB in batches, idempotent
    by key). They are a cache, not the audit trail: on the `final` attempt a failure is logged
    and the run recorded."""
    rows = completion_rows(state["run_id"], state.get("llm_calls") or (), timestamp)
    if not rows or completions is None:
        return
    try:
        completions.stage(rows, run_id=state["run_id"])
    except StoreError:
        if not final:
            raise
        logger.exception("run_id=%s completions not cached (the run is recorded)", state["run_id"])


def _record_fills(store: RunStore, state: State, final: bool) -> None:
    """Write the run's fills to `fills` (idempotent by fill_id, the order's run_id). The book in
    Redis has them already; on the `final` attempt a failed write is logged and the run
    recorded (its `final_output` keeps the fills)."""
    rows = [fill_row(state["run_id"], fill) for fill in state.get("fills") or ()]
    if not rows:
        return
    try:
        store.record_fills(rows)
    except StoreError:
        if not final:
            raise
        logger.exception("run_id=%s fills not written to LanceDB", state["run_id"])


def fill_row(run_id: str, fill: Mapping[str, Any]) -> dict[str, Any]:
    """A `fills` row: the fill, the run that filled it, its tick time as ISO UTC."""
    return {**fill, "filled_in_run_id": run_id, "timestamp": utc_iso(fill["timestamp"])}


def _stashed_ticks(run_id: str, ref: str, stash: TickStash | None, final: bool) -> str | None:
    """The ticks' JSON under `ref`; None if gone (or unreadable on the `final` attempt)."""
    try:
        return stash.get(ref) if stash is not None else None
    except StoreError:
        if not final:
            raise
        logger.exception("run_id=%s ticks unreadable on the last attempt", run_id)
        return None


def _recorded_row(store: RunStore, run_id: str) -> dict[str, Any] | None:
    """The run's row if it is already written; None if not, or if the store cannot say (the
    write that follows then fails into the dead-letter list, or is retried)."""
    try:
        return store.get_run(run_id)
    except StoreError:
        return None


def error_entry(node: str, exc: BaseException) -> dict[str, str]:
    message = exc.message if isinstance(exc, OsirisError) else str(exc)
    return {"node": node, "type": type(exc).__name__, "message": message}
