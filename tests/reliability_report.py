"""Measurements of the reliability and security tests, for the README's reliability table.

Tests call `record(test, **numbers)`: the numbers are printed (`pytest -rP` shows them) and, when
`OSIRIS_RELIABILITY_REPORT` names a file, appended to it as one JSON line.
`python tests/reliability_report.py` runs both suites with that set and prints every
measurement per test.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import orjson

REPORT_ENV = "OSIRIS_RELIABILITY_REPORT"
SUITES = ("tests/reliability/test_reliability.py", "tests/reliability/test_security.py")


def record(test: str, **numbers) -> None:
    """Keep what `test` measured (rounded floats, counts, short notes)."""
    numbers = {k: round(v, 2) if isinstance(v, float) else v for k, v in numbers.items()}
    print(f"[reliability] {test}: {numbers}")
    path = os.environ.get(REPORT_ENV)
    if path:
        with open(path, "ab") as out:
            out.write(orjson.dumps({"test": test, **numbers}) + b"\n")


def main() -> int:
    """Run both suites, then print what each test measured; exits with pytest's status."""
    repo = Path(__file__).resolve().parent.parent
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.jsonl"
        env = {**os.environ, REPORT_ENV: str(report)}
        status = subprocess.call([sys.executable, "-m", "pytest", "-q", *SUITES], cwd=repo, env=env)
        lines = report.read_bytes().splitlines() if report.exists() else []
    for line in lines:
        entry = orjson.loads(line)
        test = entry.pop("test")
        print(f"{test}: " + ", ".join(f"{k}={v}" for k, v in entry.items()))
    return status


if __name__ == "__main__":
    sys.exit(main())
