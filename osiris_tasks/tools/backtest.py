"""`osiris backtest`: the same graph over recorded ticks, on a simulated clock, with the paper
book, the LLM through the completion cache; a summary, an equity curve and a report.

* **Ticks**: CSV (the simulator's OHLCV replay format) or JSONL files, Parquet files (a tick per
  row), or `--from_runs URI` (the batches of runs recorded there, as they were batched).
* **Simulated clock**: ticks are batched per symbol, `--ticks_per_proposal` at a time, in the
  order of their timestamps (the bridge's `--group_by symbol`), and a batch is decided at its
  last tick's time: that is its `created_at`, the time its orders are placed at, the time the
  book's session follows. Nothing is stale (no ttl) and nothing reads the wall clock.
* **The same graph**: each batch is one run of `InProcessRunner` (in this process, one batch
  after another, so the book each run sees is the one the previous runs left), or with
  `--celery` one run through the Celery workers, each waited for before the next. The book is
  `OSIRIS_BOOK=paper` (default), in a Redis of the backtest's own (an embedded server) unless
  `--celery`, which uses `OSIRIS_REDIS_URL` and resets its paper book first: give it a Redis and
  workers of its own.
* **The LLM**: `--llm cache` answers from the completion cache only (`OSIRIS_LLM_CACHE=read`: a
  miss is a recorded `LLMCacheMiss`, never a request), `live` asks the backend and caches,
  `cache_then_live` asks only on a miss. The cache read is `--cache_uri` (default
  `OSIRIS_LANCEDB_URI`, where live runs keep their completions). A request is the same request
  only if its prompt is: the proposal's prompt carries the book's NAV and daily P&L, so a paper
  book that has moved away from the one a run saw asks something the cache has not seen.
* **Output in `--out DIR`**: `lancedb/` (the runs, advice, fills, completions of the backtest),
  `summary.json` (no time of day, no latency: the same backtest gives the same bytes),
  `equity.csv` (the NAV after each run), `equity.png` (equity and drawdown), `report.md`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import shutil
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console
from rich.progress import Progress

from osiris_tasks.adapters.completions import CompletionStage
from osiris_tasks.adapters.resources import Resources, redis_client
from osiris_tasks.domain import performance
from osiris_tasks.domain.ticks import validate_tick
from osiris_tasks.errors import ConfigError, TickRejected
from osiris_tasks.settings import Settings
from osiris_tasks.store.runstore import RunStore
from osiris_tasks.tools.embedded_redis import EmbeddedRedis, redis_reachable
from osiris_tasks.workflow.runner import InProcessRunner
from osiris_tasks.workflow.state import initial_state

__all__ = ["LLM_MODES", "BacktestOptions", "load_batches", "run_backtest"]

logger = logging.getLogger(__name__)

# --llm: the completion cache's mode for the backtest's runs.
LLM_MODES = {"cache": "read", "live": "write", "cache_then_live": "readwrite"}
SUMMARY_FILE, EQUITY_FILE, REPORT_FILE = "summary.json", "equity.png", "report.md"
CURVE_FILE = "equity.csv"
CELERY_RUN_TIMEOUT_S = 120.0
# Significant digits of the summary's floats: the same backtest, the same bytes.
DIGITS = 12


@dataclass(frozen=True)
class BacktestOptions:
    out: Path
    sources: tuple[str, ...] = ()
    from_runs: str | None = None
    ticks_per_proposal: int = 10
    llm: str = "cache"
    cache_uri: str | None = None
    book: str = "paper"
    fill_at: str | None = None  # None: OSIRIS_BOOK_FILL_AT
    celery: bool = False
    progress: bool = True


# -- ticks and batches ------------------------------------------------------------------------


def load_ticks(sources: Iterable[str], default_symbol: str) -> Iterator[dict[str, Any]]:
    """The raw ticks of each file: Parquet by suffix, else CSV or JSONL (`osiris sim --replay`)."""
    from osiris_tasks.tools.sim import replay_ticks

    for source in sources:
        path = Path(source)
        if path.suffix.lower() == ".parquet":
            import pyarrow.parquet as pq

            if not path.is_file():
                raise ConfigError(f"tick file {path} does not exist")
            yield from pq.read_table(path).to_pylist()
        else:
            yield from replay_ticks(path, default_symbol=default_symbol)


def batch_ticks(
    ticks: Iterable[Mapping[str, Any]], size: int, default_symbol: str
) -> tuple[list[list[dict]], int]:
    """Valid ticks in time order, batched per symbol `size` at a time (the rest of each symbol
    a last, smaller batch), batches in the order of their last tick; and the count rejected."""
    valid, rejected = [], 0
    for raw in ticks:
        try:
            valid.append(validate_tick(dict(raw), default_symbol=default_symbol))
        except TickRejected:
            rejected += 1
    valid.sort(key=lambda t: (t["timestamp"], t["symbol"]))
    open_batches: dict[str, list[dict]] = {}
    batches = []
    for tick in valid:
        batch = open_batches.setdefault(tick["symbol"], [])
        batch.append(tick)
        if len(batch) == size:
            batches.append(open_batches.pop(tick["symbol"]))
    batches += list(open_batches.values())
    batches.sort(key=lambda b: (b[-1]["timestamp"], b[-1]["symbol"]))
    return batches, rejected


def runs_batches(uri: str) -> list[list[dict]]:
    """The batches of the runs recorded at `uri`, in the order they were formed (ties by
    symbol, as a backtest orders its batches)."""
    store = RunStore(uri)
    try:
        runs = sorted(
            ((row["created_at"] or "", row["symbols"] or "", row["run_id"]), row["input_query"])
            for row in store.iter_runs()
        )
    finally:
        store.close()
    runs = [(key, orjson.loads(ticks or "[]")) for key, ticks in runs]
    return [ticks for _, ticks in runs if ticks]


def load_batches(options: BacktestOptions, default_symbol: str) -> tuple[list[list[dict]], int]:
    if options.from_runs:
        return runs_batches(options.from_runs), 0
    if not options.sources:
        raise ConfigError("give tick files, or --from_runs LANCEDB_URI")
    ticks = load_ticks(options.sources, default_symbol)
    return batch_ticks(ticks, options.ticks_per_proposal, default_symbol)


def run_id_of(batch: Sequence[Mapping[str, Any]], index: int) -> str:
    """A run_id the same batch gets in every backtest: its time, then a hash of its ticks."""
    created = datetime.fromtimestamp(batch[-1]["timestamp"], UTC)
    digest = hashlib.sha256(orjson.dumps([index, *batch], option=orjson.OPT_SORT_KEYS))
    millis = created.microsecond // 1000
    return f"run_{created.strftime('%Y%m%dT%H%M%S')}{millis:03d}Z_{digest.hexdigest()[:16]}"


# -- the run ----------------------------------------------------------------------------------


class BatchedWrites:
    """The in-process backtest's run store: its advice, run and fill rows kept and written
    `BATCH_ROWS` at a time (one commit per table), the rest passed through. One writer, and
    nothing reads a row back before the backtest ends: a LanceDB commit per row was 57 % of a
    cached backtest's time (profiled)."""

    BATCH_ROWS = 500

    def __init__(self, store: RunStore):
        self._store = store
        self._advice: list[Mapping[str, Any]] = []
        self._runs: list[Mapping[str, Any]] = []
        self._fills: list[Mapping[str, Any]] = []

    def record_advice(self, row: Mapping[str, Any]) -> bool:
        self._advice.append(row)
        self._due()
        return True

    def record_run(self, row: Mapping[str, Any], *, recheck: bool = False) -> bool:
        self._runs.append(row)
        self._due()
        return True

    def record_fills(self, rows: Iterable[Mapping[str, Any]]) -> list[bool]:
        rows = list(rows)
        self._fills += rows
        self._due()
        return [True] * len(rows)

    def _due(self) -> None:
        if len(self._advice) + len(self._runs) + len(self._fills) >= self.BATCH_ROWS:
            self.flush()

    def flush(self) -> None:
        if self._advice:
            self._store.record_advice_many(self._advice)
            self._advice = []
        if self._runs:
            self._store.record_runs(self._runs)
            self._runs = []
        if self._fills:
            self._store.record_fills(self._fills)
            self._fills = []

    def close(self) -> None:
        self.flush()
        self._store.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


