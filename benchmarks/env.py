"""What the benchmarks run against, started on loopback and stopped afterwards: Redis, the
reference sidecar, Celery workers, settings pointing at a throwaway LanceDB directory."""

from __future__ import annotations

import contextlib
import functools
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import redis

from osiris_tasks.settings import DEFAULT_LLM_CACHE, Settings
from osiris_tasks.tools.embedded_redis import EmbeddedRedis, free_port
from osiris_tasks.tools.processes import terminate
from osiris_tasks.tools.reference_sidecar import Faults, make_server

__all__ = [
    "Worker",
    "bench_settings",
    "cpu_s",
    "du_bytes",
    "embedded_redis",
    "sidecar",
    "process_env",
    "sidecar_process",
    "worker_env",
]

REPO = Path(__file__).resolve().parent.parent
WORKER_READY_TIMEOUT_S = 60.0


@contextlib.contextmanager
def embedded_redis() -> Iterator[str]:
    """A fresh redis-server on a free port: its URL."""
    with EmbeddedRedis() as url:
        yield url


@contextlib.contextmanager
def sidecar(latency_ms: float = 0) -> Iterator[str]:
    """The reference sidecar on a free loopback port, served by a thread: its URL."""
    server = make_server("127.0.0.1", 0, faults=Faults(latency_ms=latency_ms))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        host, port = server.server_address[:2]
        yield f"http://{host}:{port}"
    finally:
        server.shutdown()
        server.server_close()


class SidecarProcess(str):
    """The URL of a reference sidecar process, with its `pid`."""

    pid: int


@contextlib.contextmanager
def sidecar_process(latency_ms: float = 0) -> Iterator[SidecarProcess]:
    """`osiris sidecar` in its own process (its CPU apart from the client's): its URL."""
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "osiris_tasks.tools.cli",
            "sidecar",
            "--port",
            str(port),
            "--latency_ms",
            str(latency_ms),
            "--log_level",
            "WARNING",
        ],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = SidecarProcess(f"http://127.0.0.1:{port}")
    url.pid = proc.pid
    try:
        _wait_http(url, proc)
        yield url
    finally:
        terminate(proc, 10.0)


def _wait_http(url: str, proc: subprocess.Popen, timeout_s: float = 30.0) -> None:
    import requests

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            requests.get(f"{url}/health", timeout=1)
            return
        except requests.RequestException:
            time.sleep(0.1)
    raise RuntimeError(f"the sidecar at {url} did not start")


def cpu_s(pid: int, *, children: bool = True) -> float:
    """CPU seconds (user + system, all threads) process `pid` and, with `children`, its live
    children (a prefork pool) have used so far."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        tasks = list(Path(f"/proc/{pid}/task").iterdir()) if children else []
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    own = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return own + sum(cpu_s(child) for child in _children(tasks))


def rss_mb(pid: int) -> float:
    """Resident set size of process `pid`, in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def children_rss_mb(pid: int) -> float:
    """The summed RSS of process `pid`'s live children (a worker's maintenance process), MB."""
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    total = 0.0
    for child in _children(tasks):
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):  # exited meanwhile
            total += rss_mb(child)
    return round(total, 1)


def redis_pid(redis_url: str) -> int:
    """The pid of the Redis server at `redis_url` (its CPU is counted per run)."""
    client = redis.Redis.from_url(redis_url)
    try:
        return int(client.info("server")["process_id"])
    finally:
        client.close()


