"""Command line: `osiris sidecar|sim|bridge|runs|demo|book|halt|resume|backtest`, and
`osiris-bridge`.

Thin on purpose: parse flags, build settings, set up logging, call one function. Flags use the
original's underscores; dashed aliases work too. A user's mistake or an `OsirisError` ends the
command with one line on stderr, never a traceback: exit 2 for a usage error (a bad flag, an
unusable setting: `ConfigError`), 1 for a failure at run time (Redis unreachable, LanceDB...).
"""

from __future__ import annotations

import argparse
import json
import math
import signal
import socket
import sys
import threading
from collections.abc import Callable, Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import NoReturn

from rich.console import Console

from osiris_tasks.errors import ConfigError, OsirisError
from osiris_tasks.keys import BRIDGE_GROUP, MARKET_CHANNEL, MARKET_STREAM
from osiris_tasks.obs.logs import setup_logging
from osiris_tasks.settings import LLM_BACKENDS, Settings

__all__ = ["bridge_main", "main"]

DISTRIBUTION = "osiris_tasks"
DESCRIPTION = "Osiris: market ticks in, audited and risk-checked LLM trade proposals out."
BRIDGE_DESCRIPTION = "The tick bridge: market ticks from Redis in, Celery runs out."
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
DEFAULT_LOG_LEVEL = "INFO"
# Exit codes: a usage error (argparse's own), a failure at run time, Ctrl-C (128 + SIGINT).
EXIT_USAGE, EXIT_FAILURE, EXIT_INTERRUPTED = 2, 1, 130


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends a flag's default to its help, unless it has none (None, off) or says it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        default = action.default
        if default is None or default is False or default == argparse.SUPPRESS:
            return action.help
        if "(default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)

    def _format_action_invocation(self, action: argparse.Action) -> str:
        """`--name_x, --name-x VALUE`, not the value after each spelling."""
        if not action.option_strings or action.nargs == 0:
            return super()._format_action_invocation(action)
        value = self._format_args(action, self._get_default_metavar_for_optional(action))
        return f"{', '.join(action.option_strings)} {value}"


class _Parser(argparse.ArgumentParser):
    """Defaults shown in --help; a usage error is one line on stderr and exit 2."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _checked(convert: Callable, ok: Callable, wanted: str) -> Callable[[str], object]:
    """An argparse `type`: `convert(text)`, refused with `wanted` unless `ok(value)`."""

    def parse(text: str):
        refused = argparse.ArgumentTypeError(f"{wanted}, got {text!r}")
        try:
            value = convert(text)
        except ValueError:
            raise refused from None
        if not ok(value):
            raise refused
        return value

    return parse


COUNT = _checked(int, lambda n: n >= 1, "must be a whole number, 1 or more")
POSITIVE_DAYS = _checked(float, lambda d: 0 < d < 1e6, "must be a positive number of days")
SECONDS = _checked(float, lambda x: math.isfinite(x) and x > 0, "must be a number above 0")
NON_NEGATIVE = _checked(float, lambda x: math.isfinite(x) and x >= 0, "must be a number, 0 or more")
FRACTION = _checked(float, lambda x: 0 <= x <= 1, "must be a fraction from 0 to 1")
PORT = _checked(int, lambda n: 0 <= n <= 65535, "must be a port, 0 to 65535")


def _flag(parser: argparse.ArgumentParser, name: str, **kwargs) -> None:
    """`--name_with_underscores`, plus `--name-with-dashes` when that differs."""
    names = [f"--{name}"] + ([f"--{name.replace('_', '-')}"] if "_" in name else [])
    parser.add_argument(*names, dest=name, **kwargs)


def _common(parser: argparse.ArgumentParser, *, top: bool = False) -> None:
    """`--log_level` and `--json_logs`, before a command (`top`) or after it. The copies after
    it default to SUPPRESS: a command's default would overwrite the value given before it."""
    _flag(
        parser,
        "log_level",
        type=str.upper,
        choices=LOG_LEVELS,
        metavar="LEVEL",
        default=DEFAULT_LOG_LEVEL if top else argparse.SUPPRESS,
        help=f"{', '.join(LOG_LEVELS)}, any case (default: {DEFAULT_LOG_LEVEL})",
    )
    _flag(
        parser,
        "json_logs",
        action="store_true",
        default=False if top else argparse.SUPPRESS,
        help="JSON log lines (or OSIRIS_JSON_LOGS=1)",
    )


