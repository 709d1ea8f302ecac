"""The risk gate: each rule, the inclusive limits, and no violating proposal ever accepted:
neither against the proposal and the book's NAV and P&L, nor against the positions it holds."""

from __future__ import annotations

import math
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from osiris_tasks.domain.risk import RISK_GATE_CONFIG, Holdings, RiskLimits, assess

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


def check(proposal, nav=NAV, pnl=0.0, symbols=("AAPL",), **kw):
    return assess(proposal, nav=nav, daily_pnl=pnl, symbols=symbols, **kw)


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


# -- the limits against the book's holdings ---------------------------------------------------

NEW_RULES = {
    "halted",
    "symbol_position_limit",
    "gross_exposure_limit",
    "order_rate_limit",
    "invalid_position",
}
HELD = ("AAPL", "MSFT", "GOOG")
NOT_FINITE = [math.nan, math.inf, -math.inf, None, True, "1", 10**400]


@pytest.mark.parametrize(
    ("side", "held", "others", "orders", "rule"),
    [
        ("LONG", 44.0, 0.0, 0, "within_limits"),  # 4.9 % after the fill
        ("LONG", 45.0, 0.0, 0, "symbol_position_limit"),  # exactly 5 % after: at the limit
        ("SHORT", -45.0, 0.0, 0, "symbol_position_limit"),  # short counts by its size
        ("SHORT", 54.0, 0.0, 0, "within_limits"),  # a reduction to under the limit
        ("SHORT", 60.0, 0.0, 0, "symbol_position_limit"),  # a reduction still over it
        ("LONG", 0.0, 994.0, 0, "within_limits"),  # 99.9 % gross after
        ("LONG", 0.0, 995.0, 0, "gross_exposure_limit"),  # exactly 100 %: at the limit
        ("LONG", 0.0, -995.0, 0, "gross_exposure_limit"),  # a short adds to the gross
        ("LONG", 0.0, 0.0, 29, "within_limits"),
        ("LONG", 0.0, 0.0, 30, "order_rate_limit"),  # the 31st order of the minute
    ],
)
def test_holdings_limits(side, held, others, orders, rule):
    holdings = Holdings({"AAPL": held, "MSFT": others}, {"AAPL": 100.0, "MSFT": 100.0}, orders)
    assert check({**GOOD, "side": side}, holdings=holdings).rule == rule


finite_holdings = st.builds(
    Holdings,
    positions=st.dictionaries(st.sampled_from(HELD), st.floats(-60, 60), max_size=3),
    prices=st.dictionaries(st.sampled_from(HELD), st.floats(0.01, 200), max_size=3),
    orders_last_minute=st.integers(0, 30),
)
any_limits = st.builds(
    RiskLimits,
    max_position_size_pct=st.floats(0.001, 0.1),
    max_daily_loss_pct=st.floats(0.001, 0.1),
    max_symbol_position_pct=st.floats(0.001, 0.5),
    max_gross_exposure_pct=st.floats(0.01, 0.6),
    max_orders_per_minute=st.integers(1, 60),
)
orders = st.fixed_dictionaries(
    {
        "ticker": st.just("AAPL"),
        "action": st.just("adjust"),
        "side": st.sampled_from(["LONG", "SHORT"]),
        "quantity": st.floats(0.01, 20),
        "price_estimate": st.floats(1, 200),
        "confidence": st.just(0.5),
    }
)


def first_broken_limit(proposal, nav, limits, holdings):
    """The rule that must reject `proposal` against `holdings` (its shape and the book's P&L
    being valid), or `within_limits`: each limit computed from the positions after the fill."""
    q, p = proposal["quantity"], proposal["price_estimate"]
    after = holdings.positions.get("AAPL", 0.0) + (q if proposal["side"] == "LONG" else -q)
    others = [(q_s, holdings.prices.get(s)) for s, q_s in holdings.positions.items() if s != "AAPL"]
    priced = all(price is not None for _, price in others)
    gross = sum(abs(q_s * price) for q_s, price in others) if priced else math.inf
    limits_in_order = [
        ("position_size_limit", abs(q * p) / nav < limits.max_position_size_pct),
        ("symbol_position_limit", abs(after * p) / nav < limits.max_symbol_position_pct),
        ("invalid_position", priced),
        ("gross_exposure_limit", (gross + abs(after * p)) / nav < limits.max_gross_exposure_pct),
        ("order_rate_limit", holdings.orders_last_minute < limits.max_orders_per_minute),
    ]
    return next((rule for rule, within in limits_in_order if not within), "within_limits")


@settings(max_examples=400, deadline=None)
@given(
    proposal=orders,
    nav=st.floats(10_000, 200_000),
    limits=any_limits,
    holdings=finite_holdings,
)
def test_accepted_only_under_every_holdings_limit(proposal, nav, limits, holdings):
    verdict = check(proposal, nav=nav, limits=limits, holdings=holdings)
    assert verdict.rule == first_broken_limit(proposal, nav, limits, holdings)
    assert verdict.accepted == (verdict.rule == "within_limits")


