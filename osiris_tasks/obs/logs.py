"""Logging set-up for every process: plain or JSON lines, with `run_id` as a field and, inside a
Celery task, `task_id` and `task_name`."""

from __future__ import annotations

import logging
import re
import sys

from pythonjsonlogger.json import JsonFormatter

__all__ = ["setup_logging"]

PLAIN_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(process)d] %(message)s"
# `task_id` and `task_name` are not listed: a record carries them only inside a task, and the
# JSON formatter writes every such extra attribute as a field.
JSON_FIELDS = "%(asctime)s %(levelname)s %(name)s %(process)d %(message)s %(run_id)s"
RUN_ID_RE = re.compile(r"run_id=(\S+)")


class RunIdFilter(logging.Filter):
    """Gives every record a `run_id` (from the running Celery task, else from the message) and,
    inside a Celery task, that task's `task_id` and `task_name`."""

    def filter(self, record: logging.LogRecord) -> bool:
        task = _current_task()
        if task is not None:
            record.task_id = getattr(task.request, "id", None)
            record.task_name = task.name
        if getattr(record, "run_id", None) is None:
            record.run_id = _task_run_id(task) or _message_run_id(record)
        return True


def _current_task():
    """The Celery task this thread runs, if any (as `celery.app.log.TaskFormatter` finds it).
    A process that never imported Celery runs none: it is not imported for the question."""
    state = sys.modules.get("celery._state")
    return None if state is None else state.get_current_task()


def _task_run_id(task) -> str | None:
    kwargs = getattr(getattr(task, "request", None), "kwargs", None) or {}
    return kwargs.get("run_id") if isinstance(kwargs, dict) else None


def _message_run_id(record: logging.LogRecord) -> str | None:
    match = RUN_ID_RE.search(record.getMessage())
    return match.group(1) if match and match.group(1) != "None" else None


def setup_logging(level: str = "INFO", *, json_logs: bool = False) -> None:
    """Configure the root logger once for this process."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RunIdFilter())
    handler.setFormatter(
        JsonFormatter(JSON_FIELDS) if json_logs else logging.Formatter(PLAIN_FORMAT)
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("urllib3", "httpx", "lance", "lancedb"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
