"""What every detector returns, so SCR, metrics, export and the viewer need to know no detector."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import InvalidVolumeError

MANIFOLDS = ("lorentz", "poincare", "sphere", "euclidean", "product")


@dataclass
class Embeddings:
    """Per-patch embeddings with the geometry they live in, for the Poincaré-disk view.

    ``points`` are coordinates on ``manifold`` (Lorentz points carry the time coordinate first).
    ``curvature`` is the magnitude c > 0 of the curvature (−c for hyperbolic, +c for the sphere; 0 for
    Euclidean). ``hyperplane`` is the classifier's normal vector in the same ambient coordinates, when the
    detector has one.
    """

    points: np.ndarray
    slice_index: np.ndarray
    centers: np.ndarray
    manifold: str = "euclidean"
    curvature: float = 0.0
    scores: np.ndarray | None = None
    hyperplane: np.ndarray | None = None
    hyperplane_offset: float = 0.0

    def __post_init__(self) -> None:
        if self.manifold not in MANIFOLDS:
            raise ValueError(f"unknown manifold {self.manifold!r}; expected one of {MANIFOLDS}")
        n = len(self.points)
        if len(self.slice_index) != n or len(self.centers) != n:
            raise ValueError("points, slice_index and centers must have the same length")
        if self.scores is not None and len(self.scores) != n:
            raise ValueError("scores must have one value per point")


@dataclass
class AnomalyResult:
    """Per-slice heatmaps on the input grid, an image score per slice, and optional extras.

    Higher means more anomalous everywhere. ``features`` are low-dimensional per-pixel descriptors that
    SCR uses for its pairwise weights (noise latents, embeddings); without them SCR falls back to
    intensities. ``normalised`` says whether ``heatmaps`` were mapped through the model's normal-data
    normaliser (so thresholds are comparable across detectors).
    """

    heatmaps: np.ndarray
    scores: np.ndarray
    embeddings: Embeddings | None = None
    features: np.ndarray | None = None
    normalised: bool = False
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.heatmaps = np.asarray(self.heatmaps, dtype=np.float32)
        self.scores = np.asarray(self.scores, dtype=np.float32).reshape(-1)
        if self.heatmaps.ndim != 3:
            raise InvalidVolumeError(f"heatmaps must be (slices, H, W), got shape {self.heatmaps.shape}")
        if len(self.scores) != len(self.heatmaps):
            raise InvalidVolumeError("one image score per heatmap is required")
        if self.features is not None:
            self.features = np.asarray(self.features, dtype=np.float32)
            if self.features.shape[:3] != self.heatmaps.shape:
                raise InvalidVolumeError(
                    f"per-pixel features {self.features.shape} do not match heatmaps {self.heatmaps.shape}"
                )

    @property
    def n_slices(self) -> int:
        return len(self.heatmaps)
