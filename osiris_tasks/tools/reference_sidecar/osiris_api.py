"""The Osiris sidecar's own API, answered by the reference policy.

Endpoints (with or without a trailing slash)::

    GET  /health                      liveness; never authenticated, never faulted
    POST /generate                    {"prompt", "max_length", "model_id"} -> fenced JSON proposal
    POST /propose_trade_adjustments/  {"prompt": proposal JSON} -> transaction id + assessment
    POST /score/hermes/               {"proposal", "context"} -> {"score": 0..1}
    POST /speak                       {"text", "exaggeration", "transaction_id"} -> queued;
                                      acks on Redis `tts.acknowledged.<transaction_id>`

`max_length`, `exaggeration` and `context` are accepted and ignored: a rule has nothing to
truncate, voice or condition on. Each endpoint takes the server, the JSON body and the query
and returns the answer's JSON object; the server adds `served_by`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from osiris_tasks.errors import RequestRefused

from .policy import _assessment, _json_object, _render_output, _score, propose

if TYPE_CHECKING:
    from .server import _Server

__all__ = ["ENDPOINTS", "HEALTH", "HEALTH_PATH", "MODELS"]

MODELS = ("phi3", "hermes")
DEFAULT_MODEL = "phi3"
HEALTH_PATH = "/health"
HEALTH = {"status": "ok", "stand_in": True, "models": list(MODELS)}


def _text_field(data: Mapping[str, Any], key: str) -> str:
    value = data.get(key)
    if not isinstance(value, str):
        raise RequestRefused(f"{key!r} must be a string", status=400)
    return value


def _generate(server: _Server, data: dict, query: dict) -> dict[str, Any]:
    prompt = _text_field(data, "prompt")
    model_id = query.get("model_id", [None])[0] or data.get("model_id") or DEFAULT_MODEL
    if not isinstance(model_id, str):
        raise RequestRefused("'model_id' must be a string", status=400)
    return {"output": _render_output(propose(prompt)), "model_id": model_id}


def _propose_trade_adjustments(server: _Server, data: dict, query: dict) -> dict[str, Any]:
    prompt = _text_field(data, "prompt")
    proposal = _json_object(prompt)
    return {
        "transaction_id": "tx_" + hashlib.sha1(prompt.encode()).hexdigest()[:16],
        "phi3_proposal": proposal,
        "hermes_assessment": _assessment(proposal),
    }


def _score_hermes(server: _Server, data: dict, query: dict) -> dict[str, Any]:
    proposal = data.get("proposal")
    if isinstance(proposal, str):
        proposal = _json_object(proposal)
    return {"score": _score(proposal if isinstance(proposal, dict) else {})}


def _speak(server: _Server, data: dict, query: dict) -> dict[str, Any]:
    text = _text_field(data, "text")
    transaction_id = data.get("transaction_id")
    if isinstance(transaction_id, str) and transaction_id:
        server.schedule_ack(transaction_id)
    return {"status": "queued", "chars": len(text)}


ENDPOINTS = {
    "/generate": _generate,
    "/propose_trade_adjustments": _propose_trade_adjustments,
    "/score/hermes": _score_hermes,
    "/speak": _speak,
}
