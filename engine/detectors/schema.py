"""What a detector configuration may hold, checked before anything is built from it.

One check serves ``anomalens train --set``, the viewer's training and every bundle that is loaded: a value
of the wrong type, a non-finite number, or a size far beyond what a scan can need (``input_size: 100000``
would allocate hundreds of gigabytes, ``smoothing_sigma: 1e9`` a kernel larger than memory) is refused with
one line naming the option, before a tensor is allocated. Types come from the config dataclass's
annotations; ranges from ``COMMON_LIMITS`` for options every detector shares (same name, same meaning:
the shared patch-feature plumbing) and from a config class's own ``LIMITS`` (a tuple option's limit bounds
each of its elements). Where options multiply into one network (widths × sizes × members), no per-option
range can bound the product; such a config checks its parameter count with ``check_parameters``.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from typing import Any, get_args, get_origin

from ..errors import ConfigError

#: Ranges (inclusive) of options that mean the same in every detector.
COMMON_LIMITS: dict[str, tuple[float, float]] = {
    "input_size": (32, 1024),
    "batch_size": (1, 1024),
    "score_batch": (1, 1024),
    "smoothing_sigma": (0.0, 64.0),
    "patch_size": (1, 31),
    "epochs": (1, 100_000),
    "fine_tune_epochs": (0, 100_000),
    "lr": (1e-9, 10.0),
    "fine_tune_lr": (1e-9, 10.0),
    "dim": (2, 4096),
    "chunk": (1, 1 << 20),
    "batch_patches": (16, 1 << 22),
    "projection_dim": (1, 4096),
    "max_bank": (1, 1 << 22),
}
#: Options whose values (or elements) come from a fixed set, and what the set is.
def _levels() -> tuple[str, ...]:
    from ..backbones import LEVELS

    return tuple(LEVELS)


COMMON_CHOICES: dict[str, Any] = {"levels": _levels}
#: Any integer option beyond this, or any number beyond this in magnitude, is a forged or mistyped value.
INT_CAP = 1 << 30
FLOAT_CAP = 1e9
#: The most parameters a network described by a configuration may hold: 2**28 float32 values are 1 GiB, about
#: 4 GiB while training (gradients and Adam's two moments), which a workstation holds beside a scan's 4 GiB
#: budget (``engine.io.base``). The largest default network, D2UE's ensemble, holds 13.5 million: ~20× room.
MAX_PARAMETERS = 1 << 28


def check_parameters(count: int, options: str, what: str = "network") -> None:
    """Refuse a configuration whose network would hold more than ``MAX_PARAMETERS`` parameters.

    Called from a config's ``__post_init__`` with the count computed from the options alone, so a forged
    bundle is refused before the network is built; ``options`` names the options that size it.
    """
    if count > MAX_PARAMETERS:
        raise ConfigError(f"options {options} describe a {what} of {count / 1e6:,.0f} million parameters "
                          f"({count * 4 / 2**30:,.1f} GiB); at most {MAX_PARAMETERS / 1e6:,.0f} million are allowed")


def _check_value(name: str, value: Any, hint: Any) -> Any:
    """The value, checked against its annotation (and converted where JSON lost the type: lists → tuples)."""
    origin = get_origin(hint)
    if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
        options = [a for a in get_args(hint) if a is not type(None)]
        if value is None and len(options) < len(get_args(hint)):
            return None
        hint = options[0] if len(options) == 1 else hint
        origin = get_origin(hint)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"option {name} must be true or false, got {value!r}")
    elif hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"option {name} must be a whole number, got {value!r}")
        if abs(value) > INT_CAP:
            raise ConfigError(f"option {name} = {value} is far beyond any sensible value")
    elif hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"option {name} must be a number, got {value!r}")
        value = float(value)
        if not math.isfinite(value) or abs(value) > FLOAT_CAP:
            raise ConfigError(f"option {name} must be a finite number of sensible size, got {value!r}")
    elif hint is str:
        if not isinstance(value, str) or len(value) > 1000:
            raise ConfigError(f"option {name} must be text, got {value!r}")
    elif origin is tuple:
        if not isinstance(value, list | tuple) or len(value) > 64:
            raise ConfigError(f"option {name} must be a list, got {value!r}")
        inner = get_args(hint)[0] if get_args(hint) else Any
        value = tuple(_check_value(f"{name}[{i}]", v, inner) for i, v in enumerate(value))
    return value


def check_config(config_class: type, values: dict[str, Any]) -> dict[str, Any]:
    """``values`` checked for ``config_class`` (types, finiteness, ranges); unknown keys are refused.

    Returns the values ready for the dataclass (JSON lists made tuples where the option is a tuple).
    """
    fields = {f.name: f for f in dataclasses.fields(config_class)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(f"unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(fields))}")
    try:
        hints = typing.get_type_hints(config_class)
    except Exception:  # an annotation that cannot be resolved: check what can be
        hints = {}
    limits = {**COMMON_LIMITS, **getattr(config_class, "LIMITS", {})}
    out = {}
    for key, value in values.items():
        value = _check_value(key, value, hints.get(key, Any))
        if key in limits:
            lo, hi = limits[key]
            for v in value if isinstance(value, tuple) else (value,):
                if isinstance(v, int | float) and not isinstance(v, bool) and not lo <= v <= hi:
                    raise ConfigError(f"option {key} must {'hold values' if isinstance(value, tuple) else 'be'} "
                                      f"between {lo:g} and {hi:g}, got {v:g}")
        if key in COMMON_CHOICES:
            allowed = COMMON_CHOICES[key]()
            items = value if isinstance(value, tuple) else (value,)
            if not items or any(v not in allowed for v in items):
                raise ConfigError(f"option {key} must be {'one or more of' if isinstance(value, tuple) else 'one of'} "
                                  f"{', '.join(allowed)}, got {value!r}")
        out[key] = value
    return out
