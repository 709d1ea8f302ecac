"""Tracing with OpenTelemetry: off unless `OTEL_EXPORTER_OTLP_ENDPOINT` is set.

One run is one trace. The bridge opens `osiris.batch` around the submission of a run's canvas
(`canvas.submit_run`). opentelemetry-instrumentation-celery wraps every publish in a PRODUCER
span (`apply_async/osiris.<node>`) and puts its `traceparent` in the message headers; the
worker runs each task in a CONSUMER span (`run/osiris.<node>`) whose parent is that producer
span. What a task publishes while it runs — the chain's next task, the branch
`risk_management` submits as new tasks, the rest of the run after the evaluators' join
(published by the evaluator that completes it) — is published inside its span, so every task
of a run descends from the bridge's `osiris.batch`. Sidecar requests are CLIENT spans
(`sidecar POST /generate/`) and send their `traceparent` to the sidecar. Every span of a run
carries `osiris.run_id`; the span of a task that asked the LLM carries the call's usage
(`gen_ai.request.model`, `gen_ai.usage.input_tokens` / `output_tokens`, `osiris.llm.role`,
`osiris.llm.backend`, `osiris.llm.cached`, `osiris.llm.latency_ms`).

A process sets tracing up once, at start (`setup`): the bridge in `osiris bridge`; a worker
wherever its tasks run (`setup_worker`) — in each prefork child at `worker_process_init`, in
the worker process itself at `worker_init` for the threads, solo, gevent and eventlet pools —
and flushes on the way out (`shutdown`). Spans go through a `BatchSpanProcessor`, tuned with
the standard `OTEL_BSP_*` variables; the exporter also honours `OTEL_EXPORTER_OTLP_HEADERS`,
`..._COMPRESSION` and `..._TIMEOUT`. Without the endpoint no provider, processor or exporter
is created and nothing is instrumented: the OpenTelemetry API stays its no-op proxy, and the
span helpers below return a shared null context without even calling it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.trace import SpanProcessor

from osiris_tasks.settings import Settings, redact_url

__all__ = [
    "BATCH_SPAN",
    "BRIDGE_SERVICE",
    "RUN_ID_ATTRIBUTE",
    "WORKER_SERVICE",
    "batch_span",
    "client_span",
    "enabled",
    "setup",
    "setup_worker",
    "shutdown",
    "tag_llm_call",
    "tag_run",
    "traces_endpoint",
]

logger = logging.getLogger(__name__)

RUN_ID_ATTRIBUTE = "osiris.run_id"
BATCH_SPAN = "osiris.batch"
# `service.name` of each process unless OTEL_SERVICE_NAME says otherwise.
BRIDGE_SERVICE = "osiris-bridge"
WORKER_SERVICE = "osiris-worker"
# OTLP/HTTP's path for traces, appended to OTEL_EXPORTER_OTLP_ENDPOINT as the spec says.
TRACES_PATH = "/v1/traces"
PREFORK_POOL = "celery.concurrency.prefork"

# A proxy until `setup` installs a provider.
_tracer = trace.get_tracer(__name__)
# What the span helpers return while tracing is off: cheaper than the API's no-op spans.
_OFF = nullcontext(trace.INVALID_SPAN)
_provider: Any = None  # this process's TracerProvider, once set up (inherited across fork)


def traces_endpoint(endpoint: str) -> str:
    """Where OTLP/HTTP traces go for `endpoint`: `http://` added if no scheme, `/v1/traces`."""
    url = endpoint.strip() if "://" in endpoint else f"http://{endpoint.strip()}"
    return url.rstrip("/") + TRACES_PATH


def enabled() -> bool:
    """True once `setup` has turned tracing on in this process."""
    return _provider is not None


def setup(settings: Settings, default_service: str) -> bool:
    """Export this process's spans over OTLP/HTTP and instrument Celery; True if tracing is on.

    Does nothing without `settings.otlp_endpoint`, and nothing the second time in a process.
    Call it at process start, from one thread.
    """
    global _provider
    if settings.otlp_endpoint is None:
        return False
    if _provider is not None:
        return True
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.instrumentation.celery import CeleryInstrumentor
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    from osiris_tasks import __version__

    service = settings.otel_service_name or default_service
    resource = Resource.create(
        {"service.name": service, "service.version": __version__, "process.pid": os.getpid()}
    )
    provider = TracerProvider(resource=resource)
    endpoint = traces_endpoint(settings.otlp_endpoint)
    provider.add_span_processor(_RunIdProcessor())
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    trace.set_tracer_provider(provider)
    CeleryInstrumentor().instrument(tracer_provider=provider)
    _provider = provider
    logger.info("tracing on: %s exports spans to %s", service, endpoint)
    return True


def setup_worker(worker: Any, settings: Settings) -> bool:
    """At `worker_init`: set tracing up here unless the pool forks children that run the tasks.

    Prefork children set up their own at `worker_process_init`, after the fork, as the
    instrumentation asks (the exporter runs a thread); here the SDK is only imported, so each
    child forks with it loaded.
    """
    if not _is_prefork(worker):
        return setup(settings, WORKER_SERVICE)
    if settings.otlp_endpoint is not None:
        import opentelemetry.exporter.otlp.proto.http.trace_exporter  # noqa: F401
        import opentelemetry.instrumentation.celery  # noqa: F401
        import opentelemetry.sdk.trace.export  # noqa: F401
    return False


def shutdown() -> None:
    """Export the spans still buffered and stop exporting; a no-op when tracing is off."""
    if _provider is not None:
        _provider.shutdown()


def batch_span(run_id: str, tick_count: int) -> AbstractContextManager[trace.Span]:
    """The root span of a run, around its submission."""
    if _provider is None:
        return _OFF
    return _tracer.start_as_current_span(
        BATCH_SPAN, attributes={RUN_ID_ATTRIBUTE: run_id, "osiris.tick_count": tick_count}
    )


def client_span(
    name: str, run_id: str | None, *, method: str, url: str
) -> AbstractContextManager[trace.Span]:
    """A CLIENT span for one HTTP request (the caller sends its `traceparent`)."""
    if _provider is None:
        return _OFF
    attributes = {"http.request.method": method, "url.full": redact_url(url)}
    if run_id is not None:
        attributes[RUN_ID_ATTRIBUTE] = run_id
    return _tracer.start_as_current_span(name, kind=trace.SpanKind.CLIENT, attributes=attributes)


def tag_run(run_id: str) -> None:
    """Put `osiris.run_id` on the current span (a task's)."""
    if _provider is not None:
        trace.get_current_span().set_attribute(RUN_ID_ATTRIBUTE, run_id)


def tag_llm_call(call: Mapping[str, Any]) -> None:
    """Put one LLM call's usage on the current span (the task of the node that made it), with
    OpenTelemetry's GenAI names where they exist."""
    if _provider is None:
        return
    attributes = {
        "gen_ai.operation.name": "chat",
        "gen_ai.request.model": call["model"],
        "gen_ai.usage.input_tokens": call.get("prompt_tokens"),
        "gen_ai.usage.output_tokens": call.get("completion_tokens"),
        "osiris.llm.role": call["role"],
        "osiris.llm.backend": call["backend"],
        "osiris.llm.cached": call.get("cached", False),
        "osiris.llm.latency_ms": call.get("latency_ms"),
    }
    trace.get_current_span().set_attributes(
        {key: value for key, value in attributes.items() if value is not None}
    )


class _RunIdProcessor(SpanProcessor):
    """Gives a span its local parent's `osiris.run_id`: the publishes of a run's tasks (which
    the Celery instrumentation starts) and anything else started inside a run's span."""

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        parent = trace.get_current_span(parent_context)
        run_id = (getattr(parent, "attributes", None) or {}).get(RUN_ID_ATTRIBUTE)
        if run_id is not None:
            span.set_attribute(RUN_ID_ATTRIBUTE, run_id)


def _is_prefork(worker: Any) -> bool:
    """True if `worker` (the WorkController at `worker_init`) runs tasks in forked children."""
    from celery.concurrency import ALIASES

    pool = getattr(worker, "pool_cls", None)
    name = ALIASES.get(pool, pool) if isinstance(pool, str) else getattr(pool, "__module__", "")
    return name.startswith(PREFORK_POOL)
