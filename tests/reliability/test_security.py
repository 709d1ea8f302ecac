"""Secrets and transport security: a password-protected Redis and a bearer-token sidecar end to
end through a worker, the same over TLS (`rediss://`), and what Celery makes of rediss URLs.

A secret must never show up in a worker's output, the test process's logs, a LanceDB row, a
Celery event (what Flower shows: argsrepr, kwargsrepr, results), a Redis value or an error text.
"""

from __future__ import annotations

import logging
import secrets
import shutil
import ssl
import subprocess
import threading

import lancedb
import orjson
import pytest
import redis
from celery import Celery
from conftest import wait_for
from pipeline_helpers import ACCEPTED_BATCH, REJECTED_BATCH, EventListener, ticks
from reliability_report import record

from osiris_tasks import InProcessRunner, Resources, Settings, app, configure, initial_state
from osiris_tasks.bridge.service import Bridge, BridgeConfig
from osiris_tasks.settings import redact_url
from osiris_tasks.store.runstore import RunStore
from osiris_tasks.tasks.canvas import submit_run
from osiris_tasks.tasks.celery_app import celery_config
from osiris_tasks.tools.embedded_redis import EmbeddedRedis, TlsFiles
from osiris_tasks.tools.reference_sidecar import make_server

MARKET = "market.ticks"


def secret(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(16)}"


@pytest.fixture(scope="module")
def token() -> str:
    return secret("tok")


@pytest.fixture(scope="module")
def token_sidecar(token):
    """A reference sidecar that answers only requests bearing `token`."""
    server = make_server("127.0.0.1", 0, token=token)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", server
    server.shutdown()
    server.server_close()


class CeleryEvents:
    """Every Celery event on the broker, collected in a thread: what Flower would show."""

    def __init__(self, celery: Celery):
        self.events: list[dict] = []
        self._conn = celery.connection_for_read()
        self._receiver = celery.events.Receiver(self._conn, handlers={"*": self.events.append})
        self._thread = threading.Thread(
            target=self._receiver.capture,
            daemon=True,
            kwargs={"limit": None, "timeout": None, "wakeup": False},
        )
        self._thread.start()

    def of(self, kind: str) -> list[dict]:
        return [e for e in list(self.events) if e.get("type") == kind]

    def close(self) -> None:
        self._receiver.should_stop = True
        self._thread.join(5)
        self._conn.release()


def redis_values(url: str) -> bytes:
    """Every key and value in the Redis at `url`, concatenated."""
    client = redis.Redis.from_url(url)
    readers = {
        b"string": client.get,
        b"list": lambda k: client.lrange(k, 0, -1),
        b"hash": client.hgetall,
        b"set": client.smembers,
        b"zset": lambda k: client.zrange(k, 0, -1),
    }
    dump = []
    for key in client.scan_iter():
        dump.append(key + repr(readers.get(client.type(key), lambda k: b"")(key)).encode())
    client.close()
    return b"\n".join(dump)


def lancedb_text(uri: str) -> str:
    """Every column of every row of every table at `uri`, as text."""
    db = lancedb.connect(uri)
    return "\n".join(
        repr(db.open_table(name).to_arrow().to_pylist()) for name in db.list_tables().tables
    )


def assert_nowhere(secrets_: tuple[str, ...], **places: str | bytes) -> None:
    for name, text in places.items():
        raw = text if isinstance(text, bytes) else text.encode()
        for value in secrets_:
            assert value.encode() not in raw, f"a secret leaked into {name}"


def run_through_worker(settings: Settings, worker_factory, token: str, caplog) -> dict:
    """One run via the bridge and one submitted directly, on a worker given the token; returns
    everything a secret could leak into (task events included: they are turned on)."""
    settings = settings.with_(task_events=True)
    configure(app, settings)
    events = CeleryEvents(app)
    worker = worker_factory(settings, env_extra={"OSIRIS_SIDECAR_TOKEN": token})
    submitted: list[str] = []

    def submit(state):
        submit_run(app, state)
        submitted.append(state["run_id"])

    bridge = Bridge(BridgeConfig(settings.redis_url, ticks_per_proposal=10), submit)
    thread = threading.Thread(target=bridge.run, daemon=True)
    thread.start()
    publisher = redis.Redis.from_url(settings.redis_url)
    listener = EventListener(settings.redis_url, "advice.generated")
    store = RunStore(settings.lancedb_uri)
    try:
        wait_for(lambda: publisher.pubsub_numsub(MARKET)[0][1] >= 1, timeout_s=10)
        for tick in ticks([c["close"] for c in ACCEPTED_BATCH], symbol="MSFT"):
            publisher.publish(MARKET, orjson.dumps(tick))
        direct = initial_state(REJECTED_BATCH)
        submit(direct)
        wait_for(lambda: len(submitted) == 2, timeout_s=10)
        rows = [wait_for(lambda r=r: store.get_run(r), timeout_s=60) for r in submitted]
        wait_for(
            lambda: {m["run_id"] for _, m in listener.messages} >= set(submitted), timeout_s=10
        )
        # 7 tasks for the accepted run, 5 for the rejected one
        wait_for(lambda: len(events.of("task-succeeded")) >= 12, timeout_s=10)
    finally:
        bridge.stop()
        thread.join(20)
        for closeable in (publisher, listener, store, events):
            closeable.close()
    assert sorted(r["status"] for r in rows) == ["success", "success_risk_rejected"]
    received = events.of("task-received")
    assert {e["kwargs"] for e in received} >= {repr({"run_id": r}) for r in submitted}
    worker.stop()
    return {
        "worker_output": "".join(worker.output),
        "test_logs": caplog.text,
        "lancedb": lancedb_text(settings.lancedb_uri),
        "redis": redis_values(settings.redis_url),
        "celery_events": orjson.dumps(events.events, default=str),
        "rows": repr(rows),
    }