def backtest_settings(settings: Settings, options: BacktestOptions, redis_url: str) -> Settings:
    return settings.with_(
        redis_url=redis_url,
        broker_url=redis_url if not options.celery else settings.broker_url,
        result_backend=redis_url if not options.celery else settings.result_backend,
        lancedb_uri=str(options.out / "lancedb"),
        book=options.book,
        book_fill_at=options.fill_at or settings.book_fill_at,
        llm_cache=LLM_MODES[options.llm],
        llm_cache_uri=options.cache_uri or settings.lancedb_uri,
        llm_deadline_s=None,  # no wall clock in a backtest
    )


def run_backtest(
    settings: Settings,
    options: BacktestOptions,
    console: Console | None = None,
    timings: dict[str, float] | None = None,
) -> dict[str, Any]:
    """Run the backtest; write its output in `options.out`; return its summary. `timings`, if
    given, gets the seconds its runs took (`runs_s`) and the whole of it (`total_s`): kept out
    of the summary, which must not change from one run of the same backtest to the next."""
    started = time.perf_counter()
    if options.llm not in LLM_MODES:
        raise ConfigError(f"--llm must be one of {', '.join(LLM_MODES)}")
    console = console or Console(stderr=True)
    batches, rejected = load_batches(options, settings.default_symbol)
    if not batches:
        raise ConfigError("no valid ticks to backtest")
    options.out.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(options.out / "lancedb", ignore_errors=True)
    _flush_live_cache(settings, options)
    with contextlib.ExitStack() as stack:
        redis_url = settings.redis_url
        if not options.celery:
            redis_url = stack.enter_context(EmbeddedRedis())
        bt = backtest_settings(settings, options, redis_url)
        resources = Resources.from_settings(bt)
        if not options.celery:
            resources.wrap_store(BatchedWrites)
        try:
            resources.portfolio.reset()
            resources.portfolio.resume()  # a backtest starts untouched by any kill switch
            runs_started = time.perf_counter()
            finals, curve = _run_all(bt, resources, batches, options, console)
            runs_s = time.perf_counter() - runs_started
        finally:
            resources.close()  # writes the completions it staged
        store = RunStore(bt.lancedb_uri)
        fills = store.fills()
        store.close()
    summary = _summary(bt, options, batches, rejected, finals, curve, fills)
    write_outputs(options.out, summary, curve)
    if timings is not None:
        timings.update(runs_s=runs_s, total_s=time.perf_counter() - started)
    return summary


