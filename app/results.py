"""What has been scored for one image, on its full grid, and the layers that show it.

Scoring a slice, then another, then the volume, adds up: ``ScanResults`` keeps the display maps, the mask
and the per-slice scores for every z scored so far, and the heatmap and mask layers show those arrays.
The work functions here run in thread workers and only call the engine; the layer functions run on the
UI thread.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from .reader import ROLE_KEY

if TYPE_CHECKING:
    import napari

    from ..engine.detectors import Detector
    from ..engine.pipeline import PreparedScan, VolumeScore
    from ..engine.progress import CancelToken, ProgressCallback
    from ..engine.volume import Volume
    from .state import ScrParams

HEATMAP_COLORMAP = "inferno"
HEATMAP_OPACITY = 0.6
MASK_OPACITY = 0.5


@dataclass
class ScoreOutcome:
    """What a scoring worker hands back to the UI thread."""

    score: VolumeScore
    indices: np.ndarray
    maps: np.ndarray
    mask: np.ndarray | None
    normalised: bool
    params: tuple | None = None


def score_work(detector: Detector, volume: Volume, indices: np.ndarray, scr: ScrParams,
               progress: ProgressCallback, cancel: CancelToken, batch_size: int = 4) -> ScoreOutcome:
    """Score slices and, for a calibrated model, normalise the maps and cut the mask (worker thread).

    Small batches keep the time between two cancel checks short, so Cancel answers within a second.
    """
    from ..engine.calibration import apply_calibration
    from ..engine.pipeline import score_volume

    vs = score_volume(detector, volume, slices=indices, batch_size=batch_size,
                      progress=lambda f, m: progress(0.9 * f, m), cancel=cancel)
    cancel.raise_if_cancelled()
    if "normaliser" not in (detector.calibration or {}):
        return ScoreOutcome(vs, indices, vs.result.heatmaps, None, False)
    progress(0.95, "computing the mask")
    cal = apply_calibration(detector, vs.result, vs.prepared.slices[indices],
                            foreground=vs.prepared.foreground[indices], lam=scr.lam, threshold=scr.threshold,
                            tau=scr.tau if scr.tau > 0 else None, mode=scr.mode)
    mask = cal.scr_mask if cal.scr_mask is not None else cal.mask
    return ScoreOutcome(vs, indices, cal.maps.astype(np.float32, copy=False), mask, True, scr.key())


@dataclass
class ScanResults:
    """Accumulated results for one image layer (arrays on the full (z, y, x) grid)."""

    layer_name: str
    volume: Volume
    prepared: PreparedScan
    maps: np.ndarray
    mask: np.ndarray
    scored: np.ndarray
    normalised: bool = False
    slice_scores: dict[int, float] = field(default_factory=dict)
    features: dict[int, np.ndarray] = field(default_factory=dict)
    generation: int = 0
    model: Any = None
    cut_params: dict[int, tuple] = field(default_factory=dict)

    @classmethod
    def start(cls, layer_name: str, volume: Volume, prepared: PreparedScan, normalised: bool) -> ScanResults:
        shape = volume.shape
        return cls(layer_name, volume, prepared, np.zeros(shape, np.float32), np.zeros(shape, np.uint8),
                   np.zeros(shape[0], bool), normalised)

    @classmethod
    def from_maps(cls, layer_name: str, volume: Volume, prepared: PreparedScan, indices: np.ndarray,
                  maps: np.ndarray, mask: np.ndarray | None, normalised: bool, model: Any = None,
                  params: tuple | None = None) -> ScanResults:
        """Results for maps the engine already placed on the scan's full grid (the demo job's output).

        Only the ``indices`` slices count as scored: the rest of a full-grid map is zeros, not a score.
        ``params`` is the SCR operating point ``mask`` was cut at, so the SCR dock re-cuts only on a change.
        """
        res = cls.start(layer_name, volume, prepared, normalised)
        res.model = model
        idx = np.asarray(indices, dtype=int)
        res.write_slices(idx, np.asarray(maps, dtype=np.float32)[idx], None if mask is None else np.asarray(mask)[idx],
                         params, None)
        return res

    def merge(self, outcome: ScoreOutcome) -> None:
        """Write an outcome's slices into the full-grid arrays (in place, so layers showing them stay valid)."""
        self.write_slices(outcome.indices, outcome.maps, outcome.mask, outcome.params, outcome.score.result.features)

    def write_slices(self, indices: np.ndarray, maps: np.ndarray, mask: np.ndarray | None, params: tuple | None,
                     features: np.ndarray | None) -> None:
        """Record scored slices (maps, mask, slice scores, cut parameters, SCR descriptors) in place."""
        idx = indices
        self.maps[idx] = maps
        if mask is not None:
            self.mask[idx] = mask.astype(np.uint8)
        self.scored[idx] = True
        for i, z in enumerate(idx):
            fg = self.prepared.foreground[z]
            vals = self.maps[z][fg] if fg.any() else self.maps[z].ravel()
            self.slice_scores[int(z)] = float(vals.max())
            if params is not None:
                self.cut_params[int(z)] = params
            if features is not None:
                self.features[int(z)] = features[i]
            else:
                self.features.pop(int(z), None)
        self.generation += 1

    def descriptors(self, z: int) -> tuple[np.ndarray | None, np.ndarray | None]:
        """(features, intensities) for SCR's pairwise weights of slice z: features when the detector gave them."""
        f = self.features.get(int(z))
        return (f, None) if f is not None else (None, self.prepared.slices[z])

    @property
    def heatmap_name(self) -> str:
        return f"{self.layer_name} anomaly"

    @property
    def mask_name(self) -> str:
        return f"{self.layer_name} mask"


