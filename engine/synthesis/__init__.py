"""Synthetic anomalies on normal slices, the training signal for the anomaly classifier.

Three kinds, after the Lorentz hyperbolic anomaly detection paper (§2.1): CutPaste with Poisson
blending, Gaussian intensity blobs and source/sink deformations. Every generator takes one float32
(H, W) slice in [0, 1], an optional tissue mask and a ``numpy.random.Generator``, never modifies its
input, and returns ``(slice, mask)`` with a non-empty boolean mask. ``lesion`` adds lesions of a stated
size in millimetres, with which calibration checks that SCR keeps lesions (not a training signal).
"""

from .batch import ANOMALY_KINDS, random_anomaly, synthesize_batch
from .cutpaste import cutpaste_poisson
from .deformation import source_deformation
from .intensity import gaussian_intensity
from .lesion import lesion_slices, sized_lesion
from .poisson import poisson_blend

__all__ = [
    "ANOMALY_KINDS",
    "cutpaste_poisson",
    "gaussian_intensity",
    "lesion_slices",
    "poisson_blend",
    "random_anomaly",
    "sized_lesion",
    "source_deformation",
    "synthesize_batch",
]