def _flush_live_cache(settings: Settings, options: BacktestOptions) -> None:
    """Completions live runs staged but have not written yet are written, so the cache has
    them (only where the cache read is the live store, and its Redis answers)."""
    if options.llm == "live" or options.cache_uri not in (None, settings.lancedb_uri):
        return
    if not redis_reachable(settings.redis_url):
        return
    client = redis_client(settings.redis_url)
    store = RunStore(settings.lancedb_uri, redis=client)
    try:
        CompletionStage(client, lambda: store, settings.lancedb_uri).flush()
    finally:
        store.close()
        client.close()


def _run_all(settings, resources, batches, options, console):
    runner = None if options.celery else InProcessRunner(resources)
    finals, curve = [], []
    progress = Progress(console=console, transient=True, disable=not options.progress)
    with progress:
        task = progress.add_task("backtest", total=len(batches))
        for index, batch in enumerate(batches):
            state = initial_state(
                batch, run_id=run_id_of(batch, index), created_at=batch[-1]["timestamp"]
            )
            if runner is not None:
                final = runner.run(state)
            else:
                final = _through_celery(settings, resources, state)
            finals.append(final)
            after = final.get("book_after") or resources.portfolio.summary()  # the paper book's
            curve.append((state["created_at"], after["nav"]))
            progress.advance(task)
    return finals, curve


def _through_celery(settings: Settings, resources: Resources, state: dict) -> dict:
    """One run through the workers, waited for; its final state read back from its row."""
    from osiris_tasks.tasks.canvas import submit_run
    from osiris_tasks.tasks.celery_app import app, configure

    configure(app, settings)
    submit_run(app, state)
    deadline = time.monotonic() + CELERY_RUN_TIMEOUT_S
    while (row := resources.store.get_run(state["run_id"])) is None:
        if time.monotonic() > deadline:
            raise ConfigError(
                f"run {state['run_id']} not recorded in {CELERY_RUN_TIMEOUT_S:.0f} s: are "
                f"workers running with OSIRIS_LANCEDB_URI={settings.lancedb_uri}?"
            )
        time.sleep(0.05)
    final = orjson.loads(row["final_output"])
    final["llm_calls"] = orjson.loads(row["llm_calls"] or "[]")
    return final


# -- what it says -------------------------------------------------------------------------------


def _summary(settings, options, batches, rejected, finals, curve, fills) -> dict[str, Any]:
    calls = [call for final in finals for call in final.get("llm_calls") or ()]
    ticks = [tick for batch in batches for tick in batch]
    return _rounded(
        {
            "backtest": {
                "batches": len(batches),
                "ticks": len(ticks),
                "ticks_rejected": rejected,
                "symbols": sorted({t["symbol"] for t in ticks}),
                "first_tick": _iso(min(t["timestamp"] for t in ticks)),
                "last_tick": _iso(max(t["timestamp"] for t in ticks)),
                "book": options.book,
                "fill_at": settings.book_fill_at,
                "slippage_bps": settings.book_slippage_bps,
                "fee_bps": settings.book_fee_bps,
                "llm": options.llm,
                "llm_backend": settings.llm_backend,
                "through": "celery" if options.celery else "in-process",
            },
            "performance": performance.summarize(curve, fills, capital=settings.nav),
            "runs": dict(sorted(Counter(f.get("status") for f in finals).items())),
            "rejections_by_rule": dict(
                sorted(
                    Counter(
                        f["verdict"]["rule"]
                        for f in finals
                        if f.get("verdict") and not f["verdict"]["accepted"]
                    ).items()
                )
            ),
            "errors_by_type": dict(
                sorted(Counter(e["type"] for f in finals for e in f.get("errors") or ()).items())
            ),
            "llm": {
                "calls": len(calls),
                "cache_hits": sum(1 for c in calls if c.get("cached")),
                "prompt_tokens": sum(c.get("prompt_tokens") or 0 for c in calls),
                "completion_tokens": sum(c.get("completion_tokens") or 0 for c in calls),
            },
        }
    )


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


