"""Display windows: the scan's own window first, else a preset from ``resources/window_presets.json``.

Presets are data (like 3D Slicer's window/level presets file) so a site can read and extend them without
touching code. Everything that turns a window into display limits goes through :func:`window_to_limits`,
the one function the viewer and exports share. No UI toolkit here: napari only receives the numbers.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

import numpy as np

from .errors import ConfigError
from .volume import Volume, Window

PRESETS_FILE = "window_presets.json"
#: Voxels sampled for percentile windows: enough for stable percentiles, cheap on a 512³ scan.
_MAX_SAMPLE = 2_000_000


@dataclass(frozen=True)
class WindowPreset:
    """A named window for one modality, in that modality's units (Hounsfield units for CT)."""

    name: str
    modality: str
    center: float
    width: float

    @property
    def window(self) -> Window:
        return Window(center=self.center, width=self.width, name=self.name)


@dataclass(frozen=True)
class PresetTable:
    """The parsed presets file: presets, the default preset per modality, and the percentile fallback."""

    presets: tuple[WindowPreset, ...]
    defaults: dict[str, str]
    fallback_percentiles: tuple[float, float]

    def for_modality(self, modality: str) -> list[WindowPreset]:
        """Presets that apply to ``modality`` (case-insensitive), in file order."""
        m = modality.upper()
        return [p for p in self.presets if p.modality.upper() == m]

    def get(self, name: str) -> WindowPreset:
        """The preset called ``name`` (case-insensitive).

        Raises:
            ConfigError: no such preset; the message lists the known names.
        """
        for p in self.presets:
            if p.name.lower() == name.strip().lower():
                return p
        raise ConfigError(f"unknown window preset {name!r}; known: {', '.join(p.name for p in self.presets)}")


def window_to_limits(center: float, width: float) -> tuple[float, float]:
    """(low, high) display limits of a centre/width window, as napari's ``contrast_limits`` want them.

    DICOM (PS3.3 C.11.2.1.2) maps ``center - width/2 … center + width/2`` to the display range; a width
    below 1 is not a window (the standard requires ≥ 1), so it is refused rather than shown as a blank
    image.

    Raises:
        ConfigError: the centre or width is not finite, or the width is below 1.
    """
    c, w = float(center), float(width)
    if not (math.isfinite(c) and math.isfinite(w)):
        raise ConfigError(f"a window needs a finite centre and width, got {center!r}/{width!r}")
    if w < 1.0:
        raise ConfigError(f"a window width must be at least 1, got {width!r}")
    return (c - w / 2.0, c + w / 2.0)


def parse_presets(data: dict[str, Any]) -> PresetTable:
    """Check and parse the presets file's JSON object (kept separate so tests can feed broken files).

    Raises:
        ConfigError: a missing key, a non-numeric value, a width below 1 or a default naming no preset.
    """
    if not isinstance(data, dict) or int(data.get("schema_version", 0)) != 1:
        raise ConfigError(f"{PRESETS_FILE} must be a JSON object with schema_version 1")
    presets = []
    for entry in data.get("presets", []):
        try:
            p = WindowPreset(str(entry["name"]), str(entry.get("modality", "CT")), float(entry["center"]),
                             float(entry["width"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"bad window preset {entry!r} in {PRESETS_FILE}: {exc}") from exc
        window_to_limits(p.center, p.width)  # refuses impossible windows early
        presets.append(p)
    table = PresetTable(tuple(presets), {str(k).upper(): str(v) for k, v in (data.get("defaults") or {}).items()},
                        tuple(float(x) for x in data.get("fallback_percentiles", (0.5, 99.5))))  # type: ignore[arg-type]
    for name in table.defaults.values():
        table.get(name)
    lo, hi = table.fallback_percentiles
    if not 0.0 <= lo < hi <= 100.0:
        raise ConfigError(f"fallback_percentiles in {PRESETS_FILE} must satisfy 0 <= low < high <= 100")
    return table


@cache
def load_presets() -> PresetTable:
    """The presets shipped in ``anomalens.resources`` (read once)."""
    text = resources.files("anomalens.resources").joinpath(PRESETS_FILE).read_text(encoding="utf-8")
    return parse_presets(json.loads(text))


def percentile_limits(array: np.ndarray, percentiles: tuple[float, float] = (0.5, 99.5)) -> tuple[float, float]:
    """Robust limits from the scan's own intensities (for MR and others without absolute units).

    Constant air around the body (often exactly the minimum) would drag the low percentile down, so the
    minimum value is ignored when other values exist. A constant image gets a window of width 1.
    """
    a = np.asarray(array).ravel()
    if a.size > _MAX_SAMPLE:
        a = a[:: a.size // _MAX_SAMPLE + 1]
    a = a[np.isfinite(a)]
    if a.size == 0:
        return (0.0, 1.0)
    body = a[a > a.min()]
    if body.size:
        a = body
    lo, hi = (float(v) for v in np.percentile(a, percentiles))
    if hi <= lo:
        return (lo - 0.5, lo + 0.5)
    return (lo, hi)


def default_window_limits(volume: Volume, preset: str | None = None) -> tuple[tuple[float, float], str]:
    """Display limits for a scan and where they came from (for a status line).

    Order: an explicit ``preset``; the file's own first valid window; the modality's default preset;
    percentiles of the scan.
    """
    table = load_presets()
    if preset:
        p = table.get(preset)
        return window_to_limits(p.center, p.width), f"preset {p.name}"
    for w in volume.windows:
        try:
            return window_to_limits(w.center, w.width), f"file window {w.name}".strip()
        except ConfigError:
            continue
    name = table.defaults.get(volume.modality.upper())
    if name:
        p = table.get(name)
        return window_to_limits(p.center, p.width), f"preset {p.name}"
    return percentile_limits(volume.array, table.fallback_percentiles), "percentiles"