@pytest.mark.integration
def test_password_redis_and_sidecar_token_end_to_end(
    token_sidecar, token, tmp_path, worker_factory, caplog
):
    caplog.set_level(logging.DEBUG, logger="osiris_tasks")
    password = secret("pw")
    sidecar_url, sidecar = token_sidecar
    with EmbeddedRedis(password=password) as url:
        settings = Settings.from_env(
            {},
            redis_url=url,
            broker_url=url,
            result_backend=url,
            sidecar_url=sidecar_url,
            lancedb_uri=str(tmp_path / "lancedb"),
            sidecar_retry_budget_s=5.0,
            visibility_timeout_s=60,
        )
        places = run_through_worker(settings, worker_factory, token, caplog)
        places["reprs"] = " ".join(
            map(
                repr,
                (
                    settings.with_(sidecar_token=token, llm_api_key=token),
                    BridgeConfig(redis_url=url),
                    Resources.from_settings(settings.with_(sidecar_token=token)),
                ),
            )
        )
    # The places were looked at: the URL is printed (masked) and the runs went through.
    assert "redis://:**@127.0.0.1" in places["worker_output"]
    assert sidecar.requests["/generate"] >= 2
    assert_nowhere((password, token), **places)
    record(
        "test_password_redis_and_sidecar_token_end_to_end",
        runs=2,
        places_checked=len(places),
        secrets_found=0,
    )


def test_no_secret_in_errors_when_the_token_is_wrong_or_redis_is_gone(
    token_sidecar, tmp_path, caplog
):
    caplog.set_level(logging.DEBUG)
    password, wrong = secret("pw"), secret("wrong")
    sidecar_url, _ = token_sidecar
    server = EmbeddedRedis(password=password)
    url = server.start()
    try:
        settings = Settings.from_env(
            {},
            redis_url=url,
            broker_url=url,
            result_backend=url,
            sidecar_url=sidecar_url,
            sidecar_token=wrong,
            lancedb_uri=str(tmp_path / "lancedb"),
            sidecar_retry_budget_s=2.0,
            visibility_timeout_s=60,
        )
        res = Resources.from_settings(settings)
        refused = InProcessRunner(res).run(initial_state(ACCEPTED_BATCH))
        assert refused["status"] == "error_risk_rejected"
        assert "HTTP 401" in refused["errors"][0]["message"]
        server.stop()  # now every Redis call fails: portfolio, lock, events, dead letter
        stranded = InProcessRunner(res).run(initial_state(ACCEPTED_BATCH))
        res.close()
        bridge = Bridge(BridgeConfig(url), lambda state: None)
        thread = threading.Thread(target=bridge.run, daemon=True)
        thread.start()
        wait_for(lambda: "Redis unreachable" in caplog.text, timeout_s=10)
        bridge.stop()
        thread.join(20)
    finally:
        server.stop()
    # the gate still decided (rejected: the LLM was not reachable, and neither is the book);
    # nothing could be written, so its advice row goes with the run to the last resort, the log
    assert stranded["recorded"] is False and stranded["status"] == "error_risk_rejected"
    assert stranded["verdict"]["rule"] == "upstream_error" and stranded["unrecorded_advice"]
    assert "NOT RECORDED" in caplog.text  # the dead letter's last resort: the row in the log
    assert_nowhere(
        (password, wrong), logs=caplog.text, refused=repr(refused), stranded=repr(stranded)
    )


# -- TLS -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory) -> TlsFiles:
    """A self-signed certificate for 127.0.0.1 that is also the CA clients trust."""
    if not shutil.which("openssl"):
        pytest.skip("openssl is needed to make a test certificate")
    tmp = tmp_path_factory.mktemp("tls")
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return TlsFiles(str(cert), str(key), str(cert))