def _rounded(value: Any) -> Any:
    if isinstance(value, float):
        return float(f"{value:.{DIGITS}g}")
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value


def write_outputs(out: Path, summary: Mapping[str, Any], curve: Sequence[tuple[float, float]]):
    (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    (out / CURVE_FILE).write_text(
        "timestamp,nav\n" + "".join(f"{_iso(ts)},{nav!r}\n" for ts, nav in curve)
    )
    _plot(out / EQUITY_FILE, curve, summary["performance"]["start_nav"])
    (out / REPORT_FILE).write_text(_report(summary))


def _plot(path: Path, curve: Sequence[tuple[float, float]], capital: float) -> None:
    try:
        import matplotlib
    except ImportError:  # an extra: the rest of the output does not need it
        logger.warning(
            "no equity.png: matplotlib is not installed (pip install 'osiris_tasks[backtest]')"
        )
        return

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    times = [datetime.fromtimestamp(ts, UTC) for ts, _ in curve]
    navs = [nav for _, nav in curve]
    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(10, 6), height_ratios=[3, 1])
    top.plot(times, navs, color="tab:blue", linewidth=1)
    top.axhline(capital, color="grey", linewidth=0.5)
    top.set_ylabel("NAV")
    top.set_title("equity (paper book, after each run)")
    bottom.fill_between(times, [d * 100 for d in performance.drawdowns(navs)], color="tab:red")
    bottom.set_ylabel("drawdown %")
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _report(summary: Mapping[str, Any]) -> str:
    p, b, llm = summary["performance"], summary["backtest"], summary["llm"]

    def pct(value):
        return "-" if value is None else f"{value:.2%}"

    def num(value):
        return "-" if value is None else f"{value:,.2f}"

    rows = [
        ("ticks / batches", f"{b['ticks']} / {b['batches']} ({b['ticks_rejected']} rejected)"),
        ("period", f"{b['first_tick']} to {b['last_tick']}"),
        ("NAV", f"{num(p['start_nav'])} to {num(p['end_nav'])}"),
        ("total return", pct(p["total_return"])),
        ("max drawdown", pct(p["max_drawdown"])),
        ("Sharpe (daily returns)", num(p["sharpe_daily"])),
        (
            "trades / closing / hit rate",
            f"{p['trades']} / {p['closing_trades']} / {pct(p['hit_rate'])}",
        ),
        ("turnover", f"{p['turnover']:.2f}x average NAV"),
        ("fees", num(p["fees"])),
        ("LLM calls / cache hits", f"{llm['calls']} / {llm['cache_hits']}"),
        (
            "LLM tokens (prompt + completion)",
            f"{llm['prompt_tokens']} + {llm['completion_tokens']}",
        ),
    ]
    lines = [
        "# Backtest report",
        "",
        f"{b['symbols']} through the graph ({b['through']}), book `{b['book']}` (fills at "
        f"`{b['fill_at']}`, {b['slippage_bps']} bps slippage, {b['fee_bps']} bps fees), "
        f"LLM `{b['llm']}` on the `{b['llm_backend']}` backend.",
        "",
        "| figure | value |",
        "| --- | --- |",
        *(f"| {name} | {value} |" for name, value in rows),
        "",
        f"![equity and drawdown]({EQUITY_FILE})",
        "",
        "## Runs",
        "",
        "| status | runs |",
        "| --- | --- |",
        *(f"| `{k}` | {v} |" for k, v in summary["runs"].items()),
        "",
        "## Rejections by rule",
        "",
        "| rule | runs |",
        "| --- | --- |",
        *(f"| `{k}` | {v} |" for k, v in summary["rejections_by_rule"].items()),
        "",
        f"Errors by type: {summary['errors_by_type'] or 'none'}. Everything above is in "
        f"`{SUMMARY_FILE}`; every run, decision, fill and completion in `lancedb/`.",
        "",
    ]
    return "\n".join(lines)