def _command(sub, name: str, summary: str) -> argparse.ArgumentParser:
    return sub.add_parser(name, help=summary, description=summary[0].upper() + summary[1:] + ".")


def _version() -> str:
    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed)"


def _top(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    _common(parser, top=True)
    return parser


def _sidecar_parser(sub) -> None:
    p = _command(sub, "sidecar", "the reference sidecar (a rule-based stand-in, no model)")
    _flag(p, "host", default="127.0.0.1", help="address to listen on")
    _flag(p, "port", type=PORT, default=8000, help="port to listen on (0: any free one)")
    _flag(p, "latency_ms", type=NON_NEGATIVE, default=0.0, help="added to every POST")
    _flag(p, "error_rate", type=FRACTION, default=0.0, help="fraction of POSTs answered 503")
    _flag(p, "garbage_rate", type=FRACTION, default=0.0, help="fraction answered 200 non-JSON")
    _flag(p, "seed", type=int, default=0, help="seed of the fault draws")
    _flag(p, "token", default=None, help="require this bearer token (default: none)")
    _flag(p, "ack_redis_url", default=None, help="publish TTS acknowledgements on this Redis")
    _common(p)


def _bridge_flags(p: argparse.ArgumentParser) -> None:
    _flag(p, "redis_url", default=None, help="Redis of the ticks (default: OSIRIS_REDIS_URL)")
    _flag(p, "market_channel", default=MARKET_CHANNEL, help="Pub/Sub channel of the ticks")
    _flag(p, "source", choices=("pubsub", "stream"), default="pubsub", help="where ticks come from")
    _flag(p, "market_stream", default=MARKET_STREAM, help="the stream read with --source stream")
    _flag(p, "stream_group", default=BRIDGE_GROUP, help="the bridges' consumer group")
    _flag(p, "consumer", default=None, help="this bridge's name in the group (default: host name)")
    _flag(p, "ticks_per_proposal", type=COUNT, default=10, help="ticks per run, per symbol")
    _flag(p, "max_wait_s", type=SECONDS, help="submit a partial batch this old (default: never)")
    _flag(p, "group_by", choices=("symbol", "none"), default="symbol", help="batch ticks by")
    _flag(p, "default_symbol", help="for ticks without one (default: OSIRIS_DEFAULT_SYMBOL)")
    _flag(p, "proposal_ttl_s", type=SECONDS, help="older runs are recorded expired (default: off)")
    _flag(p, "max_inflight", type=COUNT, help="at most N runs queued or running (default: off)")
    _flag(p, "stats_interval_s", type=SECONDS, default=10.0, help="seconds between stats lines")
    _flag(p, "metrics_port", type=PORT, help="serve Prometheus /metrics here (default: off)")
    _flag(p, "metrics_addr", default="127.0.0.1", help="address of the /metrics endpoint")


def _sim_parser(sub) -> None:
    p = _command(sub, "sim", "publish simulated or replayed ticks")
    _flag(p, "redis_url", default=None, help="Redis to publish on (default: OSIRIS_REDIS_URL)")
    _flag(p, "market_channel", default=MARKET_CHANNEL, help="Pub/Sub channel of the ticks")
    _flag(p, "sink", choices=("pubsub", "stream"), default="pubsub", help="where ticks go")
    _flag(p, "market_stream", default=MARKET_STREAM, help="the stream written with --sink stream")
    _flag(p, "symbols", default="AAPL,MSFT,NVDA", help="comma-separated, for synthetic ticks")
    _flag(p, "rate", type=NON_NEGATIVE, default=20.0, help="ticks per second; 0: unpaced")
    _flag(
        p, "duration", type=SECONDS, help="how long, in seconds (default: until the end or Ctrl-C)"
    )
    _flag(p, "max_ticks", type=COUNT, help="stop after this many ticks (default: no limit)")
    _flag(p, "seed", type=int, default=7, help="seed of the synthetic prices")
    _flag(p, "volatility", type=NON_NEGATIVE, default=0.002, help="GBM volatility per tick")
    _flag(p, "replay", default=None, help="CSV (OHLCV columns) or JSONL file to replay")
    _flag(p, "no_progress", action="store_true", help="no progress line (off when not a TTY)")
    _common(p)


def _runs_parser(sub) -> None:
    p = _command(sub, "runs", "recorded runs in LanceDB")
    rsub = p.add_subparsers(dest="runs_command", required=True, metavar="COMMAND")
    lst = _command(rsub, "list", "recent runs as a table")
    _flag(lst, "limit", type=COUNT, default=20, help="how many runs, newest first")
    show = _command(rsub, "show", "everything about one run")
    show.add_argument("run_id", help="the run's id (osiris runs list shows them)")
    exp = _command(rsub, "export", "runs as prompt/completion/outcome rows")
    _flag(
        exp,
        "format",
        choices=("jsonl", "parquet", "chat"),
        default="jsonl",
        help="chat: chat-format JSONL (messages + outcome labels) for fine-tuning",
    )
    _flag(exp, "output", help="file (default: runs.<format>, runs.chat.jsonl)")
    _flag(exp, "accepted", action="store_true", help="chat: only runs the gate accepted")
    _flag(exp, "min_pnl", type=float, help="chat: only runs whose fill realised at least this")
    replay = _command(rsub, "replay", "record the dead-lettered runs kept in Redis")
    _flag(replay, "redis_url", help="Redis of the dead letters (default: OSIRIS_REDIS_URL)")
    expire = _command(rsub, "expire", "delete runs, advice and fills older than N days")
    _flag(
        expire,
        "older_than_days",
        type=POSITIVE_DAYS,
        help="the age (default: OSIRIS_RETENTION_DAYS; required if that is unset)",
    )
    _flag(expire, "archive", help="write them to Parquet here first (default: OSIRIS_ARCHIVE_DIR)")
    for parser in (lst, show, exp, replay, expire):
        _flag(parser, "lancedb_uri", help="the runs' LanceDB (default: OSIRIS_LANCEDB_URI)")
        _common(parser)
    _common(p)


def _demo_parser(sub) -> None:
    p = _command(sub, "demo", "run the whole pipeline locally for a while")
    _flag(p, "duration", type=SECONDS, default=20.0, help="seconds of simulated ticks")
    _flag(p, "rate", type=NON_NEGATIVE, default=20.0, help="ticks per second; 0: unpaced")
    _flag(p, "ticks_per_proposal", type=COUNT, default=10, help="ticks per run, per symbol")
    _flag(p, "flower", action="store_true", help="also start Flower on --flower_port")
    _flag(p, "flower_port", type=PORT, default=5555, help="Flower's port, with --flower")
    _flag(
        p,
        "llm_backend",
        choices=LLM_BACKENDS,
        default="sidecar",
        help="the LLM nodes' backend: the sidecar's API, or its OpenAI-compatible /v1",
    )
    _common(p)


def _book_parsers(sub) -> None:
    p = _command(sub, "book", "the paper book: positions, NAV, P&L, the kill switch")
    _flag(p, "json", action="store_true", help="print it as JSON")
    _flag(p, "reset", action="store_true", help="start the paper book again from OSIRIS_NAV")
    p2 = _command(sub, "halt", "throw the kill switch: the gate rejects every proposal")
    _flag(p2, "reason", required=True, help="why, for the event and the verdicts")
    p3 = _command(sub, "resume", "release the kill switch")
    for parser in (p, p2, p3):
        _flag(parser, "redis_url", help="Redis of the book (default: OSIRIS_REDIS_URL)")
        _common(parser)


def _backtest_parser(sub) -> None:
    from osiris_tasks.domain.book import BOOK_MODES, FILL_AT

    p = _command(sub, "backtest", "the graph over recorded ticks, with the paper book")
    p.add_argument("ticks", nargs="*", help="tick files: CSV, JSONL or Parquet")
    _flag(
        p, "out", required=True, help="directory for lancedb/, summary.json, equity.png, report.md"
    )
    _flag(p, "from_runs", help="backtest the batches of the runs recorded at this LanceDB URI")
    _flag(p, "ticks_per_proposal", type=COUNT, default=10, help="ticks per batch, per symbol")
    _flag(
        p,
        "llm",
        choices=("cache", "live", "cache_then_live"),
        default="cache",
        help="completions from the cache only (a miss is a recorded error), live, or both",
    )
    _flag(p, "cache_uri", help="LanceDB URI of the completion cache (default: OSIRIS_LANCEDB_URI)")
    _flag(p, "book", choices=BOOK_MODES, default="paper", help="the book the gate decides against")
    _flag(p, "fill_at", choices=FILL_AT, help="when orders fill (default: OSIRIS_BOOK_FILL_AT)")
    _flag(p, "celery", action="store_true", help="through the Celery workers (OSIRIS_REDIS_URL)")
    _flag(p, "no_progress", action="store_true", help="no progress bar")
    _common(p)


def build_parser() -> argparse.ArgumentParser:
    """`osiris`'s flags and commands."""
    # No abbreviations before the command: `osiris book --json` would be read as an ambiguous
    # `--json_logs` of `osiris` itself instead of `book`'s `--json`.
    parser = _top(_Parser(prog="osiris", description=DESCRIPTION, allow_abbrev=False))
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _sidecar_parser(sub)
    _sim_parser(sub)
    bridge = _command(sub, "bridge", "ticks from Redis -> Celery runs (as osiris-bridge)")
    _bridge_flags(bridge)
    _common(bridge)
    _runs_parser(sub)
    _demo_parser(sub)
    _book_parsers(sub)
    _backtest_parser(sub)
    return parser


def build_bridge_parser() -> argparse.ArgumentParser:
    """`osiris-bridge`'s flags: `osiris bridge`'s."""
    parser = _top(_Parser(prog="osiris-bridge", description=BRIDGE_DESCRIPTION))
    _bridge_flags(parser)
    parser.set_defaults(command="bridge")
    return parser


def _stop_on_signals(stop) -> None:
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop())


