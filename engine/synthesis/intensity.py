"""Gaussian intensity anomalies: a smooth bright or dark blob, like a tumour, cyst or oedema.

The blob is an elliptical Gaussian truncated at ``truncate`` standard deviations, so pixels beyond that
ellipse are exactly unchanged and the work stays local to a small window.
"""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError
from ._common import as_foreground, as_image, check_range, log_uniform, pick_point


def gaussian_intensity(
    image: np.ndarray,
    rng: np.random.Generator,
    foreground: np.ndarray | None = None,
    *,
    sigma_range: tuple[float, float] = (0.02, 0.08),
    amplitude_range: tuple[float, float] = (0.15, 0.5),
    mask_fraction: float = 0.3,
    truncate: float = 3.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Add or subtract a random elliptical Gaussian blob centred in the tissue.

    The sign is random, but flipped when the tissue at the centre has no headroom in that direction
    (a bright blob on already-white tissue would be clipped away and leave a label with no anomaly).

    Args:
        image: (H, W) slice in [0, 1]; not modified.
        rng: the only source of randomness.
        foreground: tissue mask; the centre lies in it and only its pixels change (``None`` or
            all-False: anywhere).
        sigma_range: blob standard deviation along its long axis, as a fraction of the shorter side
            (at least one pixel).
        amplitude_range: peak intensity change.
        mask_fraction: the label is where the blob exceeds this fraction of its peak.
        truncate: support radius of the blob in standard deviations.

    Returns:
        The float32 slice (clipped to [0, 1]) and the non-empty boolean label.
    """
    img = as_image(image)
    shape = img.shape
    fg = as_foreground(foreground, shape)
    check_range("sigma_range", sigma_range, 0.0)
    check_range("amplitude_range", amplitude_range, 0.0, 1.0)
    if not (0.0 < mask_fraction <= 1.0) or truncate <= 0:
        raise ConfigError("mask_fraction must be in (0, 1] and truncate positive.")

    sig_long = max(1.0, min(shape) * rng.uniform(*sigma_range))
    sig_short = max(1.0, sig_long / log_uniform(rng, 1.0, 2.0))
    angle = rng.uniform(0.0, np.pi)
    amp = rng.uniform(*amplitude_range)
    sign = 1.0 if rng.random() < 0.5 else -1.0
    cy, cx = pick_point(rng, shape, fg)

    r = int(np.ceil(truncate * sig_long))
    y0, y1 = max(0, cy - r), min(shape[0], cy + r + 1)
    x0, x1 = max(0, cx - r), min(shape[1], cx + r + 1)
    dy = (np.arange(y0, y1) - cy)[:, None].astype(np.float64)
    dx = (np.arange(x0, x1) - cx)[None, :].astype(np.float64)
    c, s = np.cos(angle), np.sin(angle)
    q = ((c * dy + s * dx) / sig_long) ** 2 + ((-s * dy + c * dx) / sig_short) ** 2
    blob = np.where(q <= truncate * truncate, np.exp(-0.5 * q), 0.0)

    old = img[y0:y1, x0:x1]
    level = float(old[blob >= 0.5].mean())
    if sign > 0 and 1.0 - level < 0.5 * amp and level >= 0.5 * amp:
        sign = -1.0
    elif sign < 0 and level < 0.5 * amp and 1.0 - level >= 0.5 * amp:
        sign = 1.0
    new = np.clip(old + (sign * amp) * blob, 0.0, 1.0).astype(np.float32)
    local = blob >= mask_fraction
    if fg is not None:
        inside = fg[y0:y1, x0:x1]
        new = np.where(inside, new, old)
        local &= inside
    out = img.copy()
    out[y0:y1, x0:x1] = new
    mask = np.zeros(shape, bool)
    mask[y0:y1, x0:x1] = local
    return out, mask