@settings(max_examples=200, deadline=None)
@given(
    reason=st.text(max_size=20),
    proposal=st.one_of(st.just(GOOD), anything),
    nav=st.one_of(st.just(NAV), numbers),
    holdings=st.one_of(st.just(Holdings()), finite_holdings),
)
def test_halted_rejects_everything_first(reason, proposal, nav, holdings):
    verdict = check(proposal, nav=nav, holdings=holdings, halted=reason)
    assert not verdict.accepted and verdict.rule == "halted"


def test_halted_rejects_even_a_perfect_proposal():
    assert check(GOOD).accepted
    assert check(GOOD, halted="").rule == "halted"  # any reason, even none


bad_holdings = st.builds(
    Holdings,
    positions=st.dictionaries(
        st.sampled_from(HELD), st.one_of(st.floats(-1, 1), st.sampled_from(NOT_FINITE)), max_size=3
    ),
    prices=st.dictionaries(
        st.sampled_from(HELD), st.one_of(st.floats(1, 100), st.sampled_from(NOT_FINITE)), max_size=3
    ),
)


def readable(holdings):
    """Whether every position, and the price of every other symbol's position, is a finite
    float (a missing price is not; the order's own symbol is valued at its price_estimate)."""

    def finite(value):
        number = isinstance(value, int | float) and not isinstance(value, bool)
        return number and abs(value) <= sys.float_info.max

    return all(
        finite(q) and (s == "AAPL" or finite(holdings.prices.get(s)))
        for s, q in holdings.positions.items()
    )


@settings(max_examples=300, deadline=None)
@given(proposal=st.one_of(st.just(GOOD), orders), holdings=bad_holdings)
def test_holdings_that_are_not_finite_numbers_are_never_accepted(proposal, holdings):
    generous = RiskLimits(1.0, 0.02, max_symbol_position_pct=1.0, max_gross_exposure_pct=10.0)
    verdict = check(proposal, limits=generous, holdings=holdings)
    if readable(holdings):  # positions of at most 1 at 100: well inside the generous limits
        assert verdict.accepted
    else:
        assert not verdict.accepted and verdict.rule == "invalid_position"


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=5),
)


def accepted_by_the_original_rules(proposal, nav, pnl, limits):
    """The gate before it knew of holdings: shape, NAV and daily P&L, the order's notional."""
    values = [proposal[k] for k in ("quantity", "price_estimate", "confidence")] + [nav, pnl]
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        return False
    try:
        q, p, confidence, nav, pnl = (float(v) for v in values)
    except OverflowError:
        return False
    return (
        all(math.isfinite(v) for v in (q, p, confidence, nav, pnl))
        and proposal["action"] == "adjust"
        and proposal["ticker"] == "AAPL"
        and proposal["side"] in ("LONG", "SHORT")
        and 0 <= confidence <= 1
        and nav > 0
        and pnl / nav > -limits.max_daily_loss_pct
        and q > 0
        and p > 0
        and abs(q * p) / nav < limits.max_position_size_pct
    )


@settings(max_examples=400, deadline=None)
@given(
    proposal=st.builds(
        lambda order, changes: {**order, **changes},
        orders,
        st.one_of(st.just({}), st.dictionaries(st.sampled_from(list(GOOD)), scalars, max_size=3)),
    ),
    nav=st.one_of(st.floats(10_000, 200_000), st.sampled_from([0, -1.0, *NOT_FINITE])),
    pnl=st.one_of(st.floats(-2_000, 5_000), st.sampled_from(NOT_FINITE)),
    size_pct=st.floats(0.001, 0.1),
    slack=st.tuples(st.floats(0, 1), st.floats(0, 1), st.integers(1, 40)),
    prices=st.dictionaries(st.sampled_from(HELD), st.sampled_from([1.0, *NOT_FINITE])),
)
def test_holding_nothing_leaves_the_original_rules(proposal, nav, pnl, size_pct, slack, prices):
    symbol_slack, gross_slack, max_orders = slack
    limits = RiskLimits(
        max_position_size_pct=size_pct,
        max_symbol_position_pct=size_pct + symbol_slack,  # never under the order's own limit
        max_gross_exposure_pct=size_pct + gross_slack,
        max_orders_per_minute=max_orders,
    )
    holdings = Holdings({}, prices, max_orders - 1)
    verdict = check(proposal, nav=nav, pnl=pnl, limits=limits, holdings=holdings)
    assert verdict.rule not in NEW_RULES
    assert verdict.accepted == accepted_by_the_original_rules(proposal, nav, pnl, limits)
    assert verdict == check(proposal, nav=nav, pnl=pnl, limits=limits)  # Holdings(): the same


@pytest.mark.parametrize("side", [[], {}, ["LONG"]])
def test_an_unhashable_side_is_rejected_not_raised(side):
    assert check({**GOOD, "side": side}).rule == "invalid_side"
