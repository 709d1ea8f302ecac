"""The Celery application: queues, routes and reliability settings, derived from `Settings`.

The app is created unconfigured at import (nothing reads the environment then); it is
configured once, from `Settings.from_env()`, the first time its configuration is needed, unless
`configure()` was called first with explicit settings (tests, the demo).
"""

from __future__ import annotations

import logging
import ssl
from typing import Any
from urllib.parse import parse_qs, urlsplit

from celery import Celery
from celery.signals import setup_logging
from kombu import Exchange, Queue

from osiris_tasks.keys import DEFAULT_QUEUE, QUEUES, TTS_QUEUE
from osiris_tasks.obs.logs import setup_logging as configure_logging
from osiris_tasks.settings import Settings
from osiris_tasks.transport import broker, results
from osiris_tasks.transport.serialization import SERIALIZER, register_serializer
from osiris_tasks.workflow.registry import NODES

__all__ = [
    "QUEUES",
    "app",
    "celery_config",
    "configure",
    "drop_stale_bindings",
    "settings_of",
    "task_name",
]

# Chord parts' results live in the backend only until the join reads them.
RESULT_EXPIRES_S = 3600
# kombu scans for unacked messages of dead workers every interval*throttle seconds
# (default 10*10 s); scan every 10 s so redelivery follows the visibility timeout closely.
UNACKED_RESTORE_INTERVAL_S = 10
UNACKED_RESTORE_THROTTLE = 1

# Publishing a task (a chain's next step, the chord's join, a submission) retries this long
# through a broker outage (0 + 0.5 + 1 + 1.5 + 2 * 9 s = 21 s) instead of failing the task, whose
# run would then be lost; Celery's default gives up after ~0.6 s.
PUBLISH_RETRY_POLICY = {
    "max_retries": 12,
    "interval_start": 0,
    "interval_step": 0.5,
    "interval_max": 2.0,
}

register_serializer()


def task_name(node: str) -> str:
    """The Celery task name of a graph node."""
    return f"osiris.{node}"


app = Celery("osiris_tasks", include=["osiris_tasks.tasks.node_tasks"])


def _tls_options(url: str) -> dict[str, Any] | None:
    """For a rediss:// URL that does not say how to check the server's certificate: check it
    (as redis-py does); Celery's backend refuses such a URL and kombu would not check."""
    parts = urlsplit(url)
    if parts.scheme != "rediss" or "ssl_cert_reqs" in parse_qs(parts.query):
        return None
    return {"ssl_cert_reqs": ssl.CERT_REQUIRED}


def celery_config(settings: Settings) -> dict[str, Any]:
    """The Celery configuration for `settings`."""
    transport = {
        "visibility_timeout": settings.visibility_timeout_s,
        "unacked_restore_interval": UNACKED_RESTORE_INTERVAL_S,
        "unacked_restore_throttle": UNACKED_RESTORE_THROTTLE,
    }
    return {
        "broker_url": settings.broker_url,
        "broker_transport": broker.transport_for(settings.broker_url),
        "result_backend": results.backend_url(settings.result_backend),
        "broker_transport_options": transport,
        "result_backend_transport_options": {"visibility_timeout": settings.visibility_timeout_s},
        "broker_connection_retry_on_startup": True,
        "broker_use_ssl": _tls_options(settings.broker_url),
        "redis_backend_use_ssl": _tls_options(settings.result_backend),
        "task_publish_retry_policy": PUBLISH_RETRY_POLICY,
        "task_serializer": SERIALIZER,  # JSON, written by orjson (serialization.py)
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        # Each queue on an exchange of its own, bound by its own name: a message's exchange and
        # routing key name one queue, also when kombu restores an unacknowledged message.
        "task_queues": [
            Queue(name, Exchange(name, type="direct"), routing_key=name) for name in QUEUES
        ],
        "task_default_queue": DEFAULT_QUEUE,
        "task_default_exchange": DEFAULT_QUEUE,
        "task_default_routing_key": DEFAULT_QUEUE,
        "task_routes": {
            **{
                task_name(node.name): {"queue": node.queue}
                for node in NODES
                if node.queue != DEFAULT_QUEUE
            },
            "osiris.speak": {"queue": TTS_QUEUE},
        },
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_ignore_result": True,
        "result_expires": RESULT_EXPIRES_S,
        "task_time_limit": settings.task_time_limit_s,
        "task_soft_time_limit": settings.task_time_limit_s - 5,
        "worker_send_task_events": settings.task_events,
        "task_send_sent_event": settings.task_events,
    }


def configure(celery: Celery, settings: Settings) -> Celery:
    """Configure `celery` from `settings` (and remember them for the tasks' resources)."""
    celery.osiris_settings = settings
    celery.conf.update(celery_config(settings))
    # An app used before keeps its broker and backend pools: drop them for the new settings.
    celery._pool = None
    celery.amqp._producer_pool = None
    celery._backend_cache = None
    celery._local.backend = None
    return celery


def drop_stale_bindings(client: Any) -> int:
    """Remove the bindings of the layout before per-queue exchanges (every queue bound to
    `osiris.default`'s exchange and routing key, so a restored message went to all three) from
    the broker's Redis (`client`); how many. Workers call it at start."""
    sep = "\x06\x16"  # kombu's Redis binding separator: routing key, pattern, queue
    stale = [sep.join([DEFAULT_QUEUE, "", queue]) for queue in QUEUES if queue != DEFAULT_QUEUE]
    removed = 0
    for table in ("_kombu.binding.", "_kombu.binding_permanent."):
        removed += client.srem(table + DEFAULT_QUEUE, *stale)
    return removed


def settings_of(celery: Celery) -> Settings:
    """The settings `celery` was configured with (from the environment if never configured)."""
    settings = getattr(celery, "osiris_settings", None)
    if settings is None:
        settings = celery.osiris_settings = Settings.from_env()
    return settings


@app.on_configure.connect
def _configure_from_env(sender: Celery, **_: Any) -> None:
    if getattr(sender, "osiris_settings", None) is None:
        # Not `conf.update`: the configuration is being loaded; hand it over as its source.
        sender.config_from_object(celery_config(settings_of(sender)))


@setup_logging.connect
def _setup_logging(loglevel: Any = None, **_: Any) -> None:
    # Connected, so Celery leaves the root logger to us: same format as the bridge and CLI.
    level = loglevel if isinstance(loglevel, str) else logging.getLevelName(loglevel or 20)
    configure_logging(level, json_logs=settings_of(app).json_logs)
