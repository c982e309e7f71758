"""CutPaste with Poisson blending: a patch of tissue moved (and resized/rotated) to another place.

The pasted patch keeps its own texture but matches its new surroundings at the border, so the only cue
left is that the structure does not belong there, which is closer to a real lesion than a hard-edged
rectangle.

Labels: by default the mask is where the blended slice differs from the original by more than
``threshold`` (holes filled). A pixel whose value barely changed is not an anomaly a detector could or
should find, and labelling the whole rectangle would teach the classifier to call normal-looking
tissue abnormal. When no placement changes anything visibly (for example a constant slice, where
blending a constant patch reproduces the slice exactly) the generator retries ``max_tries`` times and
then falls back to the patch area as the label, with the slice returned unchanged; ``label="patch"``
always uses the patch area. Placements whose blend overshoots [0, 1] over more than 5 % of the patch are
also retried (clipping would leave a flat white or black plate); if every try overshoots, the first
one is used.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from scipy import ndimage

from ..errors import ConfigError, InvalidVolumeError
from ._common import as_foreground, as_image, check_range, log_uniform, pick_point
from .poisson import solve_rect

_OVERSHOOT = 0.05  # blended values this far outside [0, 1] count as saturated
_MAX_SATURATED = 0.05  # placements with more saturated pixels than this fraction are tried again


def _patch_shape(
    rng: np.random.Generator, shape: tuple[int, int], size_range: tuple[float, float], max_size: int
) -> tuple[int, int]:
    """A random rectangle: side relative to the slice, aspect ratio between 1:2 and 2:1, at least 3×3."""
    side = min(shape) * rng.uniform(*size_range)
    aspect = log_uniform(rng, 0.5, 2.0)
    h = int(np.clip(round(side * np.sqrt(aspect)), 3, min(max_size, shape[0])))
    w = int(np.clip(round(side / np.sqrt(aspect)), 3, min(max_size, shape[1])))
    return h, w


def _sample_patch(
    rng: np.random.Generator,
    src: np.ndarray,
    centre: tuple[int, int],
    h: int,
    w: int,
    scale_range: tuple[float, float],
    max_rotation: float,
) -> np.ndarray:
    """Read an (h, w) patch around ``centre`` of ``src``, rotated, scaled and possibly mirrored."""
    if scale_range == (1.0, 1.0) and max_rotation == 0.0:
        top = int(np.clip(centre[0] - h // 2, 0, src.shape[0] - h))
        left = int(np.clip(centre[1] - w // 2, 0, src.shape[1] - w))
        return src[top : top + h, left : left + w].astype(np.float64)
    scale = log_uniform(rng, *scale_range)
    angle = rng.uniform(-max_rotation, max_rotation)
    mirror = 1.0 if rng.random() < 0.5 else -1.0
    dy = (np.arange(h) - (h - 1) / 2.0)[:, None]
    dx = (np.arange(w) - (w - 1) / 2.0)[None, :] * mirror
    c, s = np.cos(angle), np.sin(angle)
    ys = centre[0] + (c * dy - s * dx) / scale
    xs = centre[1] + (s * dy + c * dx) / scale
    return ndimage.map_coordinates(src.astype(np.float64, copy=False), [ys, xs], order=1, mode="reflect")


def cutpaste_poisson(
    image: np.ndarray,
    rng: np.random.Generator,
    foreground: np.ndarray | None = None,
    source: np.ndarray | None = None,
    *,
    source_foreground: np.ndarray | None = None,
    size_range: tuple[float, float] = (0.06, 0.3),
    max_size: int = 80,
    scale_range: tuple[float, float] = (0.75, 1.33),
    max_rotation: float = np.pi,
    label: Literal["difference", "patch"] = "difference",
    threshold: float = 0.03,
    max_tries: int = 5,
) -> tuple[np.ndarray, np.ndarray]:
    """Cut a random patch from ``source`` (default: the slice itself) and Poisson-blend it elsewhere.

    Args:
        image: (H, W) slice in [0, 1]; not modified.
        rng: the only source of randomness, so a seed reproduces the anomaly.
        foreground: tissue mask of ``image``; the patch centre lands in it and only its pixels change.
            ``None`` or all-False places the patch anywhere.
        source: another (H', W') slice to cut from (cross-slice anomalies); default ``image``.
        source_foreground: tissue mask of ``source`` for picking the cut location. Defaults to
            ``foreground`` when cutting from the slice itself, else anywhere.
        size_range: patch side as a fraction of the slice's shorter side.
        max_size: upper bound of a patch side in pixels, which keeps the solve cheap.
        scale_range: resize factor applied to the source content.
        max_rotation: rotation of the source content in radians, uniform in ±max_rotation.
        label: ``"difference"`` (changed pixels) or ``"patch"`` (the blended rectangle); see module doc.
        threshold: absolute intensity change that counts as anomalous for ``label="difference"``.
        max_tries: placements tried before falling back to the patch-area label.

    Returns:
        The float32 slice with the anomaly (clipped to [0, 1]) and a non-empty boolean mask. Pixels
        outside the pasted rectangle are exactly unchanged.
    """
    img = as_image(image)
    shape = img.shape
    fg = as_foreground(foreground, shape)
    if label not in ("difference", "patch"):
        raise ConfigError(f"label must be 'difference' or 'patch', got {label!r}.")
    check_range("size_range", size_range, 0.0, 1.0)
    check_range("scale_range", scale_range, 1e-3)
    if max_size < 3 or max_tries < 1:
        raise ConfigError("max_size must be at least 3 and max_tries at least 1.")
    if min(shape) < 3:
        raise InvalidVolumeError(f"CutPaste needs a slice of at least 3×3 pixels, got {shape}.")
    if source is None:
        src, src_fg = img, (fg if source_foreground is None else as_foreground(source_foreground, shape))
    else:
        src = as_image(source)
        src_fg = as_foreground(source_foreground, src.shape)

    saturated_candidate: tuple[tuple[slice, slice], np.ndarray, np.ndarray] | None = None
    invisible: tuple[tuple[slice, slice], np.ndarray] | None = None
    for _ in range(max_tries):
        h, w = _patch_shape(rng, shape, size_range, max_size)
        cy, cx = pick_point(rng, shape, fg)
        top = int(np.clip(cy - h // 2, 0, shape[0] - h))
        left = int(np.clip(cx - w // 2, 0, shape[1] - w))
        sc = pick_point(rng, src.shape, src_fg)
        if source is None:  # cut from somewhere else, so the patch is not pasted onto itself
            for _ in range(8):
                if max(abs(sc[0] - cy), abs(sc[1] - cx)) >= max(h, w) // 2:
                    break
                sc = pick_point(rng, src.shape, src_fg)
        patch = _sample_patch(rng, src, sc, h, w, scale_range, max_rotation)

        region = (slice(top, top + h), slice(left, left + w))
        old = img[region]
        raw = solve_rect(old, patch)
        new = np.clip(raw, 0.0, 1.0).astype(np.float32)
        area = np.zeros((h, w), bool)
        area[1:-1, 1:-1] = True  # the border is the Dirichlet boundary and never changes
        if fg is not None:
            new = np.where(fg[region], new, old)
            area &= fg[region]
        if not area.any():
            continue
        if label == "patch":
            local = area
        else:
            local = ndimage.binary_fill_holes(np.abs(new - old) > threshold) & area
            if not local.any():
                invisible = invisible or (region, area)
                continue
        # Blending a patch with a strong edge next to a bright border can overshoot far beyond [0, 1];
        # clipping then leaves a flat white or black plate, which no real lesion looks like.
        if float(((raw < -_OVERSHOOT) | (raw > 1.0 + _OVERSHOOT))[area].mean()) > _MAX_SATURATED:
            saturated_candidate = saturated_candidate or (region, new, local)
            continue
        return _compose(img, region, new, local)

    if saturated_candidate is not None:
        return _compose(img, *saturated_candidate)
    # Nothing visible could be made (e.g. a constant slice): unchanged slice, patch-area label.
    if invisible is None:
        h, w = min(3, shape[0]), min(3, shape[1])
        cy, cx = pick_point(rng, shape, fg)
        top, left = int(np.clip(cy - 1, 0, shape[0] - h)), int(np.clip(cx - 1, 0, shape[1] - w))
        area = np.zeros((h, w), bool)
        area[1:-1, 1:-1] = True
        invisible = ((slice(top, top + h), slice(left, left + w)), area)
    return _compose(img, invisible[0], img[invisible[0]], invisible[1])


def _compose(
    img: np.ndarray, region: tuple[slice, slice], new: np.ndarray, local: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Write the blended rectangle into a copy of the slice and the label into an empty mask."""
    out = img.copy()
    out[region] = new
    mask = np.zeros(img.shape, bool)
    mask[region] = local
    return out, mask
