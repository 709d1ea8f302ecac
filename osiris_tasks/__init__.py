"""osiris_tasks: market ticks in, audited and risk-checked LLM trade proposals out.

`celery -A osiris_tasks worker` finds the Celery app here as `app` (with every `osiris.*` task
registered). Exports load lazily, so the light processes (bridge, simulator, reference sidecar)
do not pay for LanceDB and LangGraph imports they never use.

The public surface is `__all__`, grouped below: the settings and the Celery app, the workflow
and its canvas, the domain rules, the parts a process is built of (`Resources`, the sidecar
client, the run store, the bridge) and every error. The subpackages' other names are internal
and may move; `tests/test_public_api.py` pins this list.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    # configuration and the Celery app
    "Settings": "settings",
    "app": "tasks.celery_app",
    "configure": "tasks.celery_app",
    "QUEUES": "keys",
    # the workflow
    "NODE_NAMES": "workflow.registry",
    "NODES": "workflow.registry",
    "NodeSpec": "workflow.registry",
    "build_graph": "workflow.graph",
    "route_after_risk": "workflow.graph",
    "Topology": "workflow.graph",
    "RunState": "workflow.state",
    "RunStatus": "workflow.state",
    "run_status": "workflow.state",
    "initial_state": "workflow.state",
    "InProcessRunner": "workflow.runner",
    # the Celery canvas
    "topology": "tasks.canvas",
    "build_canvas": "tasks.canvas",
    "continuation": "tasks.canvas",
    "submit_run": "tasks.canvas",
    "submit_runs": "tasks.canvas",
    # ticks, run ids and the risk gate
    "new_run_id": "domain.ids",
    "parse_tick": "domain.ticks",
    "validate_tick": "domain.ticks",
    "RISK_GATE_CONFIG": "domain.risk",
    "RiskLimits": "domain.risk",
    "Verdict": "domain.risk",
    "assess": "domain.risk",
    # the parts a process is built of
    "Resources": "adapters.resources",
    "SidecarClient": "adapters.sidecar",
    "RunStore": "store.runstore",
    "Bridge": "bridge.service",
    "BridgeConfig": "bridge.config",
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
    "MaintenanceProcessDied": "errors",
    "EventError": "errors",
    "JoinError": "errors",
    "LLMBudgetExceeded": "errors",
    "LLMCacheMiss": "errors",
    "BookError": "errors",
    "BridgeError": "errors",
    "RequestRefused": "errors",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if name == "app":
        # The worker's app comes with its tasks registered.
        import_module(".tasks.node_tasks", __name__)
    return getattr(import_module(f".{module}", __name__), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
