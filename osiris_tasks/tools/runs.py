"""Reading recorded runs for people: the runs table, one run in full, and exports.

Reads LanceDB directly (no broker, no worker needed); safe while the pipeline writes.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
from rich.console import Console
from rich.table import Table

from osiris_tasks.adapters.llm import ROLE_MARKER, SYSTEM_PROMPTS
from osiris_tasks.store.runstore import RunStore

__all__ = ["chat_rows", "console", "export_runs", "run_details", "runs_table", "training_rows"]

# What a chat row's labels keep of its run's fill.
FILL_LABELS = ("side", "quantity", "price", "fee", "realised_pnl", "timestamp")

EXPORT_FORMATS = ("jsonl", "parquet", "chat")
LIST_COLUMNS = (
    "time",
    "run_id",
    "symbols",
    "status",
    "side",
    "quantity",
    "verdict",
    "rule",
    "score",
)


# Width used when stdout is not a terminal (CI logs, pipes): wide enough for the runs table.
PIPE_WIDTH = 200


def console() -> Console:
    """A console for tables: the terminal's width, or `PIPE_WIDTH` when piped."""
    return Console(width=None if sys.stdout.isatty() else PIPE_WIDTH)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def runs_table(rows: Iterable[Mapping[str, Any]], *, title: str = "recent runs") -> Table:
    """A readable table of runs: time, run_id, symbols, status, side, quantity, verdict, score."""
    table = Table(title=title)
    for column in LIST_COLUMNS:
        table.add_column(column, no_wrap=True)
    for row in rows:
        table.add_row(
            _cell(row.get("timestamp", "")[:19].replace("T", " ")),
            *(_cell(row.get(column)) for column in LIST_COLUMNS[1:]),
        )
    return table


def _loads(text: str | None) -> Any:
    if not text:
        return None
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return text


def llm_calls(row: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The run's LLM calls: its `llm_calls` column, or, in a row recorded before that column
    existed, the list inside `final_output`."""
    calls = _loads(row.get("llm_calls"))
    if calls is None:
        calls = (_loads(row.get("final_output")) or {}).get("llm_calls")
    return calls or []


def run_details(store: RunStore, run_id: str) -> dict[str, Any] | None:
    """Everything recorded about one run, JSON columns decoded, with its risk decisions."""
    row = store.get_run(run_id)
    if row is None:
        return None
    final = _loads(row.get("final_output")) or {}
    return {
        "run_id": row["run_id"],
        "status": row["status"],
        "recorded_at": row["timestamp"],
        "batch_created_at": row["created_at"],
        "error": row.get("error_message"),
        "ticks_summary": final.get("summary"),
        "market_text": final.get("market_text"),
        "ticks": _loads(row.get("input_query")),
        "prompt": row.get("prompt"),
        "raw_completion": row.get("raw_completion"),
        "proposal": _loads(row.get("proposal")),
        "verdict": _loads(row.get("risk_verdict")),
        "book": final.get("book"),
        "assessment": row.get("assessment"),
        "transaction_id": row.get("transaction_id"),
        "score": row.get("score"),
        "events": _loads(row.get("events")),
        "timings_ms": _loads(row.get("timings_ms")),
        "llm_calls": llm_calls(row),
        "advice": store.get_advice(run_id),
    }


def format_details(details: Mapping[str, Any]) -> str:
    """`details` as indented JSON, prompt and completion printed as text below it."""
    head = {k: v for k, v in details.items() if k not in ("prompt", "raw_completion")}
    return (
        json.dumps(head, indent=2, default=str)
        + f"\n\n--- prompt ---\n{details.get('prompt') or ''}"
        + f"\n\n--- raw completion ---\n{details.get('raw_completion') or ''}\n"
    )


def training_rows(runs: Iterable[Mapping[str, Any]]) -> Iterator[dict[str, Any]]:
    """Runs as prompt / completion / outcome rows, for audit and fine-tuning."""
    for row in runs:
        yield {
            "run_id": row["run_id"],
            "timestamp": row["timestamp"],
            "prompt": row.get("prompt"),
            "completion": row.get("raw_completion"),
            "proposal": row.get("proposal"),
            "status": row["status"],
            "verdict": row.get("verdict"),
            "rule": row.get("rule"),
            "score": row.get("score"),
            "assessment": row.get("assessment"),
            "error": row.get("error_message"),
            # Each LLM call's role, model, tokens and latency, as JSON text (one column type).
            "llm_calls": orjson.dumps(llm_calls(row)).decode(),
        }


def chat_rows(
    runs: Iterable[Mapping[str, Any]],
    fills: Mapping[str, Mapping[str, Any]],
    *,
    accepted_only: bool = False,
    min_pnl: float | None = None,
) -> Iterator[dict[str, Any]]:
    """Runs as chat-format fine-tuning rows: the proposal's messages as they were sent (the
    system message of the OpenAI-compatible backend; the sidecar's API takes the prompt alone)
    and the model's completion, labelled with the run's outcome. `fills` is by run_id; a fill's
    `realised_pnl` is what that fill realised (0 for one that opens a position)."""
    for row in runs:
        if not row.get("prompt") or row.get("raw_completion") is None:
            continue  # never asked (an error before the proposal): nothing to learn from
        verdict = _loads(row.get("risk_verdict")) or {}
        if accepted_only and not verdict.get("accepted"):
            continue
        fill = fills.get(row["run_id"])
        pnl = fill["realised_pnl"] if fill else None
        if min_pnl is not None and (pnl is None or pnl < min_pnl):
            continue
        proposal_call = next((c for c in llm_calls(row) if c.get("role") == "proposal"), {})
        messages = []
        if proposal_call.get("backend") == "openai":
            system = f"{ROLE_MARKER}proposal\n{SYSTEM_PROMPTS['proposal']}"
            messages.append({"role": "system", "content": system})
        messages += [
            {"role": "user", "content": row["prompt"]},
            {"role": "assistant", "content": row["raw_completion"]},
        ]
        yield {
            "messages": messages,
            "run_id": row["run_id"],
            "labels": {
                "status": row["status"],
                "accepted": verdict.get("accepted"),
                "rule": verdict.get("rule"),
                "score": row.get("score"),
                "model": proposal_call.get("model"),
                "fill": None if fill is None else {k: fill[k] for k in FILL_LABELS},
                "realised_pnl": pnl,
            },
        }


def export_runs(
    store: RunStore,
    fmt: str,
    output: Path,
    *,
    accepted_only: bool = False,
    min_pnl: float | None = None,
) -> int:
    """Write every run to `output` as JSONL, Parquet or chat JSONL (filtered by `accepted_only`
    and `min_pnl`); return how many."""
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"format must be one of {EXPORT_FORMATS}")
    if fmt == "chat":
        fills = {fill["run_id"]: fill for fill in store.fills()}
        rows = chat_rows(store.iter_runs(), fills, accepted_only=accepted_only, min_pnl=min_pnl)
        fmt = "jsonl"
    else:
        rows = training_rows(store.iter_runs())
    if fmt == "jsonl":
        count = 0
        with output.open("wb") as fh:
            for row in rows:
                fh.write(orjson.dumps(row) + b"\n")
                count += 1
        return count
    table = pa.Table.from_pylist(list(rows))
    pq.write_table(table, output)
    return table.num_rows
