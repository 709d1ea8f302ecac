"""OpenAI's Chat Completions API, answered by the same reference policy, for the `openai` LLM
backend (`osiris_tasks.adapters.llm`).

Endpoints (with or without a trailing slash)::

    POST /v1/chat/completions  {"model", "messages", "response_format"} -> one choice + usage
    GET  /v1/models            the models of /health; never authenticated, never faulted

The role (proposal, assessment, score) comes from the system message's `osiris-role:` line;
a `response_format` of any type but `text` gets the policy's JSON alone, no `response_format`
(or `text`) gets it as prose around a fenced JSON block.
`usage` counts whitespace-separated words as tokens. The faults `truncate_rate` (answers cut
short, `finish_reason: "length"`) and `refuse_json_schema` (HTTP 500, as llama.cpp's server
answers) apply here only.
"""

from __future__ import annotations

import hashlib
import re
from typing import TYPE_CHECKING, Any

import orjson

from osiris_tasks.errors import RequestRefused

from .osiris_api import MODELS
from .policy import _assessment, _json_object, _render_output, _score, propose

if TYPE_CHECKING:
    from .server import _Server

__all__ = ["ENDPOINTS", "READ_ONLY"]


def _chat_completions(server: _Server, data: dict, query: dict) -> dict[str, Any]:
    """OpenAI's Chat Completions, answered by the same deterministic policy: the role from the
    system message's `osiris-role:` line, the JSON alone when `response_format` asks for it."""
    model = data.get("model")
    messages = data.get("messages")
    if not isinstance(model, str) or not isinstance(messages, list) or not messages:
        raise RequestRefused(
            "'model' (string) and 'messages' (non-empty list) are required", status=400
        )
    format_type = (data.get("response_format") or {}).get("type", "text")
    if format_type == "json_schema" and server.faults.refuse_json_schema:
        raise RequestRefused(
            "response_format: json_schema is not supported (stand-in fault)", status=500
        )
    texts = [m.get("content") for m in messages if isinstance(m, dict)]
    role = _chat_role(str(texts[0]))
    content = _chat_answer(role, str(texts[-1]), structured=format_type != "text")
    finish = "stop"
    if server.draw() < server.faults.truncate_rate:
        content, finish = content[: len(content) // 2], "length"
    prompt_tokens = sum(len(str(t).split()) for t in texts)
    completion_tokens = len(content.split())
    return {
        "id": "chatcmpl-" + hashlib.sha1(orjson.dumps(data)).hexdigest()[:16],
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": [
            {
                "index": 0,
                "finish_reason": finish,
                "message": {"role": "assistant", "content": content},
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


def _chat_role(system: str) -> str:
    match = re.search(r"osiris-role: (\w+)", system)
    return match.group(1) if match else "proposal"


def _chat_answer(role: str, prompt: str, *, structured: bool) -> str:
    """The policy's answer for `role`: the JSON alone when `structured`, else as prose."""
    if role == "assessment":
        answer = {"assessment": _assessment(_json_object(prompt))}
    elif role == "score":
        proposal = _json_object(prompt.removeprefix("PROPOSAL ").split("\n", 1)[0])
        answer = {"score": _score(proposal or {})}
    else:
        answer = propose(prompt)
    if structured:
        return orjson.dumps(answer).decode()
    return _render_output(answer)


def _models() -> dict[str, Any]:
    return {
        "object": "list",
        "data": [{"id": m, "object": "model", "owned_by": "osiris-reference"} for m in MODELS],
    }


ENDPOINTS = {"/v1/chat/completions": _chat_completions}
# GET endpoints (no faults, no token).
READ_ONLY = {"/v1/models": _models}