def heatmap_contrast(maps: np.ndarray, calibration: dict[str, Any] | None, normalised: bool) -> tuple[float, float]:
    """Contrast limits for a heatmap layer.

    Normalised maps are in normal-quantile units: everything below the plain threshold looks like normal
    tissue, so the colour ramp starts a little below it and ends at the strongest score (at least 1, the
    top of the normal range). Raw maps have no meaning across models, so their median and top percentile
    are used.
    """
    vals = np.asarray(maps, dtype=np.float32)
    vals = vals[np.isfinite(vals) & (vals != 0)]
    if normalised and calibration and "threshold" in calibration:
        lo = float(calibration["threshold"]) - 0.05
        hi = max(1.0, float(vals.max()) if vals.size else 1.0)
        return (lo, hi if hi > lo else lo + 0.1)
    if vals.size == 0:
        return (0.0, 1.0)
    lo, hi = (float(v) for v in np.percentile(vals, (50.0, 99.9)))
    return (lo, hi if hi > lo else lo + 1e-6)


def modality_warning(detector: Detector, volume: Volume) -> str | None:
    """A warning when the model was trained on another modality than the scan's, else None.

    Bundles record the training modality in ``training`` (or ``preprocessing``); older ones do not,
    which gives no warning rather than a false one.
    """
    info: dict[str, Any] = {**(detector.preprocessing or {}), **(detector.training or {})}
    trained = info.get("modality") or info.get("modalities")
    if not trained or not volume.modality or volume.modality.upper() in ("OT", ""):
        return None
    names = [trained] if isinstance(trained, str) else list(trained)
    if volume.modality.upper() in {str(n).upper() for n in names}:
        return None
    return (f"this model was trained on {'/'.join(str(n) for n in names)} scans but the scan is "
            f"{volume.modality}; scores and masks may not mean much")


def find_layer(viewer: napari.Viewer, name: str) -> Any:
    """The layer called ``name`` or None."""
    return viewer.layers[name] if name in viewer.layers else None


def show_results(viewer: napari.Viewer, results: ScanResults, calibration: dict[str, Any] | None,
                 indices: np.ndarray | None = None) -> tuple[Any, Any]:
    """Create or update the heatmap and mask layers of ``results``.

    Existing layers are updated in place (``layer.data[z] = …``; ``refresh()``), which keeps a labels
    layer's undo history of hand edits: napari resets that history only when ``layer.data`` is replaced.
    """
    scale = results.volume.spacing_zyx
    source = find_layer(viewer, results.layer_name)
    extra = {"units": source.units} if source is not None and getattr(source, "units", None) else {}
    limits = heatmap_contrast(results.maps[results.scored], calibration, results.normalised)
    heat = find_layer(viewer, results.heatmap_name)
    if heat is None or tuple(heat.data.shape) != results.maps.shape:
        if heat is not None:
            viewer.layers.remove(heat)
        heat = viewer.add_image(results.maps, name=results.heatmap_name, scale=scale, colormap=HEATMAP_COLORMAP,
                                opacity=HEATMAP_OPACITY, blending="additive", contrast_limits=limits,
                                metadata={ROLE_KEY: "heatmap"}, **extra)
    else:
        if heat.data is not results.maps:
            heat.data = results.maps
        heat.contrast_limits_range = (min(limits[0], float(results.maps.min())), max(limits[1], limits[0] + 1e-6))
        heat.contrast_limits = limits
        heat.refresh()
    mask = None
    if results.normalised:
        mask = find_layer(viewer, results.mask_name)
        if mask is None or tuple(mask.data.shape) != results.mask.shape:
            if mask is not None:
                viewer.layers.remove(mask)
            mask = viewer.add_labels(results.mask, name=results.mask_name, scale=scale, opacity=MASK_OPACITY,
                                     metadata={ROLE_KEY: "mask"}, **extra)
        elif mask.data is not results.mask:
            write_mask(mask, results.mask)  # adopt the layer's array: hand edits and SCR share one mask
            results.mask = mask.data
        else:
            mask.refresh()
    return heat, mask


def write_mask(layer: Any, values: np.ndarray, indices: np.ndarray | int | None = None, fast: bool = False) -> None:
    """Write mask slices into a labels layer without replacing its data (its undo history survives).

    ``fast`` re-slices only what is drawn (no thumbnail, extent or highlight update): for slider drags,
    where the caller refreshes the rest once the drag settles.
    """
    data = layer.data
    if indices is None:
        if data is not values:
            data[...] = values
    else:
        data[indices] = values
    if fast:
        layer.refresh(thumbnail=False, highlight=False, extent=False)
    else:
        layer.refresh()


def current_index(viewer: napari.Viewer, layer: Any) -> int:
    """The z index of ``layer`` under the viewer's current slice (world position → data index)."""
    if layer is None or layer.ndim < 3:
        return 0
    z = layer.world_to_data(viewer.dims.point)[-3]
    return int(np.clip(round(float(z)), 0, layer.data.shape[-3] - 1))


def goto_index(viewer: napari.Viewer, layer: Any, z: int) -> None:
    """Show slice ``z`` of ``layer`` (its scale and translation taken into account)."""
    if layer is None or layer.ndim < 3:
        return
    point = list(layer.data_to_world([*([0] * (layer.ndim - 3)), int(z), 0, 0]))
    axis = viewer.dims.ndim - 3
    viewer.dims.set_point(axis, float(point[-3]))