def cmd_sidecar(args, settings: Settings) -> int:
    from osiris_tasks.tools.reference_sidecar import Faults, serve_forever

    faults = Faults(
        latency_ms=args.latency_ms, error_rate=args.error_rate, garbage_rate=args.garbage_rate
    )
    serve_forever(
        args.host,
        args.port,
        faults=faults,
        seed=args.seed,
        token=args.token,
        ack_redis_url=args.ack_redis_url,
    )
    return 0


def cmd_bridge(args, settings: Settings) -> int:
    from osiris_tasks.bridge.service import Bridge, BridgeConfig
    from osiris_tasks.obs import telemetry
    from osiris_tasks.tasks.canvas import submit_run, submit_runs
    from osiris_tasks.tasks.celery_app import app, configure

    configure(app, settings)
    telemetry.setup(settings, telemetry.BRIDGE_SERVICE)
    config = BridgeConfig(
        redis_url=args.redis_url or settings.redis_url,
        market_channel=args.market_channel,
        ticks_per_proposal=args.ticks_per_proposal,
        max_wait_s=args.max_wait_s,
        group_by=args.group_by,
        default_symbol=args.default_symbol or settings.default_symbol,
        proposal_ttl_s=args.proposal_ttl_s,
        max_inflight=args.max_inflight,
        stats_interval_s=args.stats_interval_s,
        symbols=settings.symbols,
        source=args.source,
        market_stream=args.market_stream,
        stream_group=args.stream_group,
        consumer=args.consumer or socket.gethostname(),
        claim_idle_s=settings.stream_claim_idle_s,
        stream_retention=settings.market_stream_retention,
    )
    bridge = Bridge(
        config,
        lambda state: submit_run(app, state),
        submit_many=lambda states: submit_runs(app, states),
    )
    if args.metrics_port:
        from osiris_tasks.bridge.metrics import serve_metrics

        serve_metrics(args.metrics_port, lambda: bridge.counters, addr=args.metrics_addr)
    _stop_on_signals(bridge.stop)
    try:
        bridge.run()
    finally:
        telemetry.shutdown()
    return 0


