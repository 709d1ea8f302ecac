"""The package's public surface: exactly the names below, each importable from the top."""

from __future__ import annotations

import inspect

import pytest

import osiris_tasks
from osiris_tasks import errors

PUBLIC = {
    "__version__",
    # configuration and the Celery app
    "Settings",
    "app",
    "configure",
    "QUEUES",
    # the workflow
    "NODE_NAMES",
    "NODES",
    "NodeSpec",
    "build_graph",
    "route_after_risk",
    "Topology",
    "RunState",
    "RunStatus",
    "run_status",
    "initial_state",
    "InProcessRunner",
    # the Celery canvas
    "topology",
    "build_canvas",
    "continuation",
    "submit_run",
    "submit_runs",
    # ticks, run ids and the risk gate
    "new_run_id",
    "parse_tick",
    "validate_tick",
    "RISK_GATE_CONFIG",
    "RiskLimits",
    "Verdict",
    "assess",
    # the parts a process is built of
    "Resources",
    "SidecarClient",
    "RunStore",
    "Bridge",
    "BridgeConfig",
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
    "MaintenanceProcessDied",
    "EventError",
    "JoinError",
    "LLMBudgetExceeded",
    "LLMCacheMiss",
    "BridgeError",
    "BookError",
    "RequestRefused",
}


def test_all_is_exactly_the_public_surface():
    assert len(osiris_tasks.__all__) == len(set(osiris_tasks.__all__))
    assert set(osiris_tasks.__all__) == PUBLIC


@pytest.mark.parametrize("name", sorted(PUBLIC))
def test_every_public_name_resolves(name: str):
    assert getattr(osiris_tasks, name) is not None


def test_every_error_is_public_and_rooted_at_osiris_error():
    defined = {
        name
        for name, obj in vars(errors).items()
        if inspect.isclass(obj) and issubclass(obj, Exception) and obj.__module__ == errors.__name__
    }
    assert defined == set(errors.__all__)
    assert defined <= PUBLIC
    for name in defined:
        assert issubclass(getattr(errors, name), errors.OsirisError)
        assert getattr(errors, name).__doc__, f"{name} has no docstring"
        assert name in errors.__doc__, f"{name} is not drawn in the error tree"


def test_the_celery_app_comes_with_every_node_task():
    names = {f"osiris.{node}" for node in osiris_tasks.NODE_NAMES} | {"osiris.speak"}
    assert names <= set(osiris_tasks.app.tasks)
