"""The writer of `test_stalled_commit.py`, run as a script in a process of its own (under strace,
which holds its manifest commit): records the runs named on the command line, prints whether
each was appended (JSON) and logs to stderr.

Usage: python stalled_writer.py URI CLEANUP_OLDER_THAN_S RUN_ID...
"""

from __future__ import annotations

import json
import logging
import sys

from osiris_tasks.store.runstore import RunStore


def main(uri: str, cleanup_older_than_s: str, *run_ids: str) -> None:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    store = RunStore(
        uri, cleanup_older_than_s=float(cleanup_older_than_s), maintain_every_commits=0
    )
    try:
        written = store.record_runs([{"run_id": run_id, "status": "stalled"} for run_id in run_ids])
    finally:
        store.close()
    print(json.dumps(written))


if __name__ == "__main__":
    main(*sys.argv[1:])
