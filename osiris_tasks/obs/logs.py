"""Logging set-up for every process: plain or JSON lines, with `run_id` as a field."""

from __future__ import annotations

import logging
import re
import sys

from pythonjsonlogger.json import JsonFormatter

__all__ = ["setup_logging"]

PLAIN_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(process)d] %(message)s"
JSON_FIELDS = "%(asctime)s %(levelname)s %(name)s %(process)d %(message)s %(run_id)s"
RUN_ID_RE = re.compile(r"run_id=(\S+)")


class RunIdFilter(logging.Filter):
    """Gives every record a `run_id`: from the running Celery task, else from the message."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "run_id", None) is None:
            record.run_id = _task_run_id() or _message_run_id(record)
        return True


def _task_run_id() -> str | None:
    from celery import current_task

    request = getattr(current_task, "request", None)
    kwargs = getattr(request, "kwargs", None) or {}
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
