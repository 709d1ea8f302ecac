"""What every node gets, written once: dependencies bound, staleness, timing, error capture.

`bind_nodes` gives the node functions the in-process runner and the Celery tasks both call.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

from . import nodes
from .errors import OsirisError
from .graph import NODE_NAMES
from .resources import Resources

__all__ = ["bind_nodes", "guarded", "is_stale", "node_function"]

logger = logging.getLogger(__name__)

# Nodes whose work is worthless on stale data: they are skipped once a batch is past its TTL.
STALENESS_CHECKED = frozenset(
    {"query_market", "generate_proposal", "evaluate_proposal", "score_proposal"}
)

NodeFn = Callable[[Mapping[str, Any]], dict[str, Any]]


def is_stale(state: Mapping[str, Any], now_s: float) -> bool:
    """True if the batch is older than its `ttl_s`."""
    ttl_s, created_at = state.get("ttl_s"), state.get("created_at")
    return bool(ttl_s) and created_at is not None and now_s - created_at > ttl_s


def guarded(name: str, fn: NodeFn, *, reraise: tuple[type[BaseException], ...] = ()) -> NodeFn:
    """`fn` timed, skipped when stale, and with its failures returned as recorded errors."""

    def node(state: Mapping[str, Any]) -> dict[str, Any]:
        started = time.perf_counter()
        update = dict(_run(name, fn, state, reraise))
        update["timings_ms"] = {name: round((time.perf_counter() - started) * 1000, 3)}
        return update

    node.__name__ = name
    return node


def _run(name: str, fn: NodeFn, state: Mapping[str, Any], reraise) -> Mapping[str, Any]:
    run_id = state.get("run_id")
    if name in STALENESS_CHECKED and (state.get("expired") or is_stale(state, time.time())):
        if not state.get("expired"):
            logger.warning("run_id=%s batch older than ttl_s=%s at %s: expired", run_id,
                           state.get("ttl_s"), name)
        return {"expired": True}
    try:
        return fn(state) or {}
    except reraise:
        raise
    except OsirisError as exc:
        logger.warning("run_id=%s node=%s failed: %s", run_id, name, exc)
        return {"errors": [nodes.error_entry(name, exc)]}
    except Exception as exc:  # a bug must not lose the run: record it, with its traceback
        logger.exception("run_id=%s node=%s crashed", run_id, name)
        return {"errors": [nodes.error_entry(name, exc)]}


def node_function(res: Resources, name: str, *, speak=None, final: bool = True,
                  by_reference: bool = False) -> NodeFn:
    """Node `name` with this process's dependencies bound (not yet guarded). Binds only what
    that node uses: a sidecar node never builds the run store (and never imports lancedb).
    With `by_reference` (the Celery path), a large batch's ticks leave the state for Redis."""
    s = res.settings
    if name == "query_market":
        return partial(nodes.query_market, default_symbol=s.default_symbol,
                       stash=res.stash if by_reference else None)
    if name == "generate_proposal":
        return partial(nodes.generate_proposal, sidecar=res.sidecar, portfolio=res.portfolio,
                       limits=res.limits, max_length=s.max_length)
    if name == "risk_management":
        return partial(nodes.risk_management, store=res.store, portfolio=res.portfolio,
                       limits=res.limits)
    if name == "evaluate_proposal":
        return partial(nodes.evaluate_proposal, sidecar=res.sidecar, max_length=s.max_length)
    if name == "score_proposal":
        return partial(nodes.score_proposal, sidecar=res.sidecar)
    if name == "publish_events":
        return partial(nodes.publish_events, bus=res.bus, speak=speak)
    if name == "record_run":
        return partial(nodes.record_run, store=res.store, deadletter=res.deadletter,
                       stash=res.stash, final=final)
    raise KeyError(name)


def bind_nodes(
    res: Resources, *, speak=None, final: bool = True,
    reraise: tuple[type[BaseException], ...] = (),
) -> dict[str, NodeFn]:
    """Every node of the graph, bound to `res` and guarded."""
    return {name: guarded(name, node_function(res, name, speak=speak, final=final),
                          reraise=reraise)
            for name in NODE_NAMES}
