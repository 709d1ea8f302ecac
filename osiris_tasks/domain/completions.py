"""What makes two LLM requests the same request: the completion cache's key.

A completion is keyed by the backend, the model, the node's role and the request itself (the
messages or prompt, the sampling parameters, the structured-output schema): everything that
decides what a model may answer, and nothing that does not (the run_id, the server's URL, the
time). A backtest that asks what a live run asked finds what the model answered it.

The prompt's text is part of the request, so a change to the prompt's format (symbols quoted as
data, a reworded instruction) changes the key by itself: a completion cached for the old text is
never served for the new one. No format version is in the key: it would add nothing for the
requests that changed and throw away the cached answers of those that did not (the evaluators').
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from typing import Any

import orjson

__all__ = ["completion_key", "completion_rows", "usage_of"]

KEY_PREFIX = "c_"


def completion_key(backend: str, model: str, role: str, request: Mapping[str, Any]) -> str:
    """A stable key for one LLM request: `c_` and the SHA-256 of its canonical JSON."""
    canonical = orjson.dumps(
        {"backend": backend, "model": model, "role": role, "request": request},
        option=orjson.OPT_SORT_KEYS,
    )
    return KEY_PREFIX + hashlib.sha256(canonical).hexdigest()


def usage_of(call: Mapping[str, Any]) -> dict[str, Any]:
    """An `llm_calls` entry as the run row keeps it: without the completion text and request
    (those go to the `completions` table)."""
    return {k: v for k, v in call.items() if k not in ("completion", "request")}


def completion_rows(
    run_id: str, calls: Iterable[Mapping[str, Any]], timestamp: str
) -> list[dict[str, Any]]:
    """The `completions` rows of a run's `llm_calls`: the calls the server answered whose text
    the cache is to keep (they carry `completion`)."""
    return [
        {
            "completion_key": call["key"],
            "run_id": run_id,
            "timestamp": timestamp,
            "backend": call["backend"],
            "model": call["model"],
            "role": call["role"],
            "request": orjson.dumps(call.get("request"), option=orjson.OPT_SORT_KEYS).decode(),
            "completion": call["completion"],
            "prompt_tokens": call.get("prompt_tokens"),
            "completion_tokens": call.get("completion_tokens"),
            "latency_ms": call.get("latency_ms"),
        }
        for call in calls
        if not call.get("cached") and call.get("completion") is not None and call.get("key")
    ]
