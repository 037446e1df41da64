"""Argument checks whose messages name the setting and the value that was refused."""
from __future__ import annotations

import math


def require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def positive(name: str, value: object) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    require(ok and value > 0, f"{name} must be a positive finite number, got {value!r}")


def integer(name: str, value: object, minimum: int = 1) -> None:
    ok = isinstance(value, int) and not isinstance(value, bool)
    require(ok and value >= minimum, f"{name} must be an integer >= {minimum}, got {value!r}")
