"""Redis scripts, one `.lua` file each beside this module, loaded one way: `script(client, name)`
registers the file's source with redis-py (EVALSHA, the source sent again if Redis lost it)."""

from __future__ import annotations

from functools import cache
from importlib.resources import files
from typing import Any

__all__ = ["script", "source"]


@cache
def source(name: str) -> str:
    """The text of `<name>.lua`."""
    return (files(__package__) / f"{name}.lua").read_text()


def script(client: Any, name: str) -> Any:
    """`<name>.lua` registered on `client` (a redis-py `Script`, called with keys and args)."""
    return client.register_script(source(name))