def cmd_sim(args, settings: Settings) -> int:
    from osiris_tasks.adapters.resources import redis_client
    from osiris_tasks.tools.sim import progress_line, publish, replay_ticks, synthetic_ticks

    stop = threading.Event()
    _stop_on_signals(stop.set)
    if args.replay:
        ticks = replay_ticks(args.replay, default_symbol=settings.default_symbol)
    else:
        ticks = synthetic_ticks(args.symbols.split(","), seed=args.seed, volatility=args.volatility)
    client = redis_client(args.redis_url or settings.redis_url)
    target = args.market_channel if args.sink == "pubsub" else args.market_stream
    console = Console(stderr=True)
    with progress_line(console, target, enabled=not args.no_progress) as on_published:
        count = publish(
            client,
            target,
            ticks,
            stream_maxlen=settings.market_stream_maxlen if args.sink == "stream" else None,
            rate_per_s=args.rate or None,
            duration_s=args.duration,
            max_ticks=args.max_ticks,
            stop=stop,
            on_published=on_published,
        )
    console.print(f"published {count} ticks on {target}")
    return 0


def cmd_runs(args, settings: Settings) -> int:
    from osiris_tasks.store.runstore import RunStore
    from osiris_tasks.tools import runs

    console = runs.console()
    if args.runs_command == "replay":
        from osiris_tasks.adapters.deadletter import DeadLetter
        from osiris_tasks.adapters.resources import redis_client

        # The store writes under Redis claims, as the workers' do: a replay racing a worker's
        # write of the same run still records it once.
        client = redis_client(args.redis_url or settings.redis_url)
        replayed, left = DeadLetter(client).replay(
            RunStore(args.lancedb_uri or settings.lancedb_uri, redis=client)
        )
        console.print(f"replayed {replayed} dead-lettered runs; {left} left")
        return 0 if left == 0 else 1
    store = RunStore(args.lancedb_uri or settings.lancedb_uri)
    if args.runs_command == "expire":
        return _expire(store, args, settings, console)
    if args.runs_command == "list":
        console.print(runs.runs_table(store.recent_runs(args.limit)))
    elif args.runs_command == "show":
        details = runs.run_details(store, args.run_id)
        if details is None:
            return _fail("osiris runs show", f"no run {args.run_id}", EXIT_FAILURE)
        print(runs.format_details(details))
    else:
        default = "runs.chat.jsonl" if args.format == "chat" else f"runs.{args.format}"
        output = Path(args.output or default)
        count = runs.export_runs(
            store, args.format, output, accepted_only=args.accepted, min_pnl=args.min_pnl
        )
        console.print(f"exported {count} runs to {output}")
    return 0


