"""Finite numbers, the one way: what may be used as a price, a size, a score or a NAV."""

from __future__ import annotations

import math
from typing import Any

__all__ = ["finite_number", "parse_finite"]


def finite_number(value: Any) -> float | None:
    """`value` as a finite float if it is a JSON number, else None: bools, strings, NaN, inf
    and ints too large for a float are not."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def parse_finite(text: str | bytes | None) -> float | None:
    """A finite float parsed from text (a Redis value, a prompt field), else None."""
    if text is None:
        return None
    try:
        number = float(text)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None
