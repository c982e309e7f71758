"""Input checks and pixel sampling shared by every metric, so each one fails the same clear way."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import InvalidVolumeError

#: Foreground pixels fed to scikit-learn's curves; beyond this negatives (and, if needed, positives) are
#: subsampled uniformly with a seed and re-weighted, which keeps the estimates unbiased.
MAX_PIXELS = 5_000_000

ArrayLike = np.ndarray | Sequence[np.ndarray]


def as_stack(x: ArrayLike, what: str) -> np.ndarray:
    """(n, H, W) from one slice, a stack, or a list of stacks on one in-plane grid."""
    if isinstance(x, np.ndarray):
        a = x
    else:
        parts = [np.asarray(p) for p in x]
        if not parts:
            raise InvalidVolumeError(f"no {what} were given")
        parts = [p[None] if p.ndim == 2 else p for p in parts]
        if any(p.ndim != 3 for p in parts) or len({p.shape[1:] for p in parts}) != 1:
            raise InvalidVolumeError(
                f"{what} must all be (H, W) slices or (n, H, W) stacks on one in-plane grid; "
                "resample them to a common grid first"
            )
        a = np.concatenate(parts)
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3:
        raise InvalidVolumeError(f"{what} must be (H, W) or (n, H, W), got shape {a.shape}")
    if a.size == 0:
        raise InvalidVolumeError(f"{what} are empty")
    return a


def check_maps(maps: ArrayLike) -> np.ndarray:
    """Float32 (n, H, W) anomaly maps, refusing NaN/inf (a silent NaN metric would look like a result)."""
    m = as_stack(maps, "anomaly maps")
    if m.dtype.kind not in "fiub":
        raise InvalidVolumeError(f"anomaly maps must be numeric, got dtype {m.dtype}")
    m = m.astype(np.float32, copy=False)
    if not np.isfinite(m).all():
        raise InvalidVolumeError("anomaly maps contain NaN or infinite values; metrics would be meaningless")
    return m


def check_mask(mask: ArrayLike, shape: tuple[int, ...], what: str) -> np.ndarray:
    """Boolean (n, H, W) mask on the maps' grid; any non-zero label counts (e.g. all BraTS tumour classes)."""
    a = as_stack(mask, what)
    if a.shape != shape:
        raise InvalidVolumeError(
            f"{what} of shape {a.shape} do not match the anomaly maps {shape}; they must be on the image grid"
        )
    if a.dtype == bool:
        return a
    if a.dtype.kind not in "fiub":
        raise InvalidVolumeError(f"{what} must be numeric or boolean, got dtype {a.dtype}")
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        raise InvalidVolumeError(f"{what} contain NaN or infinite values")
    return a != 0


def check_inputs(
    maps: ArrayLike, masks: ArrayLike, foreground: ArrayLike | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(maps, masks, foreground) checked and on one grid; no foreground means every pixel counts."""
    m = check_maps(maps)
    y = check_mask(masks, m.shape, "ground-truth masks")
    fg = np.ones(m.shape, dtype=bool) if foreground is None else check_mask(foreground, m.shape, "foreground masks")
    return m, y, fg


def pixel_sample(
    maps: np.ndarray, masks: np.ndarray, fg: np.ndarray, max_pixels: int = MAX_PIXELS, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Foreground pixel scores, labels and sample weights (None when no subsampling was needed).

    Positives are rare (often < 1 %), so all of them are kept when they fit in half the budget and
    negatives are subsampled; each kept pixel weighs 1/its class's sampling rate, so AUROC, AP and the
    precision-recall curve stay unbiased.
    """
    s = maps[fg]
    y = masks[fg]
    n = s.size
    if n <= max_pixels:
        return s, y, None
    rng = np.random.default_rng(seed)
    pos = np.flatnonzero(y)
    neg = np.flatnonzero(~y)
    n_pos = min(pos.size, max_pixels // 2)
    n_neg = min(neg.size, max_pixels - n_pos)
    keep_pos = pos if n_pos == pos.size else rng.choice(pos, size=n_pos, replace=False)
    keep_neg = neg if n_neg == neg.size else rng.choice(neg, size=n_neg, replace=False)
    idx = np.concatenate([keep_pos, keep_neg])
    w = np.empty(idx.size, dtype=np.float64)
    w[: keep_pos.size] = pos.size / max(keep_pos.size, 1)
    w[keep_pos.size :] = neg.size / max(keep_neg.size, 1)
    return s[idx], y[idx], w


def add_note(notes: list[str] | None, text: str) -> None:
    if notes is not None and text not in notes:
        notes.append(text)
