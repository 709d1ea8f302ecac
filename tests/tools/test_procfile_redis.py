"""The Procfile's `redis` process: it runs a persistent Redis where none answers, and leaves an
existing one alone (waiting, so honcho keeps the stack up)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import redis
from conftest import wait_for

from osiris_tasks.tools.embedded_redis import free_port, redis_reachable


def start(url: str, cwd) -> subprocess.Popen:
    env = {**os.environ, "OSIRIS_REDIS_URL": url}
    return subprocess.Popen(
        [sys.executable, "-m", "osiris_tasks.tools.embedded_redis"],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_it_runs_a_persistent_redis_where_none_answers(tmp_path):
    url = f"redis://127.0.0.1:{free_port()}/0"
    proc = start(url, tmp_path)
    try:
        wait_for(lambda: redis_reachable(url, 0.2), timeout_s=10)
        client = redis.Redis.from_url(url)
        assert client.config_get("appendonly")["appendonly"] == "yes"
        assert client.config_get("maxmemory-policy")["maxmemory-policy"] == "noeviction"
        client.close()
        assert (tmp_path / "redis_data").is_dir()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0


def test_it_uses_a_redis_that_already_answers(redis_url, tmp_path):
    proc = start(redis_url, tmp_path)
    try:
        line = proc.stdout.readline()
        assert "already answers" in line and proc.poll() is None
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    assert not (tmp_path / "redis_data").exists()
