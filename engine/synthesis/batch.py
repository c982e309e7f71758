"""Choosing an anomaly kind per slice, and anomaly batches for training a classifier."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import ConfigError, InvalidVolumeError
from .cutpaste import cutpaste_poisson
from .deformation import source_deformation
from .intensity import gaussian_intensity

ANOMALY_KINDS: tuple[str, ...] = ("cutpaste", "gaussian", "deformation")


def _check_kinds(kinds: Sequence[str]) -> tuple[str, ...]:
    kinds = tuple(kinds)
    bad = [k for k in kinds if k not in ANOMALY_KINDS]
    if not kinds or bad:
        raise ConfigError(f"Anomaly kinds must be a non-empty subset of {ANOMALY_KINDS}, got {kinds}.")
    return kinds


def random_anomaly(
    image: np.ndarray,
    rng: np.random.Generator,
    foreground: np.ndarray | None = None,
    kinds: Sequence[str] = ANOMALY_KINDS,
    source: np.ndarray | None = None,
    *,
    source_foreground: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """One anomaly of a kind drawn uniformly from ``kinds``; ``source`` is used only by CutPaste."""
    kinds = _check_kinds(kinds)
    kind = kinds[int(rng.integers(len(kinds)))]
    if kind == "cutpaste":
        return cutpaste_poisson(image, rng, foreground, source, source_foreground=source_foreground)
    if kind == "gaussian":
        return gaussian_intensity(image, rng, foreground)
    return source_deformation(image, rng, foreground)


def synthesize_batch(
    images: np.ndarray,
    rng: np.random.Generator,
    foregrounds: np.ndarray | None = None,
    p_anomaly: float = 0.5,
    kinds: Sequence[str] = ANOMALY_KINDS,
    *,
    p_cross_slice: float = 0.5,
) -> tuple[np.ndarray, np.ndarray]:
    """Give each slice of (n, H, W) one anomaly with probability ``p_anomaly``; the rest stay unchanged.

    Balanced batches of normal and anomalous slices are what the classifier trains on. For CutPaste the
    patch comes from another slice of the batch with probability ``p_cross_slice`` (texture from a
    different position in the body), else from the slice itself.

    Returns:
        float32 images (n, H, W) and boolean masks (n, H, W); a mask is empty exactly for unchanged slices.
    """
    imgs = np.asarray(images)
    if imgs.ndim != 3:
        raise InvalidVolumeError(f"synthesize_batch needs a stack (n, H, W), got shape {imgs.shape}.")
    if not (0.0 <= p_anomaly <= 1.0) or not (0.0 <= p_cross_slice <= 1.0):
        raise ConfigError("p_anomaly and p_cross_slice must be probabilities in [0, 1].")
    kinds = _check_kinds(kinds)
    fgs = None if foregrounds is None else np.asarray(foregrounds, dtype=bool)
    if fgs is not None and fgs.shape != imgs.shape:
        raise InvalidVolumeError(f"Foreground masks {fgs.shape} do not match the slices {imgs.shape}.")
    n = imgs.shape[0]
    out = np.array(imgs, dtype=np.float32, copy=True)
    masks = np.zeros(imgs.shape, dtype=bool)
    chosen = rng.random(n) < p_anomaly
    for i in np.flatnonzero(chosen):
        fg = None if fgs is None else fgs[i]
        source = source_fg = None
        if n > 1 and "cutpaste" in kinds and rng.random() < p_cross_slice:
            j = int(rng.integers(n - 1))
            j += j >= i
            source, source_fg = imgs[j], (None if fgs is None else fgs[j])
        out[i], masks[i] = random_anomaly(out[i], rng, fg, kinds, source, source_foreground=source_fg)
    return out, masks
