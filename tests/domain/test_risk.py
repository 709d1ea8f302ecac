"""The risk gate: each rule, the inclusive limits, and no violating proposal ever accepted."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from osiris_tasks.domain.risk import RISK_GATE_CONFIG, RiskLimits, assess

NAV = 100_000.0
GOOD = {
    "ticker": "AAPL",
    "action": "adjust",
    "side": "LONG",
    "quantity": 5,
    "price_estimate": 100.0,
    "new_stop_pct": 1.0,
    "new_target_pct": 2.0,
    "confidence": 0.7,
    "rationale": "ok",
}


def check(proposal, nav=NAV, pnl=0.0, symbols=("AAPL",)):
    return assess(proposal, nav=nav, daily_pnl=pnl, symbols=symbols)


def test_defaults_match_the_original():
    assert dict(RISK_GATE_CONFIG) == {"max_position_size_pct": 0.01, "max_daily_loss_pct": 0.02}


def test_accepts_a_proposal_within_limits():
    verdict = check(GOOD)
    assert verdict.accepted and verdict.rule == "within_limits"


@pytest.mark.parametrize(
    ("change", "rule"),
    [
        ({"action": "pass"}, "action_not_adjust"),
        ({"ticker": "MSFT"}, "unknown_ticker"),
        ({"side": "FLAT"}, "invalid_side"),
        ({"confidence": 1.01}, "invalid_confidence"),
        ({"confidence": float("nan")}, "invalid_confidence"),
        ({"quantity": 0}, "invalid_quantity"),
        ({"quantity": -5}, "invalid_quantity"),
        ({"quantity": "5"}, "invalid_quantity"),
        ({"quantity": True}, "invalid_quantity"),
        ({"quantity": float("inf")}, "invalid_quantity"),
        ({"price_estimate": float("nan")}, "invalid_price"),
        ({"price_estimate": 10**400}, "invalid_price"),
        ({"quantity": 10, "price_estimate": 100.0}, "position_size_limit"),  # exactly 1 %: at limit
        ({"quantity": 1e300, "price_estimate": 1e300}, "position_size_limit"),  # overflows to inf
    ],
)
def test_rejections(change, rule):
    verdict = check({**GOOD, **change})
    assert not verdict.accepted
    assert verdict.rule == rule


@pytest.mark.parametrize(
    ("nav", "pnl", "rule"),
    [
        (0.0, 0.0, "invalid_nav"),
        (-1.0, 0.0, "invalid_nav"),
        (float("nan"), 0.0, "invalid_nav"),
        (None, 0.0, "invalid_nav"),
        (NAV, float("-inf"), "invalid_daily_pnl"),
        (NAV, -2000.0, "daily_loss_limit"),  # exactly -2 %: at the limit, rejected
        (NAV, -5000.0, "daily_loss_limit"),
    ],
)
def test_book_rejections(nav, pnl, rule):
    assert check(GOOD, nav=nav, pnl=pnl).rule == rule


@pytest.mark.parametrize("proposal", [None, {}, [], "adjust", 42])
def test_missing_or_malformed_proposal(proposal):
    assert check(proposal).rule == "no_proposal"


def test_custom_limits():
    tight = RiskLimits(max_position_size_pct=0.001, max_daily_loss_pct=0.02)
    assert not assess(GOOD, nav=NAV, daily_pnl=0, symbols=["AAPL"], limits=tight).accepted


anything = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
)
numbers = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(10**30), max_value=10**30),
    anything,
)


@settings(max_examples=400, deadline=None)
@given(
    proposal=st.fixed_dictionaries(
        {
            "ticker": st.sampled_from(["AAPL", "MSFT", "", None]),
            "action": st.sampled_from(["adjust", "pass", "abort", None, 1]),
            "side": st.sampled_from(["LONG", "SHORT", "long", None]),
            "quantity": numbers,
            "price_estimate": numbers,
            "confidence": numbers,
        }
    ),
    nav=numbers,
    pnl=numbers,
)
def test_no_violating_proposal_is_ever_accepted(proposal, nav, pnl):
    verdict = check(proposal, nav=nav, pnl=pnl)
    if not verdict.accepted:
        return
    q, p = proposal["quantity"], proposal["price_estimate"]
    for value in (q, p, nav, pnl, proposal["confidence"]):
        assert isinstance(value, int | float) and not isinstance(value, bool)
        assert math.isfinite(value)
    assert q > 0 and p > 0 and nav > 0
    assert abs(q * p) / nav < 0.01
    assert pnl / nav > -0.02
    assert 0 <= proposal["confidence"] <= 1
    assert proposal["action"] == "adjust" and proposal["ticker"] == "AAPL"
    assert proposal["side"] in ("LONG", "SHORT")


@settings(max_examples=200, deadline=None)
@given(proposal=anything, nav=anything, pnl=anything)
def test_arbitrary_input_never_crashes_and_is_rejected(proposal, nav, pnl):
    assert not check(proposal, nav=nav, pnl=pnl).accepted
