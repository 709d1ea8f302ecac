"""The completion cache's key: the prompt's text is in it, so a new prompt format misses."""

from __future__ import annotations

from osiris_tasks.domain.completions import completion_key
from osiris_tasks.domain.proposal import build_prompt


def prompt() -> str:
    return build_prompt(
        "AAPL n=2 first=1.0000 last=2.0000",
        ["AAPL"],
        nav=1e5,
        daily_pnl=0.0,
        max_position_size_pct=0.01,
        max_daily_loss_pct=0.02,
    )


def keys(text: str) -> tuple[str, str]:
    """The proposal call's key for `text` on each backend (the sidecar API's payload, the
    Chat Completions messages)."""
    sidecar = {"path": "/generate/", "payload": {"prompt": text, "max_length": 256}}
    chat = {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": text}]}
    return (
        completion_key("sidecar", "phi3", "proposal", sidecar),
        completion_key("openai", "phi3", "proposal", chat),
    )


def test_the_same_prompt_has_the_same_key_and_the_old_bare_format_another():
    quoted = prompt()
    old_format = quoted.replace('"AAPL"', "AAPL")  # the symbols bare, as before they were quoted
    assert keys(quoted) == keys(prompt())
    assert not set(keys(quoted)) & set(keys(old_format))
