"""osiris_tasks: market ticks in, audited and risk-checked LLM trade proposals out.

`celery -A osiris_tasks worker` finds the Celery app here as `app` (with every `osiris.*` task
registered). Exports load lazily, so the light processes (bridge, simulator, reference sidecar)
do not pay for LanceDB and LangGraph imports they never use.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    # configuration and the Celery app
    "Settings": "settings",
    "app": "celery_app",
    "configure": "celery_app",
    "QUEUES": "celery_app",
    # the workflow
    "NODE_NAMES": "graph",
    "build_graph": "graph",
    "route_after_risk": "graph",
    "Topology": "graph",
    "RunState": "state",
    "RunStatus": "state",
    "run_status": "state",
    "initial_state": "state",
    "InProcessRunner": "runner",
    "Resources": "resources",
    # the Celery canvas
    "topology": "canvas",
    "build_canvas": "canvas",
    "continuation": "canvas",
    "submit_run": "canvas",
    "submit_runs": "canvas",
    "new_run_id": "ids",
    # ticks and the risk gate
    "parse_tick": "ticks",
    "validate_tick": "ticks",
    "RISK_GATE_CONFIG": "risk",
    "RiskLimits": "risk",
    "Verdict": "risk",
    "assess": "risk",
    # errors
    "OsirisError": "errors",
    "ConfigError": "errors",
    "TickRejected": "errors",
    "ProposalInvalid": "errors",
    "SidecarError": "errors",
    "SidecarUnavailable": "errors",
    "SidecarTimeout": "errors",
    "SidecarStatusError": "errors",
    "SidecarResponseError": "errors",
    "StoreError": "errors",
    "EventError": "errors",
    "BridgeError": "errors",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if name == "app":
        import_module(".tasks", __name__)  # the worker's app comes with its tasks registered
    return getattr(import_module(f".{module}", __name__), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
