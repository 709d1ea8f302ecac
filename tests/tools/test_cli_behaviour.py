"""The command line as an operator meets it: the installed entry points run as processes, and
their exit codes, stdout and stderr checked. A user's mistake is one line on stderr, never a
traceback: exit 2 for a bad flag or setting, 1 for a failure at run time."""

from __future__ import annotations

import argparse
import os
import pty
import select
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path

import orjson
import pytest
from conftest import wait_for
from pipeline_helpers import ACCEPTED_BATCH

from osiris_tasks import app, configure, initial_state, submit_run
from osiris_tasks.store.runstore import RunStore
from osiris_tasks.tools.cli import build_bridge_parser, build_parser

BIN = Path(sys.executable).parent
OSIRIS, OSIRIS_BRIDGE = str(BIN / "osiris"), str(BIN / "osiris-bridge")
# Port 1: privileged, so nothing a test or a user runs listens there.
UNREACHABLE_REDIS = "redis://127.0.0.1:1/0"
PTY_READ_TIMEOUT_S = 60.0


def _env(**extra: str) -> dict[str, str]:
    """This environment without any OSIRIS_/CELERY_ setting, plus `extra`."""
    kept = {k: v for k, v in os.environ.items() if not k.startswith(("OSIRIS_", "CELERY_"))}
    return {**kept, **extra}


@pytest.fixture
def run(tmp_path):
    """`run(*argv, **env)`: the command in `tmp_path`, its output captured."""

    def run_(*argv: str, **env: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            argv, cwd=tmp_path, env=_env(**env), capture_output=True, text=True, timeout=120
        )

    return run_


def _one_line_error(proc: subprocess.CompletedProcess, code: int, *names: str) -> str:
    """Assert `proc` exited `code` with a single stderr line naming each of `names`."""
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    for name in names:
        assert name in lines[0]
    return lines[0]


@pytest.mark.parametrize("command", [OSIRIS, OSIRIS_BRIDGE])
def test_version_of_both_entry_points(run, command):
    proc = run(command, "--version")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"{Path(command).name} {version('osiris_tasks')}\n"


def test_bridge_help_names_its_own_program_and_shows_defaults(run):
    proc = run(OSIRIS_BRIDGE, "--help")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: osiris-bridge ")
    assert "usage: osiris " not in proc.stdout
    help_text = " ".join(proc.stdout.split())  # argparse wraps lines at the terminal's width
    assert "--ticks_per_proposal, --ticks-per-proposal TICKS_PER_PROPOSAL" in help_text
    assert "ticks per run, per symbol (default: 10)" in help_text
    assert "Pub/Sub channel of the ticks (default: market.ticks)" in help_text
    assert "(default: INFO)" in help_text


def _flags(parser: argparse.ArgumentParser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _flags(sub)
        elif action.option_strings:
            yield parser.prog, action


def test_every_flag_of_every_command_has_a_help_string():
    flags = [*_flags(build_parser()), *_flags(build_bridge_parser())]
    assert len(flags) > 100
    assert [(prog, a.option_strings[0]) for prog, a in flags if not a.help] == []


@pytest.mark.parametrize(
    "argv",
    [
        ["--log_level", "debug", "--json_logs", "runs", "list"],
        ["runs", "--log-level", "DEBUG", "--json-logs", "list"],
        ["runs", "list", "--log_level", "Debug", "--json_logs"],
        ["--log_level", "ERROR", "runs", "list", "--log_level", "debug", "--json_logs"],
    ],
)
def test_log_flags_work_before_and_after_the_command(argv):
    args = build_parser().parse_args(argv)
    assert (args.log_level, args.json_logs) == ("DEBUG", True)


def test_log_flags_default_when_not_given():
    args = build_parser().parse_args(["runs", "list"])
    assert (args.log_level, args.json_logs) == ("INFO", False)
    args = build_bridge_parser().parse_args([])
    assert (args.command, args.log_level, args.json_logs) == ("bridge", "INFO", False)
    assert build_bridge_parser().parse_args(["--log-level", "warning"]).log_level == "WARNING"


def test_a_command_flag_that_prefixes_a_log_flag_is_the_command_s():
    """`--json` is `book`'s flag, not an abbreviation of `osiris --json_logs`."""
    args = build_parser().parse_args(["book", "--json"])
    assert (args.json, args.json_logs) == (True, False)


def test_runs_list_takes_the_log_level_after_the_command(run, tmp_path):
    proc = run(OSIRIS, "runs", "list", "--log_level", "DEBUG", "--lancedb_uri", str(tmp_path))
    assert proc.returncode == 0, proc.stderr


def test_runs_show_of_an_unknown_run_fails_on_stderr(run, tmp_path):
    proc = run(OSIRIS, "runs", "show", "nope", "--lancedb_uri", str(tmp_path))
    assert _one_line_error(proc, 1, "nope") == "osiris runs show: error: no run nope"
    assert proc.stdout == ""


@pytest.mark.parametrize(
    ("env", "name"),
    [
        ({"OSIRIS_NAV": "abc"}, "OSIRIS_NAV"),
        ({"OSIRIS_VISIBILITY_TIMEOUT_S": "10"}, "OSIRIS_VISIBILITY_TIMEOUT_S"),
    ],
)
def test_an_unusable_setting_is_a_usage_error(run, tmp_path, env, name):
    proc = run(OSIRIS, "runs", "list", "--lancedb_uri", str(tmp_path), **env)
    assert _one_line_error(proc, 2, name).startswith("osiris: error: ")
    assert proc.stdout == ""


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        ([OSIRIS, "runs", "list", "--log_level", "foo"], "--log_level"),
        ([OSIRIS, "--log_level", "foo", "runs", "list"], "--log_level"),
        ([OSIRIS, "sim", "--rate", "-1"], "--rate"),
        ([OSIRIS, "sim", "--rate", "nan"], "--rate"),
        ([OSIRIS, "sidecar", "--port", "70000"], "--port"),
        ([OSIRIS_BRIDGE, "--ticks_per_proposal", "0"], "--ticks_per_proposal"),
        ([OSIRIS_BRIDGE, "--no_such_flag"], "--no_such_flag"),
    ],
)
def test_a_bad_flag_is_a_usage_error(run, argv, flag):
    proc = run(*argv)
    assert "see " in _one_line_error(proc, 2, flag, "error:")
    assert proc.stdout == ""


