"""docker-compose.yml against the Compose Specification's JSON schema, loaded as compose loads
it (variables interpolated), with and without FLOWER_BASIC_AUTH: no engine runs here.

`tests/data/compose-spec.json` is the schema of github.com/compose-spec/compose-spec
(`schema/compose-spec.json` at 170098ba07d9, 2026-06-23; Apache-2.0), the one `docker compose`
validates with.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent.parent
SCHEMA = json.loads((REPO / "tests" / "data" / "compose-spec.json").read_text())
VALIDATOR = jsonschema.Draft7Validator(SCHEMA)  # the schema's `$schema`: draft-07
# ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, ${VAR?error}; `$$` is a literal `$`.
VARIABLE = re.compile(r"\$\$|\$\{(?P<name>\w+)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}|\$(?P<bare>\w+)")


class MissingVariable(Exception):
    pass


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's variable interpolation of a whole file (what every compose command does first)."""

    def one(match: re.Match) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group("name") or match.group("bare")
        op, arg, value = match.group("op"), match.group("arg") or "", env.get(name)
        unset = value is None or (op is not None and op.startswith(":") and value == "")
        if op and op.endswith("?") and unset:
            raise MissingVariable(f"{name}: {arg}")
        if op and op.endswith("-") and unset:
            return arg
        return value or ""

    return VARIABLE.sub(one, text)


def load(env: dict[str, str]) -> dict:
    return yaml.safe_load(interpolate((REPO / "docker-compose.yml").read_text(), env))


@pytest.mark.parametrize("env", [{}, {"FLOWER_BASIC_AUTH": "ops:secret"}], ids=["no-auth", "auth"])
def test_the_compose_file_loads_and_is_valid(env):
    compose = load(env)  # without FLOWER_BASIC_AUTH too: every command works
    VALIDATOR.validate(compose)
    flower_env = compose["services"]["flower"]["environment"]
    assert (flower_env["FLOWER_BASIC_AUTH"] or "") == env.get("FLOWER_BASIC_AUTH", "")


def test_without_flower_basic_auth_only_flower_fails():
    compose = load({})
    command = compose["services"]["flower"]["command"]
    assert command[:2] == ["sh", "-c"]
    base = {"PATH": "/usr/bin:/bin"}
    script = command[2].replace("exec celery", "exec echo celery")
    refused = subprocess.run(["sh", "-c", script], env=base, capture_output=True, text=True)
    assert refused.returncode != 0 and "set FLOWER_BASIC_AUTH=user:password" in refused.stderr
    env = {**base, "FLOWER_BASIC_AUTH": "ops:secret"}
    started = subprocess.run(["sh", "-c", script], env=env, capture_output=True, text=True)
    assert started.returncode == 0 and "--basic-auth=ops:secret" in started.stdout


def test_the_schema_check_catches_a_bad_file():
    compose = load({})
    compose["services"]["bridge"]["stop_grace_period"] = ["30s"]  # not a duration string
    with pytest.raises(jsonschema.ValidationError):
        VALIDATOR.validate(compose)


def test_grace_periods_cover_what_each_process_must_finish():
    services = load({})["services"]
    for worker in ("worker-default", "worker-sidecar", "worker-tts"):
        assert services[worker]["stop_grace_period"] == "120s"  # > the 90 s task time limit
    assert services["bridge"]["stop_grace_period"] == "30s"  # > its 10 s drain
