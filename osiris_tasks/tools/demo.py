"""`osiris demo`: the whole pipeline on one machine, started, watched and stopped in one command.

Redis (embedded if `OSIRIS_REDIS_URL` does not answer), the reference sidecar, a Celery worker,
the bridge and the simulator run as child processes; optionally Flower. Everything started here
is stopped here, also on Ctrl-C.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import redis
import requests
from rich.console import Console

from osiris_tasks.adapters.portfolio import Portfolio
from osiris_tasks.keys import BRIDGE_STATS_KEY as STATS_KEY
from osiris_tasks.keys import MARKET_CHANNEL
from osiris_tasks.settings import Settings, redact_url
from osiris_tasks.store.runstore import RunStore
from osiris_tasks.tools.book import book_view
from osiris_tasks.tools.embedded_redis import EmbeddedRedis, free_port, redis_reachable
from osiris_tasks.tools.processes import terminate_all
from osiris_tasks.tools.runs import console as runs_console
from osiris_tasks.tools.runs import runs_table

__all__ = ["DemoOptions", "run_demo"]

logger = logging.getLogger(__name__)

START_TIMEOUT_S = 60.0
# After the simulator ends, how long the demo waits for submitted runs to be recorded.
DRAIN_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 15.0
POLL_S = 1.0


@dataclass(frozen=True)
class DemoOptions:
    """What `osiris demo` runs: how long, how fast, how batched."""

    duration_s: float = 20.0
    rate_per_s: float = 20.0
    ticks_per_proposal: int = 10
    symbols: str = "AAPL,MSFT,NVDA"
    seed: int = 7
    flower: bool = False
    flower_port: int = 5555
    worker_concurrency: int = 8
    max_inflight: int = 16
    # `openai`: the LLM nodes call the reference sidecar's OpenAI-compatible `/v1` API.
    llm_backend: str = "sidecar"


class Children:
    """Child processes of the demo, stopped in reverse order."""

    def __init__(self, env: dict[str, str]):
        self.env = env
        self.procs: list[tuple[str, subprocess.Popen]] = []

    def start(self, name: str, *args: str) -> subprocess.Popen:
        proc = subprocess.Popen(
            [sys.executable, "-m", *args],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=self._log(name),
            start_new_session=True,
        )
        self.procs.append((name, proc))
        logger.info("started %s (pid %d)", name, proc.pid)
        return proc

    def _log(self, name: str):
        path = Path(self.env["OSIRIS_DEMO_LOG_DIR"]) / f"{name}.log"
        return path.open("ab")

    def stop_one(self, name: str) -> None:
        """SIGTERM one child and wait for it (the bridge then submits its partial buffers)."""
        terminate_all(
            [proc for child, proc in self.procs if child == name], STOP_TIMEOUT_S, group=True
        )

    def check(self) -> None:
        for name, proc in self.procs:
            if proc.poll() not in (None, 0):
                raise RuntimeError(
                    f"{name} exited with {proc.returncode}; see its log in "
                    f"{self.env['OSIRIS_DEMO_LOG_DIR']}"
                )

    def stop(self) -> None:
        terminate_all([proc for _, proc in reversed(self.procs)], STOP_TIMEOUT_S, group=True)


def _env(settings: Settings, redis_url: str, sidecar_url: str, log_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        OSIRIS_REDIS_URL=redis_url,
        OSIRIS_SIDECAR_URL=sidecar_url,
        OSIRIS_LANCEDB_URI=str(Path(settings.lancedb_uri).resolve()),
        OSIRIS_DEMO_LOG_DIR=str(log_dir),
        PYTHONUNBUFFERED="1",
    )
    for name in ("CELERY_BROKER_URL", "CELERY_RESULT_BACKEND"):
        env.pop(name, None)  # the demo's broker is the demo's Redis
    env.setdefault("OSIRIS_BOOK", "paper")  # accepted proposals trade on the paper book
    return env


def _wait_http(url: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(requests.RequestException):
            if requests.get(url, timeout=1).ok:
                return
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {timeout_s:.0f} s")


def _wait_subscribed(
    client: redis.Redis, channel: str, children: Children, timeout_s: float
) -> None:
    deadline = time.monotonic() + timeout_s
    while not dict(client.pubsub_numsub(channel)).get(channel.encode()):
        children.check()
        if time.monotonic() > deadline:
            raise RuntimeError(f"the bridge did not subscribe to {channel} in {timeout_s:.0f} s")
        time.sleep(0.2)


def _bridge_stats(client: redis.Redis) -> dict[str, int]:
    raw = client.hgetall(STATS_KEY)
    out = {}
    for key, value in raw.items():
        with contextlib.suppress(ValueError):
            out[key.decode()] = int(float(value))
    return out


def run_demo(settings: Settings, options: DemoOptions, console: Console | None = None) -> int:
    """Run the demo; return the number of runs it recorded."""
    console = console or runs_console()
    with contextlib.ExitStack() as stack:
        redis_url = settings.redis_url
        if not redis_reachable(redis_url):
            console.print(f"No Redis at {redact_url(redis_url)}: starting an embedded one.")
            redis_url = stack.enter_context(EmbeddedRedis())
        log_dir = Path(tempfile.mkdtemp(prefix="osiris-demo-logs-"))
        console.print(f"Logs of every process: {log_dir}")
        sidecar_port = free_port()
        env = _env(settings, redis_url, f"http://127.0.0.1:{sidecar_port}", log_dir)
        if options.llm_backend == "openai":
            env.update(
                OSIRIS_LLM_BACKEND="openai",
                OSIRIS_LLM_BASE_URL=f"http://127.0.0.1:{sidecar_port}/v1",
            )
        children = Children(env)
        stack.callback(children.stop)
        return _run(settings, options, children, env, sidecar_port, console)


def _start_all(options: DemoOptions, children: Children, sidecar_port: int) -> None:
    children.start("sidecar", "osiris_tasks.tools.cli", "sidecar", "--port", str(sidecar_port))
    _wait_http(f"http://127.0.0.1:{sidecar_port}/health", START_TIMEOUT_S)
    children.start(
        "worker",
        "celery",
        "-A",
        "osiris_tasks",
        "worker",
        "-l",
        "INFO",
        "--pool",
        "threads",
        "--concurrency",
        str(options.worker_concurrency),
        "-n",
        f"demo-{os.getpid()}@%h",
    )
    children.start(
        "bridge",
        "osiris_tasks.tools.cli",
        "bridge",
        "--ticks_per_proposal",
        str(options.ticks_per_proposal),
        "--max_wait_s",
        "5",
        "--max_inflight",
        str(options.max_inflight),
        "--stats_interval_s",
        "1",
    )
    if options.flower:
        children.start(
            "flower",
            "celery",
            "-A",
            "osiris_tasks",
            "flower",
            f"--port={options.flower_port}",
            "--address=127.0.0.1",
        )


def _run(settings, options, children, env, sidecar_port, console) -> int:
    _start_all(options, children, sidecar_port)
    store = RunStore(env["OSIRIS_LANCEDB_URI"])
    client = redis.Redis.from_url(env["OSIRIS_REDIS_URL"])
    portfolio = Portfolio(
        client, default_nav=settings.nav, default_daily_pnl=settings.daily_pnl, mode="paper"
    )
    if env["OSIRIS_BOOK"] == "paper":
        nav_at_start = portfolio.summary()["nav"]
        console.print(f"Paper book (OSIRIS_BOOK=paper): NAV {nav_at_start:,.2f} at the start.")
        if portfolio.halted():
            console.print(f"Trading is halted ({portfolio.halted()['reason']}): `osiris resume`.")
    client.delete(STATS_KEY)
    baseline = store.count("orchestrator_runs")
    # Pub/Sub keeps nothing: ticks published before the bridge subscribes would be lost.
    _wait_subscribed(client, MARKET_CHANNEL, children, START_TIMEOUT_S)
    sim = children.start(
        "simulator",
        "osiris_tasks.tools.cli",
        "sim",
        "--rate",
        str(options.rate_per_s),
        "--duration",
        str(options.duration_s),
        "--symbols",
        options.symbols,
        "--seed",
        str(options.seed),
    )
    if options.flower:
        console.print(f"Flower: http://127.0.0.1:{options.flower_port}")
    recorded = _watch(store, client, children, sim, baseline, console)
    console.print(runs_table(store.recent_runs(15), title="latest runs"))
    console.print(
        f"{recorded} runs recorded in LanceDB at {env['OSIRIS_LANCEDB_URI']} "
        f"(tables orchestrator_runs, advice, completions, fills); inspect with "
        "`osiris runs list`."
    )
    if env["OSIRIS_BOOK"] == "paper":
        summary = portfolio.summary()
        console.print(
            f"\nThe paper book after the demo (NAV {nav_at_start:,.2f} at the start; "
            "`osiris book` shows it again):"
        )
        console.print(book_view(summary, portfolio.halted()))
    console.print(
        "\nBacktest these runs on the same graph (their completions from the cache; a run "
        "whose prompt differs, because the book moved otherwise, is recorded as a cache miss):"
        f"\n  osiris backtest --from_runs {env['OSIRIS_LANCEDB_URI']} --out backtest_demo "
        f"--cache_uri {env['OSIRIS_LANCEDB_URI']}"
    )
    return recorded


def _watch(store, client, children, sim, baseline, console) -> int:
    deadline, recorded = None, 0
    while True:
        children.check()
        stats = _bridge_stats(client)
        recorded = store.count("orchestrator_runs") - baseline
        console.print(
            f"ticks {stats.get('ticks_received', 0):>6}  rejected "
            f"{stats.get('ticks_rejected', 0):>4}  runs submitted "
            f"{stats.get('runs_submitted', 0):>4}  recorded {recorded:>4}"
        )
        if sim.poll() is not None:
            if deadline is None:
                children.stop_one("bridge")
                deadline = time.monotonic() + DRAIN_TIMEOUT_S
            submitted = _bridge_stats(client).get("runs_submitted", 0)
            if recorded >= submitted or time.monotonic() > deadline:
                return recorded
        time.sleep(POLL_S)
