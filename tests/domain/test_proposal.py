"""Completion parsing: every shape the sidecar may answer in, and garbage kept as raw text."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from osiris_tasks.domain.proposal import build_prompt, parse_completion
from osiris_tasks.errors import ProposalInvalid

PROPOSAL = {
    "ticker": "AAPL",
    "action": "adjust",
    "side": "LONG",
    "quantity": 3,
    "price_estimate": 101.0,
    "new_stop_pct": 1.0,
    "new_target_pct": 2.0,
    "confidence": 0.6,
    "rationale": "momentum",
}
TEXT = orjson.dumps(PROPOSAL).decode()


@pytest.mark.parametrize(
    "body",
    [
        PROPOSAL,
        {"output": TEXT},
        {"generated_text": f"Here you go:\n```json\n{TEXT}\n```\nGood luck."},
        [{"generated_text": TEXT}],
        {"output": PROPOSAL},
        f"Sure! {TEXT} -- that's my answer",
        f"```\n{TEXT}\n```",
    ],
)
def test_accepted_shapes(body):
    proposal, raw = parse_completion(body)
    assert proposal["ticker"] == "AAPL" and proposal["quantity"] == 3.0
    assert raw


@pytest.mark.parametrize(
    "body",
    [
        {"output": "I cannot help with that."},
        {"output": '{"ticker": "AAPL", "action": "buy"}'},
        {"output": '{"ticker": "AAPL", "action": "adjust", "quantity": NaN}'},
        {"output": '{"ticker": "AAPL; rm -rf", "action": "adjust"}'},
        "<html>\x00garbage",
        {"unexpected": 1},
        None,
        12,
    ],
)
def test_garbage_is_invalid_with_raw_text(body):
    with pytest.raises(ProposalInvalid) as info:
        parse_completion(body)
    assert isinstance(info.value.raw, str)


def test_deeply_nested_completion_does_not_crash():
    with pytest.raises(ProposalInvalid):
        parse_completion({"output": "{" * 5000})


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.text(max_size=200),
        st.dictionaries(
            st.text(max_size=10),
            st.one_of(st.text(max_size=50), st.floats(), st.integers()),
            max_size=5,
        ),
    )
)
def test_arbitrary_completions_parse_or_raise_invalid(body):
    try:
        proposal, raw = parse_completion(body)
    except ProposalInvalid:
        return
    assert proposal["action"] in ("adjust", "pass", "abort")


def test_prompt_carries_only_validated_fields_and_the_schema():
    prompt = build_prompt(
        "AAPL n=2 first=1.0000 last=2.0000",
        ["AAPL"],
        nav=1e5,
        daily_pnl=-5,
        max_position_size_pct=0.01,
        max_daily_loss_pct=0.02,
    )
    assert "PORTFOLIO nav=100000.00 daily_pnl=-5.00 max_position_pct=1.0000" in prompt
    for field in (
        "ticker",
        "action",
        "side",
        "quantity",
        "price_estimate",
        "new_stop_pct",
        "new_target_pct",
        "confidence",
        "rationale",
    ):
        assert f'"{field}"' in prompt
