"""A voxel's value in napari's status bar as a reader reads it: -1000 for air on CT, not -1e+03.

napari writes every floating-point value to three significant digits (``status_format``, format "g"), so
Hounsfield units past ±999 came out in exponent notation (air "-1e+03", bone "1.5e+03") and an MR intensity
of 1,234 as "1.23e+03". Values from 100 to a million are now written whole, as radiology viewers show them;
smaller ones keep napari's three digits (a heatmap's 0.994, 35.2 HU), larger ones napari's notation.
Positions (napari's format "f") are left as they are.
"""

from __future__ import annotations

import math
from typing import Any

_state = {"installed": False}


def readable(value: Any, precision: int | None = None, format_mode: str = "g", *, original: Any) -> str:
    """``original`` (napari's ``status_format``), except that a float from 100 to 1e6 is written whole."""
    if format_mode == "g" and not isinstance(value, (str, bytes, bool)):
        try:
            v = float(value)
        except (TypeError, ValueError):
            v = math.nan
        if math.isfinite(v) and 100 <= abs(v) < 1e6 and not isinstance(value, int):
            return f"{v:.0f}"
    return original(value, precision=precision, format_mode=format_mode)


def install() -> bool:
    """Use ``readable`` for napari's status values (once per process); False where napari lacks the hook."""
    if _state["installed"]:
        return True
    try:
        from napari.utils import status_messages
    except ImportError:
        return False
    original = getattr(status_messages, "status_format", None)
    if original is None:
        return False

    def status_format(value: Any, precision: int | None = None, format_mode: str = "g") -> str:
        if isinstance(value, (list, tuple)) or (hasattr(value, "__len__") and not isinstance(value, str)):
            return original(value, precision=precision, format_mode=format_mode)  # napari recurses into ours
        return readable(value, precision, format_mode, original=original)

    status_format.__wrapped__ = original  # type: ignore[attr-defined]
    status_messages.status_format = status_format
    _state["installed"] = True
    return True
