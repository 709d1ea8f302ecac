"""A run's LLM budget, as a pure rule."""

from __future__ import annotations

import pytest

from osiris_tasks.domain.budget import LLMBudget, tokens_spent
from osiris_tasks.errors import LLMBudgetExceeded

CALLS = [
    {"prompt_tokens": 100, "completion_tokens": 20},
    {"prompt_tokens": None, "completion_tokens": None},  # the sidecar's API reports none
]


def test_tokens_spent_counts_what_the_servers_reported():
    assert tokens_spent({"llm_calls": CALLS}) == 120
    assert tokens_spent({}) == 0


def test_no_budget_never_refuses():
    LLMBudget().check({"llm_calls": CALLS, "created_at": 0.0}, now_s=1e9, node="n")


def test_the_budget_refuses_once_spent_or_late():
    state = {"run_id": "r", "llm_calls": CALLS, "created_at": 100.0}
    LLMBudget(max_tokens=121, deadline_s=10.0).check(state, now_s=110.0, node="n")
    with pytest.raises(LLMBudgetExceeded, match="120 tokens of its budget of 120") as info:
        LLMBudget(max_tokens=120).check(state, now_s=110.0, node="score_proposal")
    assert info.value.run_id == "r" and info.value.node == "score_proposal"
    with pytest.raises(LLMBudgetExceeded, match="past its LLM deadline of 5 s"):
        LLMBudget(deadline_s=5.0).check(state, now_s=110.0, node="n")
