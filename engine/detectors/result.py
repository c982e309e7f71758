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
    detector has one; ``hyperplane_of`` says whose it is when the detector's output is not that one
    classifier's alone (the Lorentz detector averages several heads and can draw one), e.g. "head 1 of 3,
    the heatmap averaging all 3". ``alternatives`` are the other heads' views of the same patches (their own
    points, curvature and hyperplane; the same slices, centres and scores), so a viewer can draw the head
    that best explains a result (``engine.projection.explaining_view``).
    """

    points: np.ndarray
    slice_index: np.ndarray
    centers: np.ndarray
    manifold: str = "euclidean"
    curvature: float = 0.0
    scores: np.ndarray | None = None
    hyperplane: np.ndarray | None = None
    hyperplane_offset: float = 0.0
    hyperplane_of: str = ""
    alternatives: tuple[Embeddings, ...] = ()

    def __post_init__(self) -> None:
        if self.manifold not in MANIFOLDS:
            raise ValueError(f"unknown manifold {self.manifold!r}; expected one of {MANIFOLDS}")
        n = len(self.points)
        if len(self.slice_index) != n or len(self.centers) != n:
            raise ValueError("points, slice_index and centers must have the same length")
        if self.scores is not None and len(self.scores) != n:
            raise ValueError("scores must have one value per point")
        if any(len(alt.points) != n or alt.alternatives for alt in self.alternatives):
            raise ValueError("each alternative view holds the same patches, and no alternatives of its own")


@dataclass
class AnomalyResult:
    """Per-slice heatmaps on the input grid, an image score per slice, and optional extras.

    Higher means more anomalous everywhere. ``features`` are low-dimensional per-pixel descriptors that
    SCR uses for its pairwise weights (noise latents, embeddings); without them SCR falls back to
    intensities. ``normalised`` says whether ``heatmaps`` were mapped through the model's normal-data
    normaliser (so thresholds are comparable across detectors).

    ``own_masks``: lesion masks the detector cut itself the way its paper does (InvDetect's SCR with the
    paper's t, T and τ), on the heatmaps' grid; ``own_masks_method`` says how, for the user. When present,
    ``engine.scoring`` reports them in the SCR slot instead of cutting the engine's SCR, so the paper's
    mechanism is what the CLI, batch, viewer and eval show (``Detector.cuts_own_masks``).
    """

    heatmaps: np.ndarray
    scores: np.ndarray
    embeddings: Embeddings | None = None
    features: np.ndarray | None = None
    normalised: bool = False
    info: dict[str, Any] = field(default_factory=dict)
    own_masks: np.ndarray | None = None
    own_masks_method: str = ""

    def __post_init__(self) -> None:
        self.heatmaps = np.asarray(self.heatmaps, dtype=np.float32)
        if self.own_masks is not None:
            self.own_masks = np.asarray(self.own_masks, dtype=bool)
            if self.own_masks.shape != self.heatmaps.shape:
                raise InvalidVolumeError(
                    f"own masks {self.own_masks.shape} do not match heatmaps {self.heatmaps.shape}")
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
