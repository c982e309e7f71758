"""Per-patch embeddings of one image's result, kept per slice so the Poincaré disk adds up like the heatmap.

Each patch carries the value of the result's map at its centre, in the result's unit (normal-quantile for a
calibrated model), so a point on the disk and the heatmap under its patch show the same number. The
detector's own per-patch scores (raw units) are not kept: they would be a second, different number for the
same place.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from ..engine.detectors import Embeddings
    from ..engine.scoring import ScanResult


@dataclass
class SliceEmbedding:
    """The patches of one slice: points, (y, x) centres on the scan's grid, and the map's value at each centre.

    ``alternatives``: the same patches' points in the detector's other views (``Embeddings.alternatives``).
    """

    points: np.ndarray
    centers: np.ndarray
    values: np.ndarray
    alternatives: tuple[np.ndarray, ...] = ()


@dataclass(frozen=True)
class ViewGeometry:
    """What one view (a Lorentz head) draws its points in: curvature and classifier hyperplane."""

    curvature: float
    hyperplane: np.ndarray | None
    offset: float
    of: str


def values_at_centers(maps: np.ndarray, z: int, centers: np.ndarray) -> np.ndarray:
    """The map of slice ``z`` at (y, x) patch centres (nearest pixel, clipped to the slice)."""
    h, w = maps.shape[-2:]
    c = np.asarray(centers, dtype=np.float64).reshape(-1, 2)
    yy = np.clip(np.rint(c[:, 0]), 0, h - 1).astype(int)
    xx = np.clip(np.rint(c[:, 1]), 0, w - 1).astype(int)
    return np.asarray(maps[int(z)][yy, xx], dtype=np.float32)


def values_at_patches(volume: np.ndarray, slice_index: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """A (z, y, x) array's value at every patch centre (nearest voxel): e.g. a mask's, to outline or count patches.

    ``slice_index`` is each patch's volume z (as ``EmbeddingStore.combined`` gives it); patches on slices
    outside the array get 0.
    """
    arr = np.asarray(volume)
    z = np.asarray(slice_index, dtype=int).reshape(-1)
    out = np.zeros(len(z), dtype=np.float32)
    if arr.ndim != 3 or len(z) == 0:
        return out
    h, w = arr.shape[-2:]
    c = np.asarray(centers, dtype=np.float64).reshape(-1, 2)
    yy = np.clip(np.rint(c[:, 0]), 0, h - 1).astype(int)
    xx = np.clip(np.rint(c[:, 1]), 0, w - 1).astype(int)
    inside = (z >= 0) & (z < arr.shape[0])
    out[inside] = arr[z[inside], yy[inside], xx[inside]]
    return out


class EmbeddingStore:
    """Embeddings of the slices scored so far for one image and one model, keyed by z (newest wins)."""

    def __init__(self) -> None:
        self.slices: dict[int, SliceEmbedding] = {}
        self.manifold = "euclidean"
        self.curvature = 0.0
        self.hyperplane: np.ndarray | None = None
        self.offset = 0.0
        self.hyperplane_of = ""
        self.alternatives: tuple[ViewGeometry, ...] = ()  # the other views' geometry (slices hold their points)
        self.generation = 0

    def clear(self) -> None:
        self.slices.clear()
        self.generation += 1

    def add_result(self, result: ScanResult) -> bool:
        """Keep a result's embeddings (their ``slice_index`` counts the result's scored slices); False: it has none."""
        emb = result.raw.embeddings
        if emb is None:
            return False
        self.add(emb, np.asarray(result.indices, dtype=int), result.map)
        return True

    def add(self, emb: Embeddings, z_of: np.ndarray, maps: np.ndarray) -> None:
        """Store ``emb`` with slice ``j`` of it at volume z ``z_of[j]``, valued by ``maps`` at the patch centres.

        Only patches centred on the scan are kept (the working grid pads a scan to its field of view).
        """
        if emb.manifold != self.manifold or len(emb.alternatives) != len(self.alternatives):
            self.slices.clear()
        self.manifold, self.curvature = emb.manifold, float(emb.curvature)
        self.hyperplane, self.offset = emb.hyperplane, float(emb.hyperplane_offset)
        self.hyperplane_of = emb.hyperplane_of
        self.alternatives = tuple(ViewGeometry(float(a.curvature), a.hyperplane, float(a.hyperplane_offset),
                                               a.hyperplane_of) for a in emb.alternatives)
        sl = np.asarray(emb.slice_index, dtype=int)
        points, centers = np.asarray(emb.points), np.asarray(emb.centers, dtype=np.float32)
        others = [np.asarray(a.points) for a in emb.alternatives]
        h, w = maps.shape[-2:]
        # patches of the working grid's padding, centred off the scan (7,600 of brain1's 40,000 at 320 px):
        # hovering one ringed a spot beside the image, and the report counted them among the "others"
        on_scan = (centers[:, 0] >= -1) & (centers[:, 0] <= h) & (centers[:, 1] >= -1) & (centers[:, 1] <= w)
        for j in np.unique(sl):
            keep = (sl == j) & on_scan
            z = int(z_of[j])
            self.slices[z] = SliceEmbedding(points[keep], centers[keep], values_at_centers(maps, z, centers[keep]),
                                            tuple(o[keep] for o in others))
        self.generation += 1

    def __len__(self) -> int:
        return sum(len(s.points) for s in self.slices.values())

    def combined(self) -> Embeddings | None:
        """All stored slices as one ``Embeddings``: ``slice_index`` is the volume z, ``scores`` the map's values."""
        from ..engine.detectors import Embeddings

        if not self.slices:
            return None
        zs = sorted(self.slices)
        parts = [self.slices[z] for z in zs]
        slice_index = np.concatenate([np.full(len(p.points), z) for z, p in zip(zs, parts, strict=True)])
        centers = np.concatenate([p.centers for p in parts])
        scores = np.concatenate([p.values for p in parts])
        alternatives = tuple(
            Embeddings(points=np.concatenate([p.alternatives[k] for p in parts]), slice_index=slice_index,
                       centers=centers, manifold=self.manifold, curvature=g.curvature, scores=scores,
                       hyperplane=g.hyperplane, hyperplane_offset=g.offset, hyperplane_of=g.of)
            for k, g in enumerate(self.alternatives))
        return Embeddings(points=np.concatenate([p.points for p in parts]), slice_index=slice_index,
                          centers=centers, manifold=self.manifold, curvature=self.curvature, scores=scores,
                          hyperplane=self.hyperplane, hyperplane_offset=self.offset,
                          hyperplane_of=self.hyperplane_of, alternatives=alternatives)
