"""A deterministic, rule-based stand-in for the LLM sidecar, speaking the sidecar's HTTP API.

The real sidecar serves Hermes-3 and Phi-3 on a GPU. This stand-in answers the same endpoints
with a fixed trading rule (`propose`) so the whole pipeline runs and is tested on a laptop. It is
not a model and never claims to be one: every JSON answer carries ``served_by`` saying so.

Layout, one concern per module:

- `policy.py`: the trading rule and the answers made from it (proposal, assessment, score);
  pure, no HTTP.
- `osiris_api.py`: the Osiris sidecar's API (`/health`, `/generate`,
  `/propose_trade_adjustments/`, `/score/hermes/`, `/speak`).
- `openai_api.py`: OpenAI's Chat Completions API (`/v1/chat/completions`, `/v1/models`) for the
  `openai` LLM backend.
- `faults.py`: `Faults` (latency, errors, garbage, wrong shapes, trickle, truncation) and how an
  injected reply is chosen; `POST /admin/faults` changes them at runtime.
- `replies.py`: the shape of every answer, with its `served_by` label.
- `server.py`: the HTTP server (routing, token, body limits, TTS acks on Redis), `make_server`
  and `serve_forever`, which `osiris sidecar` runs.
"""

from __future__ import annotations

from .faults import GARBAGE_BODY, Faults
from .policy import _render_output as _render_output  # benchmarks/rows.py renders proposals
from .policy import propose
from .replies import SERVED_BY
from .server import make_server, serve_forever

__all__ = ["GARBAGE_BODY", "SERVED_BY", "Faults", "make_server", "propose", "serve_forever"]