@pytest.fixture
def tls_redis(tls_files):
    password = secret("pw")
    server = EmbeddedRedis(password=password, tls=tls_files)
    try:
        server.start()
    except RuntimeError as exc:
        if "tls" in str(exc).lower():
            pytest.skip(f"this redis-server has no TLS: {exc}")
        raise
    yield server, password
    server.stop()


@pytest.mark.integration
def test_tls_redis_end_to_end(tls_redis, token_sidecar, token, tmp_path, worker_factory, caplog):
    caplog.set_level(logging.DEBUG, logger="osiris_tasks")
    server, password = tls_redis
    url = server.url
    assert url.startswith("rediss://")
    plain = redis.Redis.from_url(f"redis://:{password}@127.0.0.1:{server.port}/0", socket_timeout=2)
    with pytest.raises(redis.ConnectionError):
        plain.ping()  # the port speaks TLS only
    plain.close()
    settings = Settings.from_env(
        {},
        redis_url=url,
        broker_url=url,
        result_backend=url,
        sidecar_url=token_sidecar[0],
        lancedb_uri=str(tmp_path / "lancedb"),
        sidecar_retry_budget_s=5.0,
        visibility_timeout_s=60,
    )
    places = run_through_worker(settings, worker_factory, token, caplog)
    assert "rediss://:**@127.0.0.1" in places["worker_output"]
    assert_nowhere((password, token), **places)
    record("test_tls_redis_end_to_end", runs=2, transport="rediss, certificate verified")


CA_QUERY = "ssl_cert_reqs=required&ssl_ca_certs=%2Fetc%2Fosiris%2Fca.pem"


def celery_for(url: str) -> Celery:
    """A fresh Celery app configured as osiris_tasks would be for a Redis at `url`."""
    settings = Settings.from_env({"OSIRIS_REDIS_URL": url, "OSIRIS_SIDECAR_RETRY_BUDGET_S": "5"})
    assert settings.broker_url == settings.result_backend == url
    celery = Celery("rediss-check", set_as_current=False)
    celery.config_from_object(celery_config(settings))
    return celery


def test_rediss_url_with_its_ca_configures_every_client_to_verify():
    url = f"rediss://:pw@10.0.0.5:6380/0?{CA_QUERY}"
    celery = celery_for(url)
    assert celery.connection_for_write().ssl == {
        "ssl_cert_reqs": ssl.CERT_REQUIRED,
        "ssl_ca_certs": "/etc/osiris/ca.pem",
    }
    backend = celery.backend.connparams
    assert backend["connection_class"] is redis.SSLConnection
    assert backend["ssl_cert_reqs"] == ssl.CERT_REQUIRED
    assert backend["ssl_ca_certs"] == "/etc/osiris/ca.pem"
    res = Resources.from_settings(
        Settings.from_env({"OSIRIS_REDIS_URL": url, "OSIRIS_SIDECAR_RETRY_BUDGET_S": "5"})
    )
    pool = res.redis.connection_pool
    assert pool.connection_class is redis.SSLConnection
    assert pool.connection_kwargs["ssl_cert_reqs"] == "required"
    res.close()
    assert redact_url(url) == f"rediss://:***@10.0.0.5:6380/0?{CA_QUERY}"


def test_bare_rediss_url_is_accepted_by_the_result_backend():
    assert (
        celery_for("rediss://:pw@10.0.0.5:6380/0").backend.connparams["ssl_cert_reqs"]
        == ssl.CERT_REQUIRED
    )


def test_bare_rediss_url_makes_the_broker_verify_the_certificate():
    assert (
        celery_for("rediss://:pw@10.0.0.5:6380/0").connection_for_write().ssl["ssl_cert_reqs"]
        == ssl.CERT_REQUIRED
    )


def test_urls_are_redacted_in_reprs_wherever_their_secret_is():
    """A password in a URL's authority or in a query parameter, and the bearer keys, never
    appear in the repr of the settings or of the bridge's configuration."""
    url = "rediss://user:pw-in-authority@h:6380/0?ssl_cert_reqs=required&password=pw-in-query"
    settings = Settings.from_env(
        {
            "OSIRIS_REDIS_URL": url,
            "OSIRIS_SIDECAR_TOKEN": "tok-sidecar",
            "OSIRIS_LLM_API_KEY": "tok-llm",
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318?api_key=tok-otel",
        }
    )
    shown = repr(settings) + repr(BridgeConfig(redis_url=url)) + str(settings)
    for leaked in ("pw-in-authority", "pw-in-query", "tok-sidecar", "tok-llm", "tok-otel"):
        assert leaked not in shown
    assert "rediss://user:***@h:6380/0?ssl_cert_reqs=required&password=***" in shown
    assert redact_url("http://h:1/path?model_id=phi3") == "http://h:1/path?model_id=phi3"
