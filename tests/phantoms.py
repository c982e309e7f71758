"""Tiny synthetic brain-like phantoms with optional lesions, shared by tests (built in milliseconds)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def phantom_slices(n: int = 6, size: int = 64, seed: int = 0, lesion: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(n, size, size) float32 slices in [0, 1] — an ellipse of textured tissue in air — and lesion masks."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size - 0.5
    out = np.zeros((n, size, size), np.float32)
    masks = np.zeros((n, size, size), bool)
    for i in range(n):
        a, b = 0.38 + 0.03 * rng.standard_normal(), 0.30 + 0.03 * rng.standard_normal()
        head = (yy / a) ** 2 + (xx / b) ** 2 < 1
        tex = ndimage.gaussian_filter(rng.standard_normal((size, size)).astype(np.float32), 2) * 0.15
        img = np.where(head, 0.5 + tex, 0.0)
        img[(yy / (a * 0.9)) ** 2 + (xx / (b * 0.9)) ** 2 >= 1] *= 0.6  # a darker rim, like skull/CSF
        if lesion:
            cy, cx = rng.uniform(-0.12, 0.12, 2)
            r = 0.08
            m = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
            img[m] = 0.95
            masks[i] = m
        out[i] = np.clip(img, 0, 1)
    return out, masks
