"""The report every benchmark writes into: figures, each a ratio against a baseline measured in
the same run, saved as JSON and as a markdown table under `benchmarks/results/`."""

from __future__ import annotations

import json
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Figure", "Report", "timed"]

RESULTS_DIR = Path(__file__).resolve().parent / "results"


@dataclass
class Figure:
    """One measured value; `ratio` is value / baseline_value when a baseline is given."""

    benchmark: str
    name: str
    value: float
    unit: str
    baseline: str | None = None
    baseline_value: float | None = None
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        if not self.baseline_value:
            return None
        return self.value / self.baseline_value


class Report:
    """Figures of one run of the suite, in the order they were measured."""

    def __init__(self, *, quick: bool):
        self.quick = quick
        self.started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        self.figures: list[Figure] = []
        self.notes: list[str] = []

    def add(
        self,
        benchmark: str,
        name: str,
        value: float,
        unit: str,
        *,
        baseline: Figure | None = None,
        **params: Any,
    ) -> Figure:
        """Record a figure, relative to `baseline` (a figure of the same run) if given."""
        figure = Figure(
            benchmark,
            name,
            value,
            unit,
            baseline=baseline.name if baseline else None,
            baseline_value=baseline.value if baseline else None,
            params=params,
        )
        self.figures.append(figure)
        ratio = f"  ({figure.ratio:.2f}x {figure.baseline})" if figure.ratio is not None else ""
        print(f"[{benchmark}] {name}: {_number(value)} {unit}{ratio}", flush=True)
        return figure

    def note(self, text: str) -> None:
        self.notes.append(text)
        print(f"  note: {text}", flush=True)

    def as_dict(self) -> dict[str, Any]:
        return {
            "started": self.started,
            "quick": self.quick,
            "machine": {
                "python": platform.python_version(),
                "platform": platform.platform(),
                "cpus": __import__("os").cpu_count(),
            },
            "figures": [{**asdict(f), "ratio": f.ratio} for f in self.figures],
            "notes": self.notes,
        }

    def markdown(self) -> str:
        lines = [
            f"# osiris_tasks benchmarks ({'quick' if self.quick else 'full'}, {self.started})",
            "",
            "| benchmark | figure | value | unit | vs baseline | ratio |",
            "| --- | --- | ---: | --- | --- | ---: |",
        ]
        for f in self.figures:
            ratio = f"{f.ratio:.2f}x" if f.ratio is not None else ""
            lines.append(
                f"| {f.benchmark} | {f.name} | {_number(f.value)} | {f.unit} | "
                f"{f.baseline or ''} | {ratio} |"
            )
        if self.notes:
            lines += ["", "Notes:", "", *(f"- {note}" for note in self.notes)]
        return "\n".join(lines) + "\n"

    def write(self, directory: Path = RESULTS_DIR) -> tuple[Path, Path]:
        """`<stamp>.json` and `<stamp>.md`, plus copies as `latest.*`; returns the two paths."""
        directory.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%dT%H%M%S") + ("-quick" if self.quick else "")
        payload, table = json.dumps(self.as_dict(), indent=2), self.markdown()
        for name in (stamp, "latest"):
            (directory / f"{name}.json").write_text(payload)
            (directory / f"{name}.md").write_text(table)
        return directory / f"{stamp}.json", directory / f"{stamp}.md"


def timed(fn, *args, **kwargs) -> tuple[Any, float]:
    """`(fn(*args, **kwargs), seconds)`."""
    started = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - started


def _number(value: float) -> str:
    if isinstance(value, int) or float(value).is_integer():
        return f"{int(value)}"
    return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
