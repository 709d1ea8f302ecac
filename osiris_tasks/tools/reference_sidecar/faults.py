"""The faults the reference sidecar injects, so tests exercise a client's retries, timeouts
and response checks against a real socket: latency, error statuses (with Retry-After),
garbage bodies, JSON bodies of the wrong shape, a slow trickle, and for the OpenAI-compatible
API answers cut short and a refused `response_format`.

`Faults` is the validated setting; `in_force` narrows it to a path, `injected_reply` turns
the server's two seeded draws into the reply that replaces a normal answer, if any. The
server applies the latency and the trickle itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

from osiris_tasks.domain.numbers import finite_number
from osiris_tasks.errors import ConfigError

from .replies import _error, _json_reply, _Reply

__all__ = ["GARBAGE_BODY", "Faults"]

GARBAGE_BODY = b"<html>\x00garbage"
# A 2xx JSON object that has none of the fields any endpoint promises.
WRONG_SHAPE = {"unexpected": "injected wrong shape"}


@dataclass
class Faults:
    """Faults injected into every POST except /admin/faults; rates are fractions 0..1.

    `garbage_rate` answers 200 with a non-JSON body, `wrong_shape_rate` 200 with a JSON object
    lacking the endpoint's fields; the two are exclusive, so their sum is at most 1.
    """

    latency_ms: float = 0
    error_rate: float = 0
    garbage_rate: float = 0
    wrong_shape_rate: float = 0
    error_status: int = 503
    retry_after_s: float | None = None
    trickle_ms: float = 0
    # OpenAI-compatible API only: answers cut short (`finish_reason: "length"`), and HTTP 500
    # to `response_format` `json_schema`, as llama.cpp's server answers.
    truncate_rate: float = 0
    refuse_json_schema: bool = False
    # Path prefixes the faults apply to (e.g. "/score"); empty: every faulted endpoint.
    paths: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        self.paths = tuple(self.paths)
        for name, upper in (
            ("latency_ms", math.inf),
            ("trickle_ms", math.inf),
            ("error_rate", 1.0),
            ("garbage_rate", 1.0),
            ("wrong_shape_rate", 1.0),
            ("truncate_rate", 1.0),
        ):
            value = finite_number(getattr(self, name))
            if value is None or not 0 <= value <= upper:
                raise ConfigError(
                    f"{name} must be a number in [0, {upper}], got {getattr(self, name)!r}"
                )
        if self.garbage_rate + self.wrong_shape_rate > 1:
            raise ConfigError("garbage_rate + wrong_shape_rate must not exceed 1")
        status = self.error_status
        if isinstance(status, bool) or not isinstance(status, int) or not 400 <= status <= 599:
            raise ConfigError(f"error_status must be an HTTP error status, got {status!r}")
        retry = self.retry_after_s
        if retry is not None and (finite_number(retry) is None or retry < 0):
            raise ConfigError(f"retry_after_s must be null or a number >= 0, got {retry!r}")


FAULT_FIELDS = frozenset(f.name for f in fields(Faults))


def in_force(faults: Faults, path: str) -> Faults:
    """The faults a POST to endpoint `path` gets: none outside `faults.paths`, when set."""
    if faults.paths and not path.startswith(faults.paths):
        return Faults()
    return faults


def injected_reply(faults: Faults, error_roll: float, body_roll: float) -> _Reply | None:
    """An error, garbage or wrong-shape reply for two draws in [0, 1) of the server's seeded
    RNG, or None for a normal answer."""
    if error_roll < faults.error_rate:
        headers = (
            {} if faults.retry_after_s is None else {"Retry-After": f"{faults.retry_after_s:g}"}
        )
        return _error(faults.error_status, "injected fault", headers=headers)
    if body_roll < faults.garbage_rate:
        return _Reply(200, GARBAGE_BODY, content_type="text/html")
    if body_roll < faults.garbage_rate + faults.wrong_shape_rate:
        return _json_reply(200, WRONG_SHAPE)
    return None
