"""Task messages: orjson-written JSON that reads back exactly as kombu's JSON did."""

from __future__ import annotations

import json
import math
import tracemalloc
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from kombu import serialization
from kombu.exceptions import ContentDisallowed
from kombu.utils import json as kombu_json
from pipeline_helpers import ACCEPTED_BATCH

from osiris_tasks.tasks.celery_app import app
from osiris_tasks.transport.serialization import CONTENT_TYPE, SERIALIZER, EncodedList, dumps, loads
from osiris_tasks.workflow.nodes import query_market
from osiris_tasks.workflow.state import initial_state


def a_state() -> dict:
    state = initial_state(ACCEPTED_BATCH, run_id="run_x", created_at=1.5e9, ttl_s=30.0)
    return {
        **state,
        **query_market(state, default_symbol="AAPL"),
        "errors": [],
        "nested": {"tuple": (1, 2), "none": None, "unicode": "Zürich €"},
    }


def test_a_state_reads_back_as_kombu_json_would():
    state = a_state()
    text = dumps(state)
    assert json.loads(text) == kombu_json.loads(kombu_json.dumps(state))  # plain JSON
    assert loads(text) == loads(text.encode()) == loads(memoryview(text.encode()))
    assert loads(text) == kombu_json.loads(kombu_json.dumps(state))


def test_types_json_lacks_use_kombus_markers_both_ways():
    value = {"at": datetime(2026, 11, 25, 8, 0, tzinfo=UTC), "price": Decimal("1.10")}
    assert loads(dumps(value)) == value
    assert kombu_json.loads(dumps(value)) == value  # what an older worker would read
    assert loads(kombu_json.dumps(value)) == value


def test_non_finite_floats():
    # kombu's encoder writes NaN (not JSON); we read it, and write null instead.
    assert math.isnan(loads(kombu_json.dumps({"x": float("nan")}))["x"])
    assert loads(dumps({"x": float("inf")})) == {"x": None}


def test_registered_for_application_json_and_used_for_tasks():
    content_type, encoding, body = serialization.dumps(a_state(), serializer=SERIALIZER)
    assert (content_type, encoding) == (CONTENT_TYPE, "utf-8") == ("application/json", "utf-8")
    assert serialization.loads(body, content_type, encoding, accept={"application/json"}) == (
        loads(body)
    )
    assert app.conf.task_serializer == SERIALIZER and app.conf.accept_content == ["json"]
    with pytest.raises(ContentDisallowed):  # still JSON only
        serialization.loads(
            b"\x80\x04N.", "application/x-python-serialize", "binary", accept={"application/json"}
        )


def test_an_encoded_list_goes_into_the_message_as_the_list_would():
    ticks = a_state()["ticks"]
    encoded = EncodedList(ticks)
    assert len(encoded) == len(ticks) and list(encoded) == ticks and encoded[-1] == ticks[-1]
    assert encoded == ticks and encoded == EncodedList(tuple(ticks)) and encoded != ticks[:-1]
    state = {"run_id": "run_x", "ticks": ticks}
    assert dumps({**state, "ticks": encoded}) == dumps(state)  # byte for byte
    content_type, encoding, body = serialization.dumps(
        {**state, "ticks": encoded}, serializer=SERIALIZER
    )
    assert serialization.loads(body, content_type, encoding) == state


def test_an_encoded_list_holds_no_more_than_its_text():
    ticks = a_state()["ticks"] * 20
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        held = [EncodedList(ticks) for _ in range(20)]
        per_list = (tracemalloc.get_traced_memory()[0] - before) / len(held)
    finally:
        tracemalloc.stop()
    assert per_list < 1.1 * len(held[0].json)  # orjson's own bytes are ~2x their text