def _expire(store, args, settings: Settings, console) -> int:
    days = args.older_than_days or settings.retention_days
    if days is None:
        return _fail(
            "osiris runs expire", "give --older_than_days or OSIRIS_RETENTION_DAYS", EXIT_USAGE
        )
    for done in store.expire(days * 86_400, archive_dir=args.archive or settings.archive_dir):
        where = f" (archived to {done['archive']})" if done["archive"] else ""
        console.print(
            f"{done['table']}: {done['expired_rows']} rows before {done['before']}{where}"
        )
    return 0


def _portfolio(args, settings: Settings):
    from osiris_tasks.adapters.resources import Resources

    redis_url = args.redis_url or settings.redis_url
    return Resources.from_settings(settings.with_(book="paper", redis_url=redis_url))


def cmd_book(args, settings: Settings) -> int:
    from osiris_tasks.tools import book, runs

    resources = _portfolio(args, settings)
    if args.reset:
        resources.portfolio.reset()
    summary, halted = resources.portfolio.summary(), resources.portfolio.halted()
    if args.json:
        print(json.dumps({**summary, "halted": halted}, indent=2))
    else:
        runs.console().print(book.book_view(summary, halted))
    resources.close()
    return 0


def cmd_halt(args, settings: Settings) -> int:
    from osiris_tasks.tools import book

    resources = _portfolio(args, settings)
    record = book.halt(resources.portfolio, resources.bus, args.reason)
    Console(stderr=True).print("halted" if record else "already halted")
    resources.close()
    return 0


