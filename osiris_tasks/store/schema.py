"""The store's tables: their names, Arrow schemas, keys and indexed columns, and the pure
shaping of rows into Arrow tables (no LanceDB connection, no Redis).

`advice` (one row per risk decision) and `orchestrator_runs` (one per run) are the audit trail;
`completions` is the LLM completion cache (one row per distinct request, `domain/completions.py`);
`fills` holds the paper book's fills (one per order, `domain/book.py`).
Each table has a key column that makes a row unique (`advice_id` / `run_id` /
`completion_key` / `fill_id`) and BTREE indices on its keys (and `orchestrator_runs.timestamp`, for
`RunStore.recent_runs`). Keys are validated against `KEY_PATTERN` before they go into a filter,
so no filter injection is possible.

A column added to a schema here is added to an existing table when the store opens it (its old
rows read it as null); see `RunStore._table`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import pyarrow as pa

from osiris_tasks.domain.ids import utc_iso
from osiris_tasks.errors import StoreError

__all__ = [
    "ADVICE_SCHEMA",
    "ADVICE_TABLE",
    "COMPLETIONS_SCHEMA",
    "COMPLETIONS_TABLE",
    "FILLS_SCHEMA",
    "FILLS_TABLE",
    "KEY_PATTERN",
    "RUNS_SCHEMA",
    "RUNS_TABLE",
    "TABLES",
    "TableSpec",
    "arrow_rows",
    "check_key",
    "check_table",
    "in_filter",
]

ADVICE_TABLE = "advice"
RUNS_TABLE = "orchestrator_runs"
COMPLETIONS_TABLE = "completions"
FILLS_TABLE = "fills"
# Allowed run_id / advice_id: no quote, space or backslash can reach a filter expression.
KEY_PATTERN = re.compile(r"[A-Za-z0-9_.:-]{1,128}")


def _strings(*names: str) -> list[pa.Field]:
    return [pa.field(name, pa.string()) for name in names]


def _floats(*names: str) -> list[pa.Field]:
    return [pa.field(name, pa.float64()) for name in names]


def _key(name: str) -> pa.Field:
    return pa.field(name, pa.string(), nullable=False)


ADVICE_SCHEMA = pa.schema(
    [
        _key("advice_id"),
        _key("run_id"),
        *_strings("timestamp", "proposal"),
        pa.field("accepted", pa.bool_()),
        *_strings("reason", "rule"),
        *_floats("nav_before_trade", "daily_pnl_before_trade"),
    ]
)
RUNS_SCHEMA = pa.schema(
    [
        _key("run_id"),
        *_strings("timestamp", "created_at", "status", "symbols", "side"),
        *_floats("quantity"),
        *_strings("verdict", "rule"),
        *_floats("score"),
        *_strings(
            "transaction_id",
            "input_query",
            "final_output",
            "error_message",
            "prompt",
            "raw_completion",
            "proposal",
            "risk_verdict",
            "assessment",
            "timings_ms",
            "events",
            "llm_calls",  # JSON: the run's LLM calls (role, backend, model, tokens, cached...)
        ),
    ]
)
COMPLETIONS_SCHEMA = pa.schema(
    [
        _key("completion_key"),
        _key("run_id"),  # the run whose request was answered first
        *_strings("timestamp", "backend", "model", "role", "request", "completion"),
        pa.field("prompt_tokens", pa.int64()),
        pa.field("completion_tokens", pa.int64()),
        *_floats("latency_ms"),
    ]
)
FILLS_SCHEMA = pa.schema(
    [
        _key("fill_id"),  # the order's run_id: one fill per order
        _key("run_id"),  # the run whose order it was
        *_strings("filled_in_run_id", "timestamp", "symbol", "side"),
        *_floats(
            "quantity",
            "price",
            "reference_price",
            "fee",
            "realised_pnl",
            "cash_after",
            "position_after",
            "nav_after",
        ),
    ]
)


class TableSpec(NamedTuple):
    """One table's layout: its Arrow schema, key column and indexed columns."""

    schema: pa.Schema
    key: str  # the column that makes a row unique
    indexed: tuple[str, ...]  # columns with a BTREE index


TABLES: Mapping[str, TableSpec] = {
    ADVICE_TABLE: TableSpec(ADVICE_SCHEMA, "advice_id", ("advice_id", "run_id")),
    RUNS_TABLE: TableSpec(RUNS_SCHEMA, "run_id", ("run_id", "timestamp")),
    COMPLETIONS_TABLE: TableSpec(COMPLETIONS_SCHEMA, "completion_key", ("completion_key",)),
    FILLS_TABLE: TableSpec(FILLS_SCHEMA, "fill_id", ("fill_id", "run_id")),
}


def check_key(value: Any, column: str) -> str:
    """`value` if it is a safe key for `column`, else StoreError."""
    if isinstance(value, str) and KEY_PATTERN.fullmatch(value):
        return value
    raise StoreError(f"{column} {value!r} does not match {KEY_PATTERN.pattern}")


def check_table(name: str) -> None:
    """StoreError unless `name` is one of `TABLES`."""
    if name not in TABLES:
        raise StoreError(f"unknown table {name!r}; expected one of {sorted(TABLES)}")


def _cell(field: pa.Field, value: Any) -> Any:
    """`value` as stored: NaN and infinities in a float column become null."""
    if pa.types.is_floating(field.type) and isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _cells(table: str, row: Mapping[str, Any]) -> dict[str, Any]:
    """One row of `table` with its keys checked, as stored; `timestamp` defaults to now."""
    schema, key_column, _ = TABLES[table]
    run_id = row.get("run_id")
    unknown = sorted(set(row) - set(schema.names))
    if unknown:
        raise StoreError(f"unknown column(s) {unknown} for table {table}", run_id=run_id)
    for column in dict.fromkeys((key_column, "run_id")):
        check_key(row.get(column), column)
    values = {"timestamp": utc_iso(), **{k: v for k, v in row.items() if v is not None}}
    return {field.name: _cell(field, values.get(field.name)) for field in schema}


def arrow_rows(table: str, rows: Sequence[Mapping[str, Any]]) -> pa.Table:
    """Validated rows of `table` as one pyarrow table; StoreError names the first bad row."""
    cells = [_cells(table, row) for row in rows]
    try:
        return pa.Table.from_pylist(cells, schema=TABLES[table].schema)
    except (pa.ArrowException, TypeError, ValueError) as exc:
        bad = next((c for c in cells if not _fits(table, c)), cells[0])
        raise StoreError(f"row does not fit table {table}: {exc}", run_id=bad["run_id"]) from exc


def _fits(table: str, cells: dict[str, Any]) -> bool:
    try:
        pa.Table.from_pylist([cells], schema=TABLES[table].schema)
    except (pa.ArrowException, TypeError, ValueError):
        return False
    return True


def in_filter(column: str, keys: Iterable[str]) -> str:
    """`column IN ('k1', ...)` for keys already checked against KEY_PATTERN."""
    return f"{column} IN ({', '.join(repr(key) for key in keys)})"