def _children(tasks: list[Path]) -> list[int]:
    """Child pids of these threads; a thread that exited meanwhile has none (a worker's
    short-lived threads, such as the store's maintenance, come and go: reading a gone
    thread's `children` made a whole worker's CPU read as 0)."""
    found = []
    for task in tasks:
        try:
            found += [int(child) for child in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
    return found


def bench_settings(redis_url: str, sidecar_url: str, lancedb_uri: str) -> Settings:
    return Settings.from_env(
        {},
        redis_url=redis_url,
        broker_url=redis_url,
        result_backend=redis_url,
        sidecar_url=sidecar_url,
        lancedb_uri=lancedb_uri,
        visibility_timeout_s=120,
        sidecar_retry_budget_s=20.0,
        # The completion cache's mode from this process's environment, so one suite can be run
        # with `OSIRIS_LLM_CACHE=off` against the default for an A/B of its cost.
        llm_cache=os.environ.get("OSIRIS_LLM_CACHE") or DEFAULT_LLM_CACHE,
    )


@functools.cache
def memory_env(jemalloc: bool = True) -> dict[str, str]:
    """`MALLOC_ARENA_MAX`, `ARROW_DEFAULT_MEMORY_POOL` and `LD_PRELOAD` as `workers/memory.sh`
    (every worker profile) sets them here; `jemalloc=False` is the profiles with
    `OSIRIS_JEMALLOC=0`."""
    env = {**os.environ, "OSIRIS_JEMALLOC": "1" if jemalloc else "0"}
    script = (
        '. workers/memory.sh; printf "%s\\n%s\\n%s" "$MALLOC_ARENA_MAX" '
        '"$ARROW_DEFAULT_MEMORY_POOL" "${LD_PRELOAD:-}"'
    )
    out = subprocess.run(
        ["sh", "-c", script], cwd=REPO, env=env, capture_output=True, text=True, check=True
    ).stdout
    arenas, arrow_pool, preload = out.split("\n")
    return {
        "MALLOC_ARENA_MAX": arenas,
        "ARROW_DEFAULT_MEMORY_POOL": arrow_pool,
        **({"LD_PRELOAD": preload} if preload else {}),
    }


def process_env(settings: Settings) -> dict[str, str]:
    """The environment that makes an `osiris` subprocess read `settings`, with the allocator
    it inherits: how the Procfile and docker-compose.yml start the bridge."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OSIRIS_", "CELERY_", "OTEL_"))}
    env.update(
        {
            "OSIRIS_REDIS_URL": settings.redis_url,
            "OSIRIS_SIDECAR_URL": settings.sidecar_url,
            "OSIRIS_LANCEDB_URI": settings.lancedb_uri,
            "OSIRIS_VISIBILITY_TIMEOUT_S": str(settings.visibility_timeout_s),
            "OSIRIS_SIDECAR_RETRY_BUDGET_S": str(settings.sidecar_retry_budget_s),
            "OSIRIS_TICKS_BY_REFERENCE_MIN": str(settings.ticks_by_reference_min),
            "OSIRIS_LLM_CACHE": settings.llm_cache,
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def worker_env(settings: Settings, *, jemalloc: bool = True) -> dict[str, str]:
    """`process_env(settings)` with the worker profiles' allocator settings."""
    # memory_env is cached: one `sh` per allocator, not per worker.
    return {**process_env(settings), **memory_env(jemalloc)}


class Worker:
    """`celery -A APP worker ARGS` as a subprocess; `with Worker(...)` stops it."""

    def __init__(
        self,
        settings: Settings,
        *args: str,
        app_module: str = "osiris_tasks",
        jemalloc: bool = True,
    ):
        # Open as long as the worker runs: closed (and removed) by stop().
        self.log = tempfile.NamedTemporaryFile(  # noqa: SIM115
            prefix="osiris-bench-worker-", suffix=".log", delete=False, mode="w+"
        )
        self.name = f"bench-{os.getpid()}-{id(self)}@{socket.gethostname()}"
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                app_module,
                "worker",
                "-l",
                "WARNING",
                "--without-mingle",
                "--without-gossip",
                "--without-heartbeat",
                "-n",
                self.name,
                *args,
            ],
            cwd=REPO,
            env=worker_env(settings, jemalloc=jemalloc),
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_ready(self, app, timeout_s: float = WORKER_READY_TIMEOUT_S) -> None:
        """Until the worker answers a ping (its pool is up)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            if app.control.ping([self.name], timeout=0.5):
                return
        self.stop()
        self.log.seek(0)
        raise RuntimeError("worker did not start:\n" + self.log.read()[-4000:])

    def stop(self, timeout_s: float = 20.0) -> None:
        terminate(self.proc, timeout_s)
        self.log.close()
        os.unlink(self.log.name)

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def du_bytes(path: str | Path) -> int:
    """Bytes of every file under `path`."""
    return sum(entry.stat().st_size for entry in Path(path).rglob("*") if entry.is_file())
