"""osiris_tasks: market ticks in, audited and risk-checked LLM trade proposals out.

`celery -A osiris_tasks worker` finds the Celery app here as `app`.
"""

from .canvas import build_canvas, continuation, submit_run, topology
from .celery_app import QUEUES, app, configure
from .errors import (
    BridgeError,
    ConfigError,
    EventError,
    OsirisError,
    ProposalInvalid,
    SidecarError,
    SidecarResponseError,
    SidecarStatusError,
    SidecarTimeout,
    SidecarUnavailable,
    StoreError,
    TickRejected,
)
from .graph import NODE_NAMES, Topology, build_graph, route_after_risk
from .ids import new_run_id
from .resources import Resources
from .risk import RISK_GATE_CONFIG, RiskLimits, Verdict, assess
from .runner import InProcessRunner, initial_state
from .settings import Settings
from .state import RunState, RunStatus, run_status
from .ticks import parse_tick, validate_tick

from . import tasks as _tasks  # noqa: E402,F401,I001  registers the osiris.* tasks on `app`

__version__ = "0.1.0"

__all__ = [
    # configuration and the Celery app
    "Settings",
    "app",
    "configure",
    "QUEUES",
    # the workflow
    "NODE_NAMES",
    "build_graph",
    "route_after_risk",
    "Topology",
    "RunState",
    "RunStatus",
    "run_status",
    "initial_state",
    "InProcessRunner",
    "Resources",
    # the Celery canvas
    "topology",
    "build_canvas",
    "continuation",
    "submit_run",
    "new_run_id",
    # ticks and the risk gate
    "parse_tick",
    "validate_tick",
    "RISK_GATE_CONFIG",
    "RiskLimits",
    "Verdict",
    "assess",
    # errors
    "OsirisError",
    "ConfigError",
    "TickRejected",
    "ProposalInvalid",
    "SidecarError",
    "SidecarUnavailable",
    "SidecarTimeout",
    "SidecarStatusError",
    "SidecarResponseError",
    "StoreError",
    "EventError",
    "BridgeError",
]
