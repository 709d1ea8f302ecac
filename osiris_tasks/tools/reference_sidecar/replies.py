"""What every answer of the reference sidecar is: a status, a body and its headers, and on
every JSON body the `served_by` label saying a rule-based stand-in answered, not a model."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

__all__ = ["SERVED_BY"]

SERVED_BY = "osiris reference sidecar (deterministic rule-based stand-in, not a model)"
JSON_TYPE = "application/json"


@dataclass
class _Reply:
    status: int
    body: bytes
    content_type: str = JSON_TYPE
    headers: dict[str, str] = field(default_factory=dict)
    trickle_ms: float = 0.0


def _json_reply(status: int, payload: Mapping[str, Any], **kwargs: Any) -> _Reply:
    return _Reply(status, orjson.dumps({**payload, "served_by": SERVED_BY}), **kwargs)


def _error(status: int, message: str, **kwargs: Any) -> _Reply:
    return _json_reply(status, {"error": message, "status": status}, **kwargs)
