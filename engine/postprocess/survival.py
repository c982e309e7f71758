"""Whether SCR keeps lesions: synthetic lesions in copies of the calibration normals, counted mask by mask.

SCR's operating point is calibrated on normals only, and a false-positive budget on normals cannot tell
speckle from a lesion-sized region: λ large enough to meet it can erase a lesion whole (brain1, Lorentz:
Dice 0.126 plain, 0.000 with SCR). So the calibration also inserts lesions of 5–10 mm in-plane diameter
(``engine.synthesis.lesion``) into copies of its normal slices, has the detector score them, and asks of
each candidate operating point (SCR's unary threshold t and λ) that the cut keep what thresholding finds:

* a lesion is **seen** at a candidate when thresholding at t alone (λ = 0, where the cut starts) covers at
  least ``SEEN_FRACTION`` of its area: a lesion the detector does not raise above t is no test of the cut;
* a seen lesion **survives** when the SCR mask at (t, λ) still covers at least ``KEEP_FRACTION`` of the
  pixels thresholding found of it (the cut may trim a lesion's rim, but not erase it or cut it to a speck);
* the **survival rate** is survivors over seen lesions; the product asks for ``SURVIVAL_TARGET`` (90 %),
  a rate from fewer than ``MIN_SEEN`` seen lesions shows nothing, and the calibration does not take a point
  it cannot show keeps lesions (it tightens SCR's threshold towards the plain one instead).

SCR's unary threshold is never tighter than the plain one, so every lesion the plain mask finds is seen.

Counting is all this module does (it only reads masks); the masks are cut where every SCR mask of the
calibration is cut (``engine.postprocess.calibrate``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InvalidVolumeError

#: Share of a lesion thresholding (λ = 0) must cover for the lesion to test the cut.
SEEN_FRACTION = 0.2
#: A seen lesion survives when SCR covers at least this share of the pixels thresholding found of it.
KEEP_FRACTION = 0.5
#: Share of seen synthetic lesions SCR's calibrated operating point must keep.
SURVIVAL_TARGET = 0.9
#: Seen lesions needed before a rate means anything: with ten, one lost lesion is the 10 % the target allows.
MIN_SEEN = 10


@dataclass(frozen=True)
class LesionProbe:
    """The detector's raw output on slices with synthetic lesions, and where the lesions are.

    Attributes:
        maps: raw anomaly maps (m, H, W), in the detector's own units (calibration normalises them).
        labels: (m, H, W) integers, 0 background, k ≥ 1 the k-th lesion.
        foreground: (m, H, W) tissue masks.
        features: the detector's per-pixel descriptors (m, H, W[, F]) for SCR's pairwise weights, or None.
        intensities: the slices with the lesions, the pairwise weights' fallback.
        diameter_mm: each lesion's in-plane diameter (index k − 1 for label k).
        diameter_range: the range those diameters were drawn from.
    """

    maps: np.ndarray
    labels: np.ndarray
    foreground: np.ndarray
    features: np.ndarray | None
    intensities: np.ndarray
    diameter_mm: np.ndarray
    diameter_range: tuple[float, float] = (5.0, 10.0)

    def __post_init__(self) -> None:
        shape = np.shape(self.maps)
        for name in ("labels", "foreground", "intensities"):
            if np.shape(getattr(self, name)) != shape:
                raise InvalidVolumeError(f"the lesion probe's {name} {np.shape(getattr(self, name))} do not match "
                                         f"its maps {shape}")
        if len(shape) != 3:
            raise InvalidVolumeError(f"the lesion probe needs (m, H, W) maps, got shape {shape}")

    @property
    def n_lesions(self) -> int:
        return int(np.max(self.labels, initial=0))


@dataclass(frozen=True)
class LesionCount:
    """Synthetic lesions inserted, seen by thresholding, and kept by the SCR cut at one operating point."""

    inserted: int
    seen: int
    kept: int

    @property
    def rate(self) -> float | None:
        """Survivors over seen lesions (None when thresholding saw none)."""
        return None if self.seen == 0 else self.kept / self.seen


def count_survivors(labels: np.ndarray, thresholded: np.ndarray, scr: np.ndarray) -> LesionCount:
    """Count seen and surviving lesions of ``labels``: ``thresholded`` is the mask before the cut, ``scr`` after.

    Any mask pair on the labels' grid works: SCR's unary threshold alone and its cut (the calibration's test),
    or the plain and the SCR mask of the product (each lesion the plain mask finds, kept by SCR or not).
    """
    lab = np.asarray(labels)
    before = np.asarray(thresholded, bool)
    if before.shape != lab.shape or np.shape(scr) != lab.shape:
        raise InvalidVolumeError(f"masks {before.shape} / {np.shape(scr)} do not match the labels {lab.shape}")
    n = int(np.max(lab, initial=0))
    if n == 0:
        return LesionCount(0, 0, 0)
    flat = lab.ravel()
    area = np.bincount(flat, minlength=n + 1)[1:]
    by_before = np.bincount(flat, weights=before.ravel(), minlength=n + 1)[1:]
    by_scr = np.bincount(flat, weights=np.asarray(scr, bool).ravel(), minlength=n + 1)[1:]
    present = area > 0
    seen = present & (by_before >= SEEN_FRACTION * area) & (by_before > 0)
    kept = seen & (by_scr >= KEEP_FRACTION * by_before)
    return LesionCount(inserted=int(present.sum()), seen=int(seen.sum()), kept=int(kept.sum()))