def cmd_resume(args, settings: Settings) -> int:
    from osiris_tasks.tools import book

    resources = _portfolio(args, settings)
    released = book.resume(resources.portfolio, resources.bus)
    Console(stderr=True).print("resumed" if released else "was not halted")
    resources.close()
    return 0


def cmd_backtest(args, settings: Settings) -> int:
    from osiris_tasks.tools.backtest import BacktestOptions, run_backtest

    options = BacktestOptions(
        out=Path(args.out),
        sources=tuple(args.ticks),
        from_runs=args.from_runs,
        ticks_per_proposal=args.ticks_per_proposal,
        llm=args.llm,
        cache_uri=args.cache_uri,
        book=args.book,
        fill_at=args.fill_at,
        celery=args.celery,
        progress=not args.no_progress,
    )
    summary = run_backtest(settings, options)
    p = summary["performance"]
    Console(stderr=True).print(
        f"{summary['backtest']['batches']} batches: NAV {p['start_nav']:,.2f} -> "
        f"{p['end_nav']:,.2f} ({p['total_return']:+.2%}), max drawdown {p['max_drawdown']:.2%}, "
        f"{p['trades']} trades, {summary['llm']['cache_hits']}/{summary['llm']['calls']} LLM "
        f"calls from the cache; {options.out}/report.md"
    )
    return 0


def cmd_demo(args, settings: Settings) -> int:
    from osiris_tasks.tools.demo import DemoOptions, run_demo

    options = DemoOptions(
        duration_s=args.duration,
        rate_per_s=args.rate,
        ticks_per_proposal=args.ticks_per_proposal,
        flower=args.flower,
        flower_port=args.flower_port,
        llm_backend=args.llm_backend,
    )
    return 0 if run_demo(settings, options) > 0 else 1


COMMANDS = {
    "sidecar": cmd_sidecar,
    "bridge": cmd_bridge,
    "sim": cmd_sim,
    "runs": cmd_runs,
    "demo": cmd_demo,
    "book": cmd_book,
    "halt": cmd_halt,
    "resume": cmd_resume,
    "backtest": cmd_backtest,
}


def main(argv: Sequence[str] | None = None) -> int:
    """`osiris ...`; returns the exit code."""
    return _run(build_parser(), argv)


def bridge_main(argv: Sequence[str] | None = None) -> int:
    """`osiris-bridge ...`, the same as `osiris bridge ...`; returns the exit code."""
    return _run(build_bridge_parser(), argv)


def _run(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> int:
    args = parser.parse_args(argv)  # a bad flag exits 2 here, with one line
    try:
        settings = Settings.from_env()
        setup_logging(args.log_level, json_logs=args.json_logs or settings.json_logs)
        return COMMANDS[args.command](args, settings)
    except ConfigError as exc:
        return _fail(parser.prog, exc, EXIT_USAGE)
    except OsirisError as exc:
        return _fail(parser.prog, exc, EXIT_FAILURE)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except _redis_unreachable() as exc:  # an adapter that let one through unconverted
        return _fail(parser.prog, f"Redis unreachable: {exc}", EXIT_FAILURE)


def _redis_unreachable() -> tuple[type[Exception], ...]:
    """redis-py's connection errors. Imported only when an exception gets this far: importing
    redis costs `--help` and `--version` about 0.2 s."""
    import redis

    return (redis.ConnectionError, redis.TimeoutError)


def _fail(prog: str, error: object, code: int) -> int:
    """`error` as one line on stderr (a library's message may span several); returns `code`."""
    print(f"{prog}: error: {' '.join(str(error).split())}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
