"""Command line: `osiris sidecar|sim|bridge|runs|demo|book|halt|resume|backtest`, and
`osiris-bridge`.

Thin on purpose: parse flags, build settings, set up logging, call one function. Flags use the
original's underscores; dashed aliases work too.
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console

from osiris_tasks.keys import BRIDGE_GROUP, MARKET_CHANNEL, MARKET_STREAM
from osiris_tasks.obs.logs import setup_logging
from osiris_tasks.settings import LLM_BACKENDS, Settings

__all__ = ["bridge_main", "main"]


def _flag(parser: argparse.ArgumentParser, name: str, **kwargs) -> None:
    """`--name_with_underscores`, plus `--name-with-dashes` when that differs."""
    names = [f"--{name}"] + ([f"--{name.replace('_', '-')}"] if "_" in name else [])
    parser.add_argument(*names, dest=name, **kwargs)


def _common(parser: argparse.ArgumentParser) -> None:
    _flag(parser, "log_level", default="INFO", help="DEBUG, INFO, WARNING, ERROR")
    _flag(parser, "json_logs", action="store_true", help="JSON log lines (or OSIRIS_JSON_LOGS=1)")


def _sidecar_parser(sub) -> None:
    p = sub.add_parser("sidecar", help="the reference sidecar (a rule-based stand-in, no model)")
    _flag(p, "host", default="127.0.0.1")
    _flag(p, "port", type=int, default=8000)
    _flag(p, "latency_ms", type=float, default=0.0, help="added to every POST")
    _flag(p, "error_rate", type=float, default=0.0, help="fraction of POSTs answered 503")
    _flag(p, "garbage_rate", type=float, default=0.0, help="fraction answered 200 non-JSON")
    _flag(p, "seed", type=int, default=0, help="seed of the fault draws")
    _flag(p, "token", default=None, help="require this bearer token")
    _flag(p, "ack_redis_url", default=None, help="publish TTS acknowledgements on this Redis")
    _common(p)


def _bridge_flags(p: argparse.ArgumentParser) -> None:
    _flag(p, "redis_url", default=None, help="default: OSIRIS_REDIS_URL")
    _flag(p, "market_channel", default=MARKET_CHANNEL)
    _flag(p, "source", choices=("pubsub", "stream"), default="pubsub", help="where ticks come from")
    _flag(p, "market_stream", default=MARKET_STREAM, help="the stream read with --source stream")
    _flag(p, "stream_group", default=BRIDGE_GROUP, help="the bridges' consumer group")
    _flag(p, "consumer", default=None, help="this bridge's name in the group (default: host name)")
    _flag(p, "ticks_per_proposal", type=int, default=10)
    _flag(p, "max_wait_s", type=float, default=None, help="submit a partial batch this old")
    _flag(p, "group_by", choices=("symbol", "none"), default="symbol")
    _flag(p, "default_symbol", default=None, help="for ticks without one (default: SPY)")
    _flag(p, "proposal_ttl_s", type=float, default=None, help="older runs are recorded expired")
    _flag(p, "max_inflight", type=int, default=None, help="at most N runs queued or running")
    _flag(p, "stats_interval_s", type=float, default=10.0)
    _flag(p, "metrics_port", type=int, default=None, help="serve Prometheus /metrics here")
    _flag(p, "metrics_addr", default="127.0.0.1", help="address of the /metrics endpoint")
    _common(p)


def _sim_parser(sub) -> None:
    p = sub.add_parser("sim", help="publish simulated or replayed ticks")
    _flag(p, "redis_url", default=None, help="default: OSIRIS_REDIS_URL")
    _flag(p, "market_channel", default=MARKET_CHANNEL)
    _flag(p, "sink", choices=("pubsub", "stream"), default="pubsub", help="where ticks go")
    _flag(p, "market_stream", default=MARKET_STREAM, help="the stream written with --sink stream")
    _flag(p, "symbols", default="AAPL,MSFT,NVDA", help="comma-separated (synthetic ticks)")
    _flag(p, "rate", type=float, default=20.0, help="ticks per second; 0 = as fast as possible")
    _flag(p, "duration", type=float, default=None, help="seconds (default: until the end/Ctrl-C)")
    _flag(p, "max_ticks", type=int, default=None)
    _flag(p, "seed", type=int, default=7)
    _flag(p, "volatility", type=float, default=0.002, help="GBM volatility per tick")
    _flag(p, "replay", default=None, help="CSV (OHLCV columns) or JSONL file to replay")
    _common(p)


def _runs_parser(sub) -> None:
    p = sub.add_parser("runs", help="recorded runs in LanceDB")
    rsub = p.add_subparsers(dest="runs_command", required=True)
    lst = rsub.add_parser("list", help="recent runs as a table")
    _flag(lst, "limit", type=int, default=20)
    show = rsub.add_parser("show", help="everything about one run")
    show.add_argument("run_id")
    exp = rsub.add_parser("export", help="runs as prompt/completion/outcome rows")
    _flag(
        exp,
        "format",
        choices=("jsonl", "parquet", "chat"),
        default="jsonl",
        help="chat: chat-format JSONL (messages + outcome labels) for fine-tuning",
    )
    _flag(exp, "output", default=None, help="file (default: runs.<format>, runs.chat.jsonl)")
    _flag(exp, "accepted", action="store_true", help="chat: only runs the gate accepted")
    _flag(exp, "min_pnl", type=float, help="chat: only runs whose fill realised at least this")
    replay = rsub.add_parser("replay", help="record the dead-lettered runs kept in Redis")
    _flag(replay, "redis_url", default=None, help="default: OSIRIS_REDIS_URL")
    for parser in (lst, show, exp, replay):
        _flag(parser, "lancedb_uri", default=None, help="default: OSIRIS_LANCEDB_URI")
    _common(p)


def _demo_parser(sub) -> None:
    p = sub.add_parser("demo", help="run the whole pipeline locally for a while")
    _flag(p, "duration", type=float, default=20.0, help="seconds of simulated ticks")
    _flag(p, "rate", type=float, default=20.0, help="ticks per second")
    _flag(p, "ticks_per_proposal", type=int, default=10)
    _flag(p, "flower", action="store_true", help="also start Flower on --flower_port")
    _flag(p, "flower_port", type=int, default=5555)
    _flag(
        p,
        "llm_backend",
        choices=LLM_BACKENDS,
        default="sidecar",
        help="the LLM nodes' backend: the sidecar's API, or its OpenAI-compatible /v1",
    )
    _common(p)


def _book_parsers(sub) -> None:
    p = sub.add_parser("book", help="the paper book: positions, NAV, P&L, the kill switch")
    _flag(p, "json", action="store_true", help="print it as JSON")
    _flag(p, "reset", action="store_true", help="start the paper book again from OSIRIS_NAV")
    p2 = sub.add_parser("halt", help="throw the kill switch: the gate rejects every proposal")
    _flag(p2, "reason", required=True, help="why, for the event and the verdicts")
    p3 = sub.add_parser("resume", help="release the kill switch")
    for parser in (p, p2, p3):
        _flag(parser, "redis_url", help="Redis of the book (default OSIRIS_REDIS_URL)")
        _common(parser)


def _backtest_parser(sub) -> None:
    from osiris_tasks.domain.book import BOOK_MODES, FILL_AT

    p = sub.add_parser("backtest", help="the graph over recorded ticks, with the paper book")
    p.add_argument("ticks", nargs="*", help="tick files: CSV, JSONL or Parquet")
    _flag(
        p, "out", required=True, help="directory for lancedb/, summary.json, equity.png, report.md"
    )
    _flag(p, "from_runs", help="backtest the batches of the runs recorded at this LanceDB URI")
    _flag(p, "ticks_per_proposal", type=int, default=10, help="ticks per batch, per symbol")
    _flag(
        p,
        "llm",
        choices=("cache", "live", "cache_then_live"),
        default="cache",
        help="completions from the cache only (a miss is a recorded error), live, or both",
    )
    _flag(p, "cache_uri", help="LanceDB URI of the completion cache (default OSIRIS_LANCEDB_URI)")
    _flag(p, "book", choices=BOOK_MODES, default="paper", help="the book the gate decides against")
    _flag(p, "fill_at", choices=FILL_AT, help="when orders fill (default OSIRIS_BOOK_FILL_AT)")
    _flag(p, "celery", action="store_true", help="through the Celery workers (OSIRIS_REDIS_URL)")
    _flag(p, "no_progress", action="store_true", help="no progress bar")
    _common(p)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="osiris", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _sidecar_parser(sub)
    _sim_parser(sub)
    _bridge_flags(sub.add_parser("bridge", help="Pub/Sub ticks -> Celery runs"))
    _runs_parser(sub)
    _demo_parser(sub)
    _book_parsers(sub)
    _backtest_parser(sub)
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
    from osiris_tasks.tools.sim import publish, replay_ticks, synthetic_ticks

    stop = threading.Event()
    _stop_on_signals(stop.set)
    if args.replay:
        ticks = replay_ticks(args.replay, default_symbol=settings.default_symbol)
    else:
        ticks = synthetic_ticks(args.symbols.split(","), seed=args.seed, volatility=args.volatility)
    client = redis_client(args.redis_url or settings.redis_url)
    target = args.market_channel if args.sink == "pubsub" else args.market_stream
    count = publish(
        client,
        target,
        ticks,
        stream_maxlen=settings.market_stream_maxlen if args.sink == "stream" else None,
        rate_per_s=args.rate or None,
        duration_s=args.duration,
        max_ticks=args.max_ticks,
        stop=stop,
    )
    Console(stderr=True).print(f"published {count} ticks on {target}")
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
    if args.runs_command == "list":
        console.print(runs.runs_table(store.recent_runs(args.limit)))
    elif args.runs_command == "show":
        details = runs.run_details(store, args.run_id)
        if details is None:
            console.print(f"no run {args.run_id}")
            return 1
        print(runs.format_details(details))
    else:
        default = "runs.chat.jsonl" if args.format == "chat" else f"runs.{args.format}"
        output = Path(args.output or default)
        count = runs.export_runs(
            store, args.format, output, accepted_only=args.accepted, min_pnl=args.min_pnl
        )
        console.print(f"exported {count} runs to {output}")
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
    """`osiris ...`"""
    args = build_parser().parse_args(argv)
    settings = Settings.from_env()
    setup_logging(args.log_level, json_logs=args.json_logs or settings.json_logs)
    return COMMANDS[args.command](args, settings)


def bridge_main(argv: Sequence[str] | None = None) -> int:
    """`osiris-bridge ...`, the same as `osiris bridge ...`."""
    return main(["bridge", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
