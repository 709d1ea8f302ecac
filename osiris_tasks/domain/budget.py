"""A run's LLM budget: how many tokens its LLM calls may spend and how long after the batch was
formed they may still be made. A run over budget asks no more; the node that would have asked
records `LLMBudgetExceeded` (fail closed: before the gate that is a rejection)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from osiris_tasks.errors import LLMBudgetExceeded

__all__ = ["LLMBudget", "tokens_spent"]


def tokens_spent(state: Mapping[str, Any]) -> int:
    """Prompt and completion tokens of the run's LLM calls so far (unreported counts as 0)."""
    return sum(
        (call.get("prompt_tokens") or 0) + (call.get("completion_tokens") or 0)
        for call in state.get("llm_calls") or ()
    )


@dataclass(frozen=True)
class LLMBudget:
    """The budget of one run; None is no limit."""

    max_tokens: int | None = None
    deadline_s: float | None = None

    def check(self, state: Mapping[str, Any], *, now_s: float, node: str) -> None:
        """Raise `LLMBudgetExceeded` if the run may not ask the LLM again."""
        spent = tokens_spent(state)
        if self.max_tokens is not None and spent >= self.max_tokens:
            raise LLMBudgetExceeded(
                f"the run's LLM calls spent {spent} tokens of its budget of {self.max_tokens} "
                "(OSIRIS_LLM_MAX_TOKENS_PER_RUN): not asked",
                run_id=state.get("run_id"),
                node=node,
            )
        created_at = state.get("created_at")
        if self.deadline_s is not None and created_at is not None:
            age_s = now_s - created_at
            if age_s > self.deadline_s:
                raise LLMBudgetExceeded(
                    f"the run is {age_s:.1f} s old, past its LLM deadline of "
                    f"{self.deadline_s:g} s (OSIRIS_LLM_DEADLINE_S): not asked",
                    run_id=state.get("run_id"),
                    node=node,
                )
