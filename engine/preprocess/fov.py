"""One physical working grid for every scan a model sees: a square of fixed millimetres and pixels.

Why: detectors resize whatever square they are given to their input size, so anatomy from a scan with a
200 mm field of view and from one with 233 mm would reach the backbone at sizes 16 % apart, and patch
features are not scale invariant. Padding each scan to its own square (what the pipeline did before) kept
the aspect ratio but not the scale. On ``sample:brain1`` (0.78 mm pixels) fitted beside MNI152 (1 mm), that
mismatch cost the Lorentz detector 0.03 pixel AUROC (``plugins/lorentz/README.md``). A model now remembers
the field of view it was trained on (``WorkingGrid``, in its bundle's preprocessing) and every scan it
scores, calibrates or fine-tunes on is resampled to it; ``from_working`` brings maps back to the scan's grid.

The field of view is the largest body extent among the training scans plus a margin, so air beyond the
body is cropped and tissue never is. A scan whose body is larger than that is shrunk to fit (its
``Placement.zoom_out`` > 1 says so) rather than cut.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ConfigError
from .resize import resize_slices

#: Extra field of view around the largest body extent, as a fraction of it.
FOV_MARGIN = 0.1
#: Bounds of the working grid's side when it is chosen from the scans' pixel spacing.
MIN_SIZE, MAX_SIZE = 32, 512
#: The largest working grid a model may name (a bundle is untrusted: a forged 10⁶-pixel side asked for 10 TB)
#: and the widest field of view (no body is 2 m across; a forged 10³⁰ mm turned one slice into 176 mL).
MAX_GRID, MAX_FOV_MM = 2048, 2000.0


@dataclass(frozen=True)
class WorkingGrid:
    """A square of ``fov_mm`` millimetres sampled with ``size`` pixels a side."""

    fov_mm: float
    size: int

    def __post_init__(self) -> None:
        if not (math.isfinite(self.fov_mm) and 0 < self.fov_mm <= MAX_FOV_MM) or not 8 <= self.size <= MAX_GRID:
            raise ConfigError(f"a working grid needs a field of view of 0-{MAX_FOV_MM:.0f} mm and 8-{MAX_GRID} pixels "
                              f"a side, got {self.fov_mm} mm and {self.size} px")

    @property
    def pixel_mm(self) -> float:
        return self.fov_mm / self.size

    def to_dict(self) -> dict[str, Any]:
        return {"fov_mm": float(self.fov_mm), "size": int(self.size)}

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> WorkingGrid | None:
        """None for models saved before working grids existed (they pad each scan to its own square)."""
        if not d:
            return None
        fov, size = d.get("fov_mm") if isinstance(d, dict) else None, d.get("size") if isinstance(d, dict) else None
        if isinstance(fov, bool) or not isinstance(fov, int | float) or isinstance(size, bool) \
                or not isinstance(size, int):
            raise ConfigError(f"a working grid is a field of view in mm and a whole number of pixels, got {d!r:.80}")
        return cls(float(fov), size)


@dataclass(frozen=True)
class Placement:
    """Where one scan's (H, W) grid lies in the working square, so maps can be brought back."""

    shape: tuple[int, int]
    scaled: tuple[int, int]
    offset: tuple[int, int]
    size: int
    zoom_out: float = 1.0

    @property
    def scale(self) -> tuple[float, float]:
        """Working pixels per scan pixel, along rows and columns."""
        return self.scaled[0] / self.shape[0], self.scaled[1] / self.shape[1]

    def to_scan_points(self, points: np.ndarray) -> np.ndarray:
        """(row, col) positions on the working grid → positions on the scan's grid."""
        p = np.asarray(points, np.float32)
        sy, sx = self.scale
        return np.stack([(p[:, 0] - self.offset[0]) / sy, (p[:, 1] - self.offset[1]) / sx], 1).astype(np.float32)


def body_extent_mm(foreground: np.ndarray, spacing_yx: tuple[float, float]) -> float:
    """The larger side, in mm, of the box around all tissue of a stack (0 when there is none)."""
    fg = np.asarray(foreground, bool).reshape(-1, *np.shape(foreground)[-2:]).any(0)
    if not fg.any():
        return 0.0
    rows, cols = np.flatnonzero(fg.any(1)), np.flatnonzero(fg.any(0))
    return float(max((rows[-1] - rows[0] + 1) * spacing_yx[0], (cols[-1] - cols[0] + 1) * spacing_yx[1]))


