"""The on-site evaluation protocol: train on normal slices, evaluate only on slices never fitted on.

For a case with a lesion mask (``sample:brain1``), the site's normals are its lesion-free slices at least
``margin`` slices away from any lesion slice (plus healthy sources); evaluation uses the remaining slices,
the lesion slices and their close neighbours. Keeping a gap stops partial-volume lesion tissue from
leaking into training, and never evaluating on a fitted slice keeps the numbers honest.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import ConfigError


@dataclass(frozen=True)
class SliceSplit:
    """Which z indices of one case train and which evaluate."""

    train: np.ndarray
    evaluate: np.ndarray
    lesion: np.ndarray

    def spec_suffix(self, which: str = "train") -> str:
        """The slice selection as a SPEC suffix, e.g. ``#0-3,12-24``."""
        return "#" + format_selection(getattr(self, which))


def onsite_split(mask: np.ndarray, margin: int = 2) -> SliceSplit:
    """Split a case's slices by their distance (in slices) to the nearest lesion slice.

    Slices at distance ≥ ``margin`` train; the rest (lesion slices and nearer neighbours) evaluate.
    """
    m = np.asarray(mask)
    if m.ndim != 3:
        raise ConfigError(f"a lesion mask volume (z, y, x) is needed, got shape {m.shape}")
    if margin < 1:
        raise ConfigError(f"margin must be ≥ 1 slice, got {margin}")
    lesion = np.flatnonzero(m.reshape(len(m), -1).any(1))
    if lesion.size == 0:
        raise ConfigError("the mask has no lesion voxels; the on-site protocol needs at least one lesion slice")
    z = np.arange(len(m))
    dist = np.abs(z[:, None] - lesion[None, :]).min(1)
    return SliceSplit(train=z[dist >= margin], evaluate=z[dist < margin], lesion=lesion)


def format_selection(indices: np.ndarray | list[int]) -> str:
    """``[0, 1, 2, 5, 7, 8]`` → ``0-2,5,7-8`` (the inverse of the SPEC slice syntax)."""
    idx = sorted({int(i) for i in indices})
    if not idx:
        return ""
    parts, start, prev = [], idx[0], idx[0]
    for i in [*idx[1:], None]:
        if i is not None and i == prev + 1:
            prev = i
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        if i is not None:
            start = prev = i
    return ",".join(parts)
