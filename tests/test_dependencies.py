"""The dependency pins: constraints.txt covers every requirement, and the packages whose private
internals we build on are capped below their next minor release."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parent.parent
# Built on their private internals (transport/broker.py, transport/fetch.py, tasks/canvas.py,
# bridge/pubsub_backlog.py): .ci/upstream tries the newest release past the cap.
INTERNALS = ("celery", "kombu", "redis")


def requirements() -> list[Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"].values()
    reqs = [Requirement(r) for r in [*project["dependencies"], *(r for e in extras for r in e)]]
    return [r for r in reqs if canonicalize_name(r.name) != "osiris-tasks"]


def pins() -> dict[str, Version]:
    lines = (REPO / "constraints.txt").read_text().splitlines()
    found = (re.match(r"^([A-Za-z0-9_.\-]+)==(\S+)$", line) for line in lines)
    return {canonicalize_name(m.group(1)): Version(m.group(2)) for m in found if m}


def test_constraints_pin_every_requirement_within_its_range():
    pinned = pins()
    for req in requirements():
        name = canonicalize_name(req.name)
        assert name in pinned, f"{req.name} is not in constraints.txt: run .ci/lock"
        assert req.specifier.contains(pinned[name], prereleases=True), (req, pinned[name])


def test_the_internals_we_build_on_are_capped_below_the_next_minor():
    by_name = {canonicalize_name(r.name): r for r in requirements()}
    for name in INTERNALS:
        spec = by_name[name].specifier
        caps = [Version(s.version) for s in spec if s.operator == "<"]
        assert caps, f"{name} has no upper bound"
        low = min(Version(s.version) for s in spec if s.operator == ">=")
        assert caps[0] <= Version(f"{low.major}.{low.minor + 2}"), (name, str(spec))
