"""Tracing: off without an endpoint; with one, a run is one trace across real processes.

The integration tests run `osiris bridge` and a Celery worker as subprocesses on a real Redis,
the reference sidecar (recording each request's `traceparent`) and an OTLP/HTTP receiver on
loopback that decodes what the SDK exports, as a collector would.
"""

from __future__ import annotations

import gzip
import signal
import subprocess
import sys
import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import pytest
import redis
from conftest import REPO, settings_env, wait_for
from opentelemetry import trace
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from pipeline_helpers import ACCEPTED_BATCH, REJECTED_BATCH, EventListener

from osiris_tasks import NODE_NAMES
from osiris_tasks.obs import telemetry
from osiris_tasks.settings import Settings
from osiris_tasks.tools.reference_sidecar import make_server
from osiris_tasks.tools.sim import publish

CHANNEL = "market.ticks"
LLM_ROLES = {
    "generate_proposal": "proposal",
    "evaluate_proposal": "assessment",
    "score_proposal": "score",
}
BRIDGE_SERVICE = "osiris-bridge-under-test"  # set through OTEL_SERVICE_NAME
REJECTED_NODES = (
    "query_market",
    "generate_proposal",
    "risk_management",
    "publish_events",
    "record_run",
)
SIDECAR_CALLS = {
    "/generate/": "generate_proposal",
    "/propose_trade_adjustments/": "evaluate_proposal",
    "/score/hermes/": "score_proposal",
}


def test_tracing_is_off_without_an_endpoint():
    settings = Settings.from_env({})
    assert settings.otlp_endpoint is None
    assert telemetry.setup(settings, telemetry.BRIDGE_SERVICE) is False
    assert telemetry.setup_worker(SimpleNamespace(pool_cls="threads"), settings) is False
    assert not telemetry.enabled()
    assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)
    assert "opentelemetry.exporter.otlp.proto.http.trace_exporter" not in sys.modules
    from opentelemetry.instrumentation.celery import CeleryInstrumentor

    assert not CeleryInstrumentor().is_instrumented_by_opentelemetry
    with telemetry.batch_span("run_x", 10) as span:
        assert not span.is_recording()


def test_endpoint_and_service_name_come_from_the_standard_variables():
    settings = Settings.from_env(
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4318", "OTEL_SERVICE_NAME": "osiris-eu"}
    )
    assert (settings.otlp_endpoint, settings.otel_service_name) == ("collector:4318", "osiris-eu")
    assert telemetry.traces_endpoint("collector:4318") == "http://collector:4318/v1/traces"
    assert telemetry.traces_endpoint("https://otel.example/") == "https://otel.example/v1/traces"


class OtlpReceiver:
    """An OTLP/HTTP trace receiver on a free loopback port: every span it is sent, flattened."""

    def __init__(self) -> None:
        self.spans: list[dict] = []
        self.encodings: set[str] = set()
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _OtlpHandler)
        self._server.receiver = self
        self.endpoint = f"127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def add(self, request: ExportTraceServiceRequest, encoding: str) -> None:
        spans = [
            _flat(span, resource_spans.resource)
            for resource_spans in request.resource_spans
            for scope_spans in resource_spans.scope_spans
            for span in scope_spans.spans
        ]
        with self._lock:
            self.spans.extend(spans)
            self.encodings.add(encoding)

    def of_run(self, run_id: str) -> list[dict]:
        with self._lock:
            return [s for s in self.spans if s["attributes"].get("osiris.run_id") == run_id]

    def of_trace(self, trace_id: str) -> list[dict]:
        with self._lock:
            return [s for s in self.spans if s["trace_id"] == trace_id]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class _OtlpHandler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        encoding = self.headers.get("Content-Encoding", "identity")
        if encoding == "gzip":
            body = gzip.decompress(body)
        if self.path != "/v1/traces":
            self.send_error(404)
            return
        self.server.receiver.add(ExportTraceServiceRequest.FromString(body), encoding)
        reply = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, format, *args) -> None:
        pass


def _flat(span: Span, resource) -> dict:
    def values(attributes):
        return {a.key: getattr(a.value, a.value.WhichOneof("value")) for a in attributes}

    about = values(resource.attributes)
    return {
        "trace_id": span.trace_id.hex(),
        "span_id": span.span_id.hex(),
        "parent": span.parent_span_id.hex() or None,
        "name": span.name,
        "kind": span.kind,
        "attributes": values(span.attributes),
        "service": about["service.name"],
        "pid": about["process.pid"],
    }


@pytest.fixture
def otlp():
    receiver = OtlpReceiver()
    yield receiver
    receiver.close()


@pytest.fixture
def traced_sidecar():
    """The reference sidecar, keeping the `traceparent` of every POST it serves."""
    server = make_server("127.0.0.1", 0)
    server.traceparents = []

    class Recording(server.RequestHandlerClass):
        def do_POST(self) -> None:
            server.traceparents.append(self.headers.get("traceparent"))
            super().do_POST()

    server.RequestHandlerClass = Recording
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


