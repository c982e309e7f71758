"""SCR re-solved for the shown slice while a slider moves, fast enough to follow the hand (≤ 50 ms on 256²).

The pairwise weights α depend only on the slice's descriptors, τ and the mode, so they are computed once
per (slice, τ, mode) and kept in a small LRU cache; a λ or threshold move reruns only the max-flow. In 3-D
mode the preview cuts a three-slice slab around the shown slice (the neighbours pull on it as in the full
3-D cut) and keeps the middle; "Apply to volume" then runs the real 3-D cut.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from typing import TYPE_CHECKING

import numpy as np

from ..engine.calibration import ScrSettings
from ..engine.postprocess.scr import DEFAULT_TEMPERATURE, PairwiseWeights, pairwise_weights
from ..engine.progress import CancelToken, ProgressCallback, check, report
from ..engine.scoring import cut_scr

if TYPE_CHECKING:
    from .results import ScanResults


def _slab(results: ScanResults, z: int, mode: str) -> np.ndarray:
    """The scored slices the preview cut uses for slice z: z alone in 2-D, z ± 1 (when scored) in 3-D."""
    if mode != "3d":
        return np.array([z])
    lo, hi = z, z
    if z - 1 >= 0 and results.scored[z - 1]:
        lo = z - 1
    if z + 1 < len(results.scored) and results.scored[z + 1]:
        hi = z + 1
    return np.arange(lo, hi + 1)


def _descriptors(results: ScanResults, zs: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Features of slices zs when every one has them, else their intensities."""
    feats = [results.features.get(int(z)) for z in zs]
    if all(f is not None for f in feats):
        return np.stack(feats), None  # type: ignore[arg-type]
    return None, results.prepared.batch(zs)  # these slices only: never the whole normalised scan


class LiveCut:
    """Cached α per (results, slice, τ, mode), and the cut for one slice."""

    def __init__(self, max_cached: int = 16) -> None:
        self.max_cached = max_cached
        self._cache: OrderedDict[tuple, PairwiseWeights] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def clear(self) -> None:
        self._cache.clear()

    def weights(self, results: ScanResults, zs: np.ndarray, tau: float, mode: str) -> PairwiseWeights:
        """α for the slab ``zs`` (from the cache when the same slab, τ and mode were asked before)."""
        grid_mode = "3d" if len(zs) > 1 else "2d"
        key = (id(results), results.generation, tuple(int(z) for z in zs), round(float(tau), 9), grid_mode)
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
            self.hits += 1
            return hit
        self.misses += 1
        feats, ints = _descriptors(results, zs)
        if len(zs) == 1:
            feats = None if feats is None else feats[0]
            ints = None if ints is None else ints[0]
            shape = results.maps.shape[1:]
        else:
            shape = (len(zs), *results.maps.shape[1:])
        w = pairwise_weights(shape, tau, features=feats, intensities=ints, mode=grid_mode)
        self._cache[key] = w
        while len(self._cache) > self.max_cached:
            self._cache.popitem(last=False)
        return w

    def solve(self, results: ScanResults, z: int, threshold: float, lam: float, tau: float, mode: str = "2d",
              temperature: float = DEFAULT_TEMPERATURE) -> np.ndarray:
        """The SCR mask of slice ``z`` at these values (boolean (H, W))."""
        zs = _slab(results, int(z), mode)
        pos = int(np.searchsorted(zs, z))
        weights = self.weights(results, zs, tau, mode) if lam > 0 else None
        if len(zs) == 1:
            scores, fg, grid_mode = results.maps[z], results.prepared.foreground[z], "2d"
        else:
            scores, fg, grid_mode = results.maps[zs], results.prepared.foreground[zs], "3d"
        point = ScrSettings(threshold=threshold, lam=lam, tau=tau, temperature=temperature, mode=grid_mode)
        mask = cut_scr(scores, fg, point, weights=weights)
        return mask if len(zs) == 1 else mask[pos]


def refine_scored(results: ScanResults, threshold: float, lam: float, tau: float, mode: str,
                  temperature: float = DEFAULT_TEMPERATURE, progress: ProgressCallback | None = None,
                  cancel: CancelToken | None = None,
                  only: Iterable[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """SCR over every scored slice ("Apply to volume"): returns (indices, masks) without touching ``results``.

    2-D mode cuts a few slices at a time so Cancel answers between them; 3-D mode cuts each run of
    consecutive scored slices as one graph (slices that were never scored are not linked across).
    ``only`` limits the work to those slices ("Reset" restores the ones the sliders re-cut); in 3-D mode
    the whole run each of them belongs to is cut, since the run is one graph.
    """
    idx = np.flatnonzero(results.scored)
    if only is not None:
        wanted = np.isin(idx, np.asarray(list(only), dtype=int))
        if mode == "3d":
            run_of = np.cumsum(np.r_[0, np.diff(idx) != 1])
            wanted = np.isin(run_of, run_of[wanted])
        idx = idx[wanted]
    masks = np.zeros((len(idx), *results.maps.shape[1:]), dtype=bool)
    if idx.size == 0:
        return idx, masks
    if mode == "3d":
        runs = np.split(np.arange(len(idx)), np.flatnonzero(np.diff(idx) != 1) + 1)
    else:
        runs = [np.arange(i, min(i + 4, len(idx))) for i in range(0, len(idx), 4)]
    done = 0
    for run in runs:
        check(cancel)
        zs = idx[run]
        feats, ints = _descriptors(results, zs)
        point = ScrSettings(threshold=threshold, lam=lam, tau=tau, temperature=temperature, mode=mode)
        masks[run] = cut_scr(results.maps[zs], results.prepared.foreground[zs], point, features=feats,
                             intensities=ints)
        done += len(zs)
        report(progress, done / len(idx), f"cut {done}/{len(idx)} slices")
    return idx, masks
