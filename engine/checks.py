"""Checks for user-given numbers, shared so every option fails with the same kind of message."""

from __future__ import annotations

import math

from .errors import ConfigError


def _number(name: str, value: object) -> float:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{name} must be a number, got {value!r}") from exc


def check_fraction(name: str, value: object) -> float:
    """A fraction strictly between 0 and 1 (false-positive rates, TPR targets)."""
    v = _number(name, value)
    if not 0.0 < v < 1.0:
        raise ConfigError(f"{name} must be a fraction strictly between 0 and 1, got {value!r}")
    return v


def check_positive(name: str, value: object) -> float:
    """A finite number > 0 (τ, temperatures)."""
    v = _number(name, value)
    if not math.isfinite(v) or v <= 0:
        raise ConfigError(f"{name} must be a finite number > 0, got {value!r}")
    return v
