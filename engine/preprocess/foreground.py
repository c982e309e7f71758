"""Tissue-versus-air masks: metrics are computed inside them and synthetic anomalies placed inside them.

Counting the air around a head as "correctly normal" would inflate pixel AUROC, which is why pixel
metrics are restricted to the foreground.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def foreground_mask(slices: np.ndarray, min_fraction: float = 0.002) -> np.ndarray:
    """A boolean tissue mask for normalised slices (n, H, W) or one slice (H, W).

    Otsu's threshold over the whole stack separates air from tissue; holes are filled and specks removed
    per slice. Slices where this finds nothing get an all-False mask (e.g. slices above the head).
    """
    from skimage.filters import threshold_otsu

    arr = np.asarray(slices, dtype=np.float32)
    single = arr.ndim == 2
    if single:
        arr = arr[None]
    if float(arr.max()) <= float(arr.min()):
        out = np.zeros(arr.shape, dtype=bool)
        return out[0] if single else out
    sample = arr.ravel()[:: max(1, arr.size // 1_000_000)]
    # Otsu on tissue-rich data can split grey from white matter; cap it low so all tissue counts.
    t = min(float(threshold_otsu(sample)), float(np.percentile(sample, 50)) * 0.5 + 0.05)
    t = max(t, float(arr.min()) + 1e-6)
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
