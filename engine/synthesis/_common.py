"""Input checks and random placement shared by every anomaly generator."""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError, InvalidVolumeError


def as_image(image: np.ndarray) -> np.ndarray:
    """A float32 copy of one (H, W) slice, so no generator can write into its caller's array."""
    arr = np.array(image, dtype=np.float32, copy=True)
    if arr.ndim != 2 or min(arr.shape) < 1:
        raise InvalidVolumeError(f"Synthetic anomalies need one 2-D slice, got shape {arr.shape}.")
    if not np.isfinite(arr).all():
        raise InvalidVolumeError("The slice contains NaN or infinite values; normalise it before synthesis.")
    return arr


def as_foreground(foreground: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray | None:
    """The tissue mask as bool, or ``None`` for "anywhere".

    An all-False mask (a slice with no tissue) also means "anywhere": the generators promise a non-empty
    anomaly, and a label in air is still a correct label for what was changed.
    """
    if foreground is None:
        return None
    fg = np.asarray(foreground, dtype=bool)
    if fg.shape != tuple(shape):
        raise InvalidVolumeError(f"The foreground mask has shape {fg.shape} but the slice has shape {shape}.")
    return fg if fg.any() else None


def pick_point(rng: np.random.Generator, shape: tuple[int, int], fg: np.ndarray | None) -> tuple[int, int]:
    """A uniformly random pixel of the foreground (of the whole slice when ``fg`` is None)."""
    if fg is None:
        return int(rng.integers(shape[0])), int(rng.integers(shape[1]))
    idx = np.flatnonzero(fg)
    flat = int(idx[rng.integers(idx.size)])
    return divmod(flat, shape[1])


def log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    """Scale factors and aspect ratios are symmetric in log space (×2 is as likely as ×½)."""
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def check_range(name: str, rng_pair: tuple[float, float], low: float = 0.0, high: float = np.inf) -> None:
    """Reject reversed or out-of-bounds parameter ranges with a message naming the parameter."""
    lo, hi = rng_pair
    if not (low <= lo <= hi <= high):
        raise ConfigError(f"{name} must satisfy {low} <= low <= high <= {high}, got {rng_pair}.")