def grid_for(extents_mm: Sequence[float], spacings_yx: Sequence[tuple[float, float]],
             size: int | None = None) -> WorkingGrid:
    """The working grid of a training set: largest body extent + margin, sampled at the finest spacing.

    ``size`` fixes the side in pixels; otherwise it follows the finest in-plane spacing among the scans,
    within [MIN_SIZE, MAX_SIZE].
    """
    ext = max((float(e) for e in extents_mm), default=0.0)
    if ext <= 0:
        raise ConfigError("none of the scans has tissue to take a field of view from")
    fov = math.ceil(ext * (1 + FOV_MARGIN))
    if size is None:
        finest = min(min(s) for s in spacings_yx)
        size = int(np.clip(round(fov / finest), MIN_SIZE, MAX_SIZE))
    return WorkingGrid(float(fov), int(size))


def place(shape: tuple[int, int], spacing_yx: tuple[float, float], grid: WorkingGrid,
          foreground: np.ndarray | None = None) -> Placement:
    """How a scan of ``shape`` pixels at ``spacing_yx`` mm maps onto ``grid``.

    The scan is resampled to the grid's pixel size and centred; along an axis where it is larger than the
    window, the window is centred on the tissue (``foreground``: a 2-D or 3-D mask) instead. Tissue
    wider than the field of view shrinks the whole scan until it fits (``zoom_out``).
    """
    h, w = int(shape[0]), int(shape[1])
    sy, sx = float(spacing_yx[0]), float(spacing_yx[1])
    if not (sy > 0 and sx > 0 and math.isfinite(sy) and math.isfinite(sx)):
        raise ConfigError(f"pixel spacing must be positive and finite, got {spacing_yx}")
    fg = None if foreground is None else np.asarray(foreground, bool).reshape(-1, h, w).any(0)
    if fg is not None and not fg.any():
        fg = None  # no tissue: place the scan as if none were given
    zoom_out = 1.0
    if fg is not None:
        zoom_out = max(1.0, body_extent_mm(fg, (sy, sx)) / grid.fov_mm)
    px = grid.pixel_mm * zoom_out
    scaled = (max(1, round(h * sy / px)), max(1, round(w * sx / px)))
    offset = []
    for axis, (n_scan, n_scaled) in enumerate(zip((h, w), scaled, strict=True)):
        centre = n_scaled / 2
        if n_scaled > grid.size and fg is not None:
            idx = np.flatnonzero(fg.any(1 - axis))
            centre = (idx[0] + idx[-1] + 1) / 2 * n_scaled / n_scan
        offset.append(math.floor(grid.size / 2 - centre + 0.5))
    return Placement(shape=(h, w), scaled=scaled, offset=(offset[0], offset[1]), size=grid.size, zoom_out=zoom_out)


def shrink_warning(p: Placement, grid: WorkingGrid) -> str | None:
    """What to tell the user when a scan's tissue did not fit the model's field of view (None: it fitted)."""
    if p.zoom_out <= 1.0:
        return None
    return (f"the tissue in this scan is {p.zoom_out:.2f}× wider than the {grid.fov_mm:g} mm the model was "
            "trained on, so it is scored shrunk to fit: anatomy appears smaller than in training")


def _windows(p: Placement) -> tuple[tuple[slice, slice], tuple[slice, slice]]:
    """Matching (scaled-image, working-square) index windows of their overlap."""
    src, dst = [], []
    for n, off in zip(p.scaled, p.offset, strict=True):
        lo, hi = max(0, off), min(p.size, off + n)
        if hi <= lo:
            src.append(slice(0, 0))
            dst.append(slice(0, 0))
        else:
            src.append(slice(lo - off, hi - off))
            dst.append(slice(lo, hi))
    return (src[0], src[1]), (dst[0], dst[1])


def to_working(slices: np.ndarray, p: Placement, fill: float = 0.0) -> np.ndarray:
    """(n, H, W) scan slices → (n, size, size) on the working grid; ``fill`` (air) where the scan has none."""
    arr = np.asarray(slices, np.float32)
    if arr.shape[1:] != p.shape:
        raise ConfigError(f"slices of {arr.shape[1:]} do not match the placement's grid {p.shape}")
    scaled = resize_slices(arr, p.scaled) if p.scaled != p.shape else arr
    out = np.full((len(arr), p.size, p.size), fill, np.float32)
    (ys, xs), (yd, xd) = _windows(p)
    out[:, yd, xd] = scaled[:, ys, xs]
    return out


def from_working(maps: np.ndarray, p: Placement, fill: float = 0.0) -> np.ndarray:
    """(n, size, size) maps → (n, H, W) on the scan's grid; ``fill`` where the scan lay outside the window."""
    arr = np.asarray(maps, np.float32)
    scaled = np.full((len(arr), *p.scaled), fill, np.float32)
    (ys, xs), (yd, xd) = _windows(p)
    scaled[:, ys, xs] = arr[:, yd, xd]
    return resize_slices(scaled, p.shape) if p.scaled != p.shape else scaled


def mask_to_working(mask: np.ndarray, p: Placement) -> np.ndarray:
    """A boolean mask on the working grid (a working pixel is in it when over half of it is)."""
    return to_working(np.asarray(mask, np.float32), p) > 0.5
