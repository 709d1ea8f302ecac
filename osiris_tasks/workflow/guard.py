"""What every node call gets, written once: timing, the staleness check, and failures turned
into recorded errors. Serves the in-process runner and the Celery tasks alike."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from osiris_tasks.errors import OsirisError
from osiris_tasks.workflow import nodes
from osiris_tasks.workflow.registry import spec

__all__ = ["NodeFn", "guarded", "is_stale"]

logger = logging.getLogger(__name__)

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
    if spec(name).staleness_checked and (state.get("expired") or is_stale(state, time.time())):
        if not state.get("expired"):
            logger.warning(
                "run_id=%s batch older than ttl_s=%s at %s: expired",
                run_id,
                state.get("ttl_s"),
                name,
            )
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
