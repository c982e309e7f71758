"""A voxel's value in napari's status bar as a reader reads it: -1000 for air on CT, not -1e+03.

napari writes every floating-point value to three significant digits (``status_format``, format "g"), so
Hounsfield units past ±999 came out in exponent notation (air "-1e+03", bone "1.5e+03") and an MR intensity
of 1,234 as "1.23e+03". Values from 100 to a million are now written whole, as radiology viewers show them;
smaller ones keep napari's three digits (a heatmap's 0.994, 35.2 HU), larger ones napari's notation.
Positions (napari's format "f") and lists (napari formats each item, through this) are left to napari.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

_state: dict[str, Any] = {"original": None}


def status_format(value: Any, precision: int | None = None, format_mode: str = "g") -> str:
    """The napari ``status_format``, except that a float from 100 to a million is written whole."""
    if format_mode == "g" and isinstance(value, (float, np.floating)) and math.isfinite(value) \
            and 100 <= abs(value) < 1e6:
        return f"{value:.0f}"
    return _state["original"](value, precision=precision, format_mode=format_mode)


def install() -> bool:
    """Use ``status_format`` for napari's status values (once per process); False where napari lacks the hook."""
    if _state["original"] is not None:
        return True
    try:
        from napari.utils import status_messages
    except ImportError:
        return False
    original = getattr(status_messages, "status_format", None)
    if original is None:
        return False
    _state["original"] = original
    status_messages.status_format = status_format
    return True