def test_unreachable_redis_is_a_runtime_error(run):
    proc = run(OSIRIS, "sim", "--redis_url", UNREACHABLE_REDIS, "--max_ticks", "1")
    _one_line_error(proc, 1, "osiris: error: ", "127.0.0.1:1")


def test_unreachable_redis_the_dead_letters_are_in_is_a_runtime_error(run, tmp_path):
    """The dead-letter list's adapter turns redis-py's error into a StoreError: one line."""
    argv = ("runs", "replay", "--redis_url", UNREACHABLE_REDIS, "--lancedb_uri", str(tmp_path))
    _one_line_error(run(OSIRIS, *argv), 1, "dead-letter list", "127.0.0.1:1")


def _on_a_terminal(argv: list[str], env: dict[str, str]) -> tuple[int, str]:
    """Run `argv` with stderr on a pseudo-terminal; its exit code and what it wrote there."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=follower)
    os.close(follower)
    chunks, deadline = [], time.monotonic() + PTY_READ_TIMEOUT_S
    try:
        while time.monotonic() < deadline:
            if select.select([leader], [], [], 0.5)[0]:
                try:
                    chunk = os.read(leader, 4096)
                except OSError:  # EIO: every writer closed the terminal
                    break
                if not chunk:
                    break
                chunks.append(chunk)
    finally:
        os.close(leader)
    return proc.wait(10), b"".join(chunks).decode(errors="replace")


def test_sim_shows_progress_on_a_terminal_only(redis_url):
    argv = [OSIRIS, "sim", "--redis_url", redis_url, "--rate", "200", "--max_ticks", "200"]
    code, shown = _on_a_terminal(argv, _env())
    assert code == 0
    assert "ticks/s" in shown and "published 200 ticks on market.ticks" in shown

    code, shown = _on_a_terminal([*argv, "--no_progress"], _env())
    assert code == 0
    assert "ticks/s" not in shown and "published 200 ticks on market.ticks" in shown

    piped = subprocess.run(argv, env=_env(), capture_output=True, text=True, timeout=60)
    assert piped.returncode == 0, piped.stderr
    assert "ticks/s" not in piped.stderr
    assert piped.stderr.splitlines()[-1] == "published 200 ticks on market.ticks"


@pytest.mark.integration
def test_json_logs_of_a_worker_name_the_task(settings, worker_factory):
    configure(app, settings)
    worker = worker_factory(settings, env_extra={"OSIRIS_JSON_LOGS": "1"})
    state = initial_state(ACCEPTED_BATCH)
    submit_run(app, state)
    store = RunStore(settings.lancedb_uri)
    try:
        wait_for(lambda: store.get_run(state["run_id"]), timeout_s=60)
    finally:
        store.close()

    def task_records():
        lines = [line for line in list(worker.output) if line.startswith("{")]
        records = [orjson.loads(line) for line in lines]
        return [r for r in records if r.get("task_name") == "osiris.record_run"]

    record = wait_for(task_records, timeout_s=10)[0]
    assert record["run_id"] == state["run_id"]
    assert record["task_id"]
    outside = [orjson.loads(line) for line in worker.output if " ready." in line][0]
    assert "task_id" not in outside and "task_name" not in outside