@contextmanager
def bridge_process(settings: Settings, env_extra: dict[str, str]):
    """`python -m osiris_tasks.tools.cli bridge` until the block ends, then SIGTERM; yields a
    client."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "osiris_tasks.tools.cli", "bridge", "--ticks_per_proposal", "10"],
        cwd=REPO,
        env={**settings_env(settings), **env_extra},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    output: list[str] = []
    threading.Thread(target=lambda: output.extend(proc.stdout), daemon=True).start()
    client = redis.Redis.from_url(settings.redis_url)
    try:
        wait_for(
            lambda: client.pubsub_numsub(CHANNEL)[0][1] >= 1 or proc.poll() is not None,
            timeout_s=20,
        )
        assert proc.poll() is None, "".join(output)
        yield client
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0, "".join(output)
        client.close()


@pytest.mark.integration
@pytest.mark.parametrize("pool", ["prefork", "threads", "solo"])
def test_a_run_is_one_trace_from_the_bridge_to_the_last_task(
    pool, settings, worker_factory, otlp, traced_sidecar
):
    host, port = traced_sidecar.server_address[:2]
    settings = settings.with_(sidecar_url=f"http://{host}:{port}")
    # Each side its own spelling: no scheme (gzip) for the worker, a URL for the bridge.
    worker_env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": otlp.endpoint,
        "OTEL_BSP_SCHEDULE_DELAY": "200",
        "OTEL_EXPORTER_OTLP_COMPRESSION": "gzip",
    }
    bridge_env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://{otlp.endpoint}/",
        "OTEL_BSP_SCHEDULE_DELAY": "200",
        "OTEL_SERVICE_NAME": BRIDGE_SERVICE,
    }
    worker = worker_factory(settings, "--pool", pool, "--concurrency", "2", env_extra=worker_env)
    listener = EventListener(settings.redis_url, "advice.generated")
    try:
        with bridge_process(settings, bridge_env) as client:
            publish(
                client,
                CHANNEL,
                [*ACCEPTED_BATCH, *REJECTED_BATCH],
                rate_per_s=None,
                duration_s=None,
            )
            wait_for(lambda: len(listener.messages) == 2, timeout_s=30)
            runs = {m["status"]: m["run_id"] for _, m in listener.messages}
            for run_id in runs.values():
                wait_for(
                    lambda run_id=run_id: any(
                        s["name"] == "run/osiris.record_run" for s in otlp.of_run(run_id)
                    ),
                    timeout_s=15,
                )
    finally:
        listener.close()

    accepted = assert_one_trace(otlp, runs["success"], NODE_NAMES, traced_sidecar.traceparents)
    rejected = assert_one_trace(
        otlp, runs["success_risk_rejected"], REJECTED_NODES, traced_sidecar.traceparents
    )
    assert "gzip" in otlp.encodings and "identity" in otlp.encodings
    # Tracing was set up where the tasks ran: in the prefork children, else in the worker
    # itself (solo sends worker_init and worker_process_init there: set up once all the same).
    task_pids = {s["pid"] for s in accepted + rejected if s["service"] == "osiris-worker"}
    assert (worker.proc.pid in task_pids) is (pool != "prefork")
    assert not [
        line
        for line in worker.output
        if "already instrumented" in line or "Overriding of current TracerProvider" in line
    ]
    # "tracing on" lines, by pid. Only prefork children log one: worker_init comes before
    # Celery sets logging up, so the line a threads or solo worker logs there is dropped.
    started = [line.split("[")[1].split("]")[0] for line in worker.output if "tracing on:" in line]
    assert len(started) == len(set(started)) and (started or pool != "prefork")


def assert_one_trace(otlp: OtlpReceiver, run_id: str, nodes, traceparents) -> list[dict]:
    """The run's spans form one trace rooted at the bridge's batch span; returns them."""
    (trace_id,) = {s["trace_id"] for s in otlp.of_run(run_id)}
    spans = otlp.of_trace(trace_id)
    by_id = {s["span_id"]: s for s in spans}
    assert len(by_id) == len(spans)  # nothing exported twice
    (root,) = [s for s in spans if s["parent"] is None]
    assert (root["name"], root["service"]) == ("osiris.batch", BRIDGE_SERVICE)
    assert root["attributes"]["osiris.tick_count"] == 10
    for span in spans:
        assert span["attributes"].get("osiris.run_id") == run_id, span
        while span["parent"] is not None:  # every ancestor was exported, up to the root
            span = by_id[span["parent"]]
        assert span is root
    assert {s["service"] for s in spans} == {BRIDGE_SERVICE, "osiris-worker"}
    tasks = sorted(s["name"] for s in spans if s["kind"] == Span.SPAN_KIND_CONSUMER)
    assert tasks == sorted(f"run/osiris.{node}" for node in nodes)
    calls = [s for s in spans if s["kind"] == Span.SPAN_KIND_CLIENT]
    assert sorted(s["name"] for s in calls) == sorted(
        f"sidecar POST {path}" for path, node in SIDECAR_CALLS.items() if node in nodes
    )
    for call in calls:
        node = SIDECAR_CALLS[call["name"].split()[-1]]
        assert by_id[call["parent"]]["name"] == f"run/osiris.{node}"
        assert call["attributes"]["http.response.status_code"] == 200
        assert any(sent.startswith(f"00-{trace_id}-{call['span_id']}-") for sent in traceparents)
    # the task of each LLM node carries its call's usage
    for span in spans:
        role = LLM_ROLES.get(span["name"].removeprefix("run/osiris."))
        if span["kind"] == Span.SPAN_KIND_CONSUMER and role is not None:
            attributes = span["attributes"]
            assert attributes["osiris.llm.role"] == role
            assert attributes["osiris.llm.backend"] == "sidecar"
            assert attributes["osiris.llm.cached"] is False
            assert attributes["gen_ai.request.model"] in ("phi3", "hermes")
            assert attributes["osiris.llm.latency_ms"] >= 0
    return spans
