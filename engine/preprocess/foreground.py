"""Tissue-versus-air masks: metrics are computed inside them and synthetic anomalies placed inside them.

Counting the air around a head as "correctly normal" would inflate pixel AUROC, which is why pixel
metrics are restricted to the foreground.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def tissue_threshold(normalised: np.ndarray) -> float | None:
    """The normalised intensity above which a voxel is tissue, from a scan's voxels (None: a constant scan).

    Otsu's threshold separates air from tissue; on tissue-rich data it can split grey from white matter, so
    it is capped low and all tissue counts. Taken from the whole scan (``Volume.intensity_reference`` for a
    slice selection), so a slice's mask does not depend on which other slices were loaded with it.
    """
    from skimage.filters import threshold_otsu

    arr = np.asarray(normalised, dtype=np.float32).ravel()
    sample = arr[:: max(1, arr.size // 1_000_000)]
    low = float(sample.min())
    if float(sample.max()) <= low:
        return None
    t = min(float(threshold_otsu(sample)), float(np.percentile(sample, 50)) * 0.5 + 0.05)
    return max(t, low + 1e-6)


def foreground_mask(slices: np.ndarray, min_fraction: float = 0.002, threshold: float | None = None) -> np.ndarray:
    """A boolean tissue mask for normalised slices (n, H, W) or one slice (H, W).

    Voxels above ``threshold`` (default: ``tissue_threshold`` of these slices) are tissue; holes are filled
    and specks removed per slice, so any batch of slices gets the same masks as the whole stack. Slices
    where this finds nothing get an all-False mask (e.g. slices above the head).
    """
    arr = np.asarray(slices, dtype=np.float32)
    single = arr.ndim == 2
    if single:
        arr = arr[None]
    t = tissue_threshold(arr) if threshold is None else threshold
    if t is None:
        out = np.zeros(arr.shape, dtype=bool)
        return out[0] if single else out
    mask = arr > t
    min_px = max(1, int(min_fraction * arr.shape[1] * arr.shape[2]))
    out = np.zeros_like(mask)
    for i, m in enumerate(mask):
        m = ndimage.binary_opening(m, iterations=1)
        labels, n = ndimage.label(m)
        if n == 0:
            continue
        sizes = ndimage.sum_labels(m, labels, index=np.arange(1, n + 1))
        keep = np.flatnonzero(sizes >= min_px) + 1
        m = np.isin(labels, keep)
        out[i] = ndimage.binary_fill_holes(m)
    return out[0] if single else out


def interior_mask(foreground: np.ndarray, margin: float) -> np.ndarray:
    """The part of each slice's foreground at least ``margin`` × the slice's longer side from its outline.

    Where synthetic anomalies go: blobs straddling the body outline (scalp, skull, skin) teach a
    classifier that outline shapes are anomalous, and real scans whose outline differs from the normals'
    then light up along the rim (measured on brain1, plugins/lorentz/README.md). A slice whose interior is
    empty keeps its whole foreground, so every slice can still carry an anomaly.

    Args:
        foreground: Boolean masks (n, H, W) or one (H, W).
        margin: Distance as a fraction of max(H, W); 0 returns the foreground unchanged.
    """
    fg = np.asarray(foreground, dtype=bool)
    if margin <= 0:
        return fg.copy()
    single = fg.ndim == 2
    stack = fg[None] if single else fg
    r = margin * max(stack.shape[-2:])
    out = np.empty_like(stack)
    for i, m in enumerate(stack):
        inner = ndimage.distance_transform_edt(np.pad(m, 1))[1:-1, 1:-1] >= r
        out[i] = inner if inner.any() else m
    return out[0] if single else out
