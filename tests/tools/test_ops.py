"""Operating the pipeline: Flower on a real worker, the Procfile under honcho, and the
docker-compose file's consistency (no engine runs here, so the file is checked, not started)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import yaml
from conftest import REPO, settings_env, wait_for
from pipeline_helpers import ACCEPTED_BATCH, REJECTED_BATCH

from osiris_tasks import app, configure, initial_state, submit_run
from osiris_tasks.store.runstore import RunStore
from osiris_tasks.tasks.celery_app import QUEUES
from osiris_tasks.tools.embedded_redis import free_port

pytestmark = pytest.mark.integration
FLOWER_AUTH = ("ops", "s3cret-pass")
WORKERS = REPO / "workers"
ENTRY_POINTS = {"osiris", "osiris-bridge", "celery"}


def _flower(settings, port: int) -> subprocess.Popen:
    env = settings_env(settings)
    env["FLOWER_BASIC_AUTH"] = ":".join(FLOWER_AUTH)
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "osiris_tasks",
            "flower",
            f"--port={port}",
            "--address=127.0.0.1",
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def _flower_tasks(port: int, search: str) -> dict:
    try:
        reply = requests.get(
            f"http://127.0.0.1:{port}/api/tasks",
            params={"search": search},
            auth=FLOWER_AUTH,
            timeout=5,
        )
    except requests.RequestException:
        return {}
    return reply.json() if reply.ok else {}


def _flower_sees_a_new_run(port: int, store: RunStore) -> bool:
    state = initial_state(REJECTED_BATCH)
    submit_run(app, state)
    wait_for(lambda: store.get_run(state["run_id"]), timeout_s=60)
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        if _flower_tasks(port, state["run_id"]):
            return True
        time.sleep(0.1)
    return False


def test_flower_finds_every_task_of_a_run(settings, worker_factory):
    configure(app, settings)
    port = free_port()
    flower = _flower(settings, port)
    try:
        wait_for(lambda: _get_status(port), timeout_s=60)
        worker_factory(settings)
        store = RunStore(settings.lancedb_uri)
        # Workers send no task events until Flower asks (OSIRIS_TASK_EVENTS unset): it does
        # every 5 s, so within seconds of the worker's start Flower sees its tasks.
        wait_for(lambda: _flower_sees_a_new_run(port, store), timeout_s=60)
        runs = [initial_state(ACCEPTED_BATCH), initial_state(REJECTED_BATCH)]
        for state in runs:
            submit_run(app, state)
        for state in runs:
            wait_for(lambda s=state: store.get_run(s["run_id"]), timeout_s=60)
        accepted, rejected = (r["run_id"] for r in runs)
        tasks = wait_for(lambda: _complete(_flower_tasks(port, accepted), 7), timeout_s=30)
        names = sorted(t["name"] for t in tasks.values())
        assert names == sorted(
            f"osiris.{n}"
            for n in (
                "query_market",
                "generate_proposal",
                "risk_management",
                "evaluate_proposal",
                "score_proposal",
                "publish_events",
                "record_run",
            )
        )
        for task in tasks.values():
            assert accepted in task["kwargs"]
            assert task["args"] == "(<run state>,)"
            assert len(task["result"] or "") <= 300  # compact, not the whole state
        assert all(t["root_id"] == accepted for t in tasks.values())
        wait_for(lambda: _complete(_flower_tasks(port, rejected), 5), timeout_s=30)
        unauthenticated = requests.get(f"http://127.0.0.1:{port}/api/tasks", timeout=5)
        assert unauthenticated.status_code == 401
    finally:
        os.killpg(flower.pid, signal.SIGTERM)
        flower.wait(10)


def _get_status(port: int) -> bool:
    try:
        return requests.get(f"http://127.0.0.1:{port}/healthcheck", timeout=1).ok
    except requests.RequestException:
        return False


def _complete(tasks: dict, expected: int) -> dict | None:
    done = {k: v for k, v in tasks.items() if v.get("state") == "SUCCESS"}
    return done if len(done) == expected else None


def test_procfile_stack_under_honcho_records_runs(redis_url, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OSIRIS_", "CELERY_"))}
    sidecar_port = free_port()
    procfile = (REPO / "Procfile").read_text().replace("--port 8000", f"--port {sidecar_port}")
    (tmp_path / "Procfile").write_text(procfile)
    env.update(
        OSIRIS_REDIS_URL=redis_url,
        OSIRIS_LANCEDB_URI=str(tmp_path / "lancedb"),
        OSIRIS_SIDECAR_URL=f"http://127.0.0.1:{sidecar_port}",
        FLOWER_BASIC_AUTH=":".join(FLOWER_AUTH),
        PYTHONUNBUFFERED="1",
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}",
    )
    honcho = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "honcho",
            "-f",
            str(tmp_path / "Procfile"),
            "-d",
            str(REPO),
            "start",
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    store = RunStore(str(tmp_path / "lancedb"))
    try:
        wait_for(lambda: store.count("orchestrator_runs") >= 3, timeout_s=120, interval_s=1)
    finally:
        os.killpg(honcho.pid, signal.SIGTERM)
        output, _ = honcho.communicate(timeout=60)
    assert store.count("orchestrator_runs") >= 3, output[-3000:]
    statuses = {r["status"] for r in store.recent_runs(50)}
    assert statuses <= {"success", "success_risk_rejected"}, output[-3000:]


def _compose() -> dict:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def _settings_env_vars() -> set[str]:
    source = (REPO / "osiris_tasks" / "settings.py").read_text()
    return set(re.findall(r'"((?:OSIRIS|CELERY|PHI3|OTEL)_[A-Z0-9_]+)"', source))


def _worker_env_vars() -> set[str]:
    return {v for path in WORKERS.iterdir() for v in re.findall(r"\$\{(\w+)", path.read_text())}


def test_compose_services_run_real_entry_points():
    compose = _compose()
    services = compose["services"]
    assert {
        "redis",
        "sidecar",
        "worker-default",
        "worker-sidecar",
        "worker-tts",
        "bridge",
        "flower",
        "simulator",
        "jaeger",
    } <= set(services)
    for name, service in services.items():
        command = service.get("command")
        if service.get("image", "").startswith(("redis:", "jaegertracing/")):
            continue
        if command[:2] == ["sh", "-c"]:  # a check before the program (Flower's auth)
            command = command[2].removeprefix("exec ").split()
        program = command[0]
        assert program in ENTRY_POINTS or (REPO / program).is_file(), (name, program)
        if program == "osiris":
            assert command[1] in {"sidecar", "sim", "demo", "runs", "bridge"}, name
        if program == "celery":
            assert command[1:3] == ["-A", "osiris_tasks"], name
    assert services["simulator"]["profiles"] == ["demo"]
    assert services["jaeger"]["profiles"] == ["traces"]


def test_compose_env_vars_are_ones_the_code_reads():
    known = _settings_env_vars() | _worker_env_vars() | {"FLOWER_BASIC_AUTH"}
    for name, service in _compose()["services"].items():
        env = service.get("environment") or {}
        if service.get("image", "").startswith(("redis:", "jaegertracing/")):
            continue
        unknown = set(env) - known
        assert not unknown, (name, unknown)


def test_every_worker_profile_is_used_by_procfile_and_compose():
    profiles = {f"workers/{p.name}" for p in WORKERS.glob("osiris.*")}
    procfile = (REPO / "Procfile").read_text()
    compose_commands = {
        s["command"][0] for s in _compose()["services"].values() if s.get("command")
    }
    for profile in profiles:
        assert profile in procfile
        assert profile in compose_commands
    queues = {re.search(r"--queues (\S+)", (REPO / p).read_text()).group(1) for p in profiles}
    assert queues == set(QUEUES)


def test_flower_requires_auth_in_shipped_configs():
    procfile = (REPO / "Procfile").read_text()
    assert 'if [ -n "$FLOWER_BASIC_AUTH" ]; then exec celery' in procfile
    assert '--basic-auth="$FLOWER_BASIC_AUTH"' in procfile
    flower = _compose()["services"]["flower"]
    # `$$` in the file: the container's shell, not compose, checks the variable
    assert '--basic-auth="$${FLOWER_BASIC_AUTH:?' in flower["command"][2]


def test_bridge_serves_its_counters_as_prometheus_metrics(settings):
    import redis as redis_lib

    port = free_port()
    bridge = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "osiris_tasks.tools.cli",
            "bridge",
            "--metrics_port",
            str(port),
            "--ticks_per_proposal",
            "100",
        ],
        cwd=REPO,
        env=settings_env(settings),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    client = redis_lib.Redis.from_url(settings.redis_url)
    try:
        wait_for(
            lambda: dict(client.pubsub_numsub("market.ticks")).get(b"market.ticks"), timeout_s=60
        )
        client.publish("market.ticks", b'{"symbol": "AAPL", "close": 101.5}')
        client.publish("market.ticks", b"not json")

        def scrape():
            try:
                text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
            except requests.RequestException:
                return None
            # counters are published one by one: wait for the last of them
            rejected = 'osiris_bridge_ticks_rejected_by_reason_total{reason="not_json"} 1.0'
            return text if rejected in text else None

        text = wait_for(scrape, timeout_s=20)
        assert "osiris_bridge_ticks_received_total 2.0" in text
        assert "osiris_bridge_inflight" in text
    finally:
        os.killpg(bridge.pid, signal.SIGTERM)
        bridge.wait(30)
        client.close()


def test_sigterm_to_the_bridge_submits_its_partial_buffer(settings, worker_factory):
    """The README: on SIGTERM the bridge turns every non-empty buffer into a run and exits 0."""
    import redis as redis_lib

    worker_factory(settings)
    bridge = subprocess.Popen(
        [sys.executable, "-m", "osiris_tasks.tools.cli", "bridge", "--ticks_per_proposal", "10"],
        cwd=REPO,
        env=settings_env(settings),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    client = redis_lib.Redis.from_url(settings.redis_url)
    try:
        wait_for(
            lambda: dict(client.pubsub_numsub("market.ticks")).get(b"market.ticks"), timeout_s=60
        )
        for close in (100.0, 100.5, 100.2, 100.4):  # 4 of 10: a partial buffer
            client.publish("market.ticks", f'{{"symbol": "AAPL", "close": {close}}}')
        time.sleep(1.0)  # the read loop takes microseconds per tick; stats come every 10 s
        os.killpg(bridge.pid, signal.SIGTERM)
        output, _ = bridge.communicate(timeout=30)
    finally:
        client.close()
    assert bridge.returncode == 0, output[-2000:]
    match = re.search(r"run_id=(run_\S+) batch of 4 ticks", output)
    assert match, output[-2000:]
    store = RunStore(settings.lancedb_uri)
    row = wait_for(lambda: store.get_run(match.group(1)), timeout_s=60)
    assert len(json.loads(row["input_query"])) == 4


def _memory_env(**env: str) -> list[str]:
    script = (
        '. workers/memory.sh; printf "%s|%s|%s" '
        '"$MALLOC_ARENA_MAX" "${LD_PRELOAD:-}" "$ARROW_DEFAULT_MEMORY_POOL"'
    )
    base = {
        k: v
        for k, v in os.environ.items()
        if k
        not in ("MALLOC_ARENA_MAX", "LD_PRELOAD", "OSIRIS_JEMALLOC", "ARROW_DEFAULT_MEMORY_POOL")
    }
    out = subprocess.run(
        ["sh", "-c", script],
        cwd=REPO,
        env={**base, **env},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return out.split("|")


def test_worker_profiles_share_the_allocator_settings():
    for profile in WORKERS.glob("osiris.*"):
        assert '. "$(dirname "$0")/memory.sh"' in profile.read_text(), profile
    arenas, preload, arrow_pool = _memory_env()
    assert arenas == "2" and (preload == "" or preload.endswith("libjemalloc.so.2"))
    assert arrow_pool == "system"
    assert _memory_env(
        OSIRIS_JEMALLOC="0", MALLOC_ARENA_MAX="4", ARROW_DEFAULT_MEMORY_POOL="jemalloc"
    ) == ["4", "", "jemalloc"]
