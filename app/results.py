"""What has been scored for one image by one model, on its full grid, and the layers that show it.

Every number here comes from ``engine.scoring.score_scan``, the product's one result: the workers call it
(``score_work``) and ``ScanResults`` only accumulates what it returned (map in the result's unit, lesion
mask, slice scores, SCR descriptors, patch embeddings), so the viewer shows what ``anomalens score`` writes.
Scoring a slice, then another, then the volume adds up per (image, model): a second model gets its own
``ScanResults`` and its own layers, named with its label (``"brain1 · patchcore v2 anomaly"``), and the
first model's stay. The work functions run in thread workers and only call the engine; the layer
functions run on the UI thread.
"""

from __future__ import annotations

import hashlib
import weakref
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np

from .embeddings import EmbeddingStore
from .messages import notify_info, notify_warning
from .naming import export_stem, study_name
from .orientation import result_geometry, same_geometry
from .reader import ROLE_KEY

if TYPE_CHECKING:
    import napari

    from ..engine.calibration import Calibration, ScrSettings
    from ..engine.detectors import Detector
    from ..engine.pipeline import PreparedScan
    from ..engine.progress import CancelToken, ProgressCallback
    from ..engine.scoring import MapUnit, ModelIdentity, ScanResult, SliceScore
    from ..engine.volume import Volume
    from .state import AnomaLensState

HEATMAP_COLORMAP = "inferno"
#: A calibrated heatmap's colour ramp starts this far (normal-quantile units) below the mask's threshold.
RAMP_BELOW = 0.05
HEATMAP_OPACITY = 0.6
#: The model's mask is drawn as an outline: opaque, so a 2-pixel line stays visible over the heatmap.
MASK_OPACITY = 0.9
#: The model's mask (prediction): a cyan outline, a colour the inferno heatmap never takes.
PREDICTION_COLOR = "#00e5ff"
#: Outline width of the model's mask, in screen pixels (napari's labels ``contour``); 0 fills it.
PREDICTION_CONTOUR = 2
#: A reference (expert) lesion mask: filled, in yellow, half transparent, under the model's outline.
REFERENCE_COLOR = "#ffd21f"
REFERENCE_OPACITY = 0.45
#: Layer metadata key set once a layer got AnomaLens's colours (a user's later change is then left alone).
STYLED_KEY = "anomalens_styled"
#: Added to a result's layer names when the loaded model changed and the result was not made again.
STALE_SUFFIX = " (stale: model changed)"
#: The points layer that rings a patch chosen on the Poincaré disk.
HIGHLIGHT_LAYER = "AnomaLens patch"
#: Heatmap layer metadata: the map's unit (``MapUnit`` value) and the model that made it.
UNIT_KEY = "anomalens_unit"
MODEL_KEY = "anomalens_model"


# -- work (thread workers) ---------------------------------------------------------------------------

@dataclass
class ScoreOutcome:
    """What a scoring worker hands back to the UI thread: the engine's result, as it is."""

    result: ScanResult

    @property
    def indices(self) -> np.ndarray:
        return self.result.indices


def score_work(detector: Detector, volume: Volume, indices: np.ndarray | None, settings: ScrSettings | None,
               progress: ProgressCallback | None, cancel: CancelToken | None) -> ScoreOutcome:
    """Score slices with ``score_scan`` (worker thread); ``settings`` is SCR's point when the sliders moved it.

    ``score_scan`` checks the cancel token between small batches, so Cancel answers within a second.
    """
    from ..engine.scoring import score_scan

    return ScoreOutcome(score_scan(detector, volume, indices, settings=settings, progress=progress, cancel=cancel))


def score_for_viewer(detector: Detector, volume: Volume, indices: np.ndarray | None = None,
                     settings: ScrSettings | None = None, layer_name: str = "scan") -> ScanResults:
    """What the viewer's scoring worker makes of a scan, run synchronously (tests and scripts compare it).

    The same two steps as the Detector dock's "Score volume", without Qt: ``score_work`` and
    ``ScanResults.from_result``; ``maps`` and ``mask`` are what the heatmap and mask layers show.
    """
    return ScanResults.from_result(layer_name, score_work(detector, volume, indices, settings, None, None).result,
                                   detector)


_IDENTITIES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def model_identity(detector: Detector) -> ModelIdentity:
    """``ModelIdentity.of(detector)``, remembered per model object (its fingerprint hashes every weight).

    Recomputed when the detector's calibration object was replaced (a recalibration in place).
    """
    from ..engine.scoring import ModelIdentity

    hit = _IDENTITIES.get(detector)
    if hit is not None and hit[0] is detector.calibration:
        return hit[1]
    ident = ModelIdentity.of(detector)
    _IDENTITIES[detector] = (detector.calibration, ident)
    return ident


# -- the accumulated result of one image and one model ------------------------------------------------

@dataclass
class ScanResults:
    """One image's results from one model, accumulated over scoring runs (arrays on the full (z, y, x) grid).

    ``maps`` is in ``unit``; ``mask`` is the result's lesion mask (SCR's when it was cut, else the plain
    one; zeros for an uncalibrated model, which has none); ``slices`` the engine's per-slice scores by z.
    ``detector`` is the model object that made it (the SCR dock re-cuts only while that model is loaded).
    """

    layer_name: str
    volume: Volume
    prepared: PreparedScan
    model: ModelIdentity
    unit: MapUnit
    calibration: Calibration | None
    label: str
    maps: np.ndarray
    mask: np.ndarray
    scored: np.ndarray
    detector: Any = None
    slices: dict[int, SliceScore] = field(default_factory=dict)
    features: dict[int, np.ndarray] = field(default_factory=dict)
    embeddings: EmbeddingStore = field(default_factory=EmbeddingStore)
    warnings: tuple[str, ...] = ()
    cut_params: dict[int, tuple] = field(default_factory=dict)
    #: A digest of what scoring or an SCR cut last wrote into each slice of ``mask``. napari's label tools
    #: write into the same array, so a slice whose digest no longer matches holds the user's hand edits:
    #: SCR's sliders, "Apply to volume" and "Reset" leave it as drawn instead of overwriting it.
    auto_digest: dict[int, bytes] = field(default_factory=dict)
    generation: int = 0
    stale: bool = False
    #: Slices of the scan the model was fitted or calibrated on (its record, ``ScanResult.seen_slices``, and
    #: the demo's own list for models trained before the record): never where reading starts, since a
    #: calibration slice's top pixel is the top of the normal range by construction.
    normal_slices: frozenset[int] = frozenset()

    def ramp_maps(self) -> np.ndarray:
        """The scored slices the colour ramp is set from: not the model's own normals, unless nothing else.

        After a fine-tune the ramp's top came from a slice it was fitted on (11.96 normal-quantile units on a
        calibration slice), which left the flagged lesion (0.999) without colour on the canvas and the disk.
        """
        return self.maps[self._ramp_slices()]

    def ramp_top(self) -> float:
        """The highest value of ``ramp_maps`` without copying them (SCR's slider moves ask on every step)."""
        return max((float(self.maps[z].max()) for z in np.flatnonzero(self._ramp_slices())), default=0.0)

    def _ramp_slices(self) -> np.ndarray:
        fresh = np.asarray(self.scored, bool).copy()
        fresh[[z for z in self.normal_slices if 0 <= z < len(fresh)]] = False
        return fresh if fresh.any() else np.asarray(self.scored, bool)

    def reading_start(self, among: Iterable[SliceScore] | None = None) -> SliceScore | None:
        """The highest-scoring slice (of ``among``, else of all scored) outside ``normal_slices``.

        When every candidate is one of the model's own normals, the highest of them (there is nothing else).
        """
        rows = list(self.slices.values() if among is None else among)
        fresh = [s for s in rows if s.z not in self.normal_slices] or rows
        return max(fresh, key=lambda s: s.score) if fresh else None

    @classmethod
    def from_result(cls, layer_name: str, result: ScanResult, detector: Any = None,
                    label: str | None = None) -> ScanResults:
        """Start the accumulation of an image's results with ``result`` (the first scoring of this model)."""
        shape = result.volume.shape
        res = cls(layer_name=layer_name, volume=result.volume, prepared=result.prepared, model=result.model,
                  unit=result.unit, calibration=result.calibration, label=label or result.model.label,
                  maps=np.zeros(shape, np.float32), mask=np.zeros(shape, np.uint8), scored=np.zeros(shape[0], bool),
                  detector=detector)
        res.merge(result)
        return res

    def accepts(self, result: ScanResult) -> bool:
        """Whether ``result`` adds to these results: the same model (fingerprint) on the same scan."""
        return (result.model.fingerprint == self.model.fingerprint and result.volume is self.volume
                and result.unit is self.unit)

    def merge(self, result: ScanResult) -> None:
        """Write a result's scored slices into the full-grid arrays (in place: layers showing them stay valid)."""
        if not self.accepts(result):
            raise ValueError("a result of another model or scan cannot be merged into these results")
        idx = np.asarray(result.indices, dtype=int)
        self.maps[idx] = result.map[idx]
        lesion = result.lesion_mask
        # a slice edited by hand keeps the drawing: scoring it again (the same model, the same mask) wrote over it
        edited = {int(z) for z in idx if self.hand_edited(int(z))}
        mine = np.asarray([z for z in idx if int(z) not in edited], dtype=int)
        if lesion is not None and mine.size:
            self.mask[mine] = lesion[mine].astype(np.uint8)
        self.scored[idx] = True
        self.prepared = result.prepared
        self.calibration = result.calibration
        key = result.scr.key() if result.scr is not None and result.mask_scr is not None else None
        feats = result.raw.features
        for i, z in enumerate(idx):
            z = int(z)
            if z in edited:
                pass  # its cut stays what it was: the drawing is the user's
            elif key is None:
                self.cut_params.pop(z, None)
            else:
                self.cut_params[z] = key
            if feats is not None:
                self.features[z] = feats[i]
            else:
                self.features.pop(z, None)
        for s in result.slices:
            self.slices[s.z] = s
        self.note_written(mine)
        self.embeddings.add_result(result)
        # One word about fitted slices, over everything scored so far (a second scoring added a second, partial one)
        from ..engine.provenance import SEEN_WARNING_TAIL, seen_warning

        kept = [w for w in (*self.warnings, *result.warnings) if not w.endswith(SEEN_WARNING_TAIL)]
        seen = seen_warning(set(result.seen_slices) & {int(z) for z in np.flatnonzero(self.scored)})
        self.warnings = tuple(dict.fromkeys([*kept, *([seen] if seen else [])]))
        self.generation += 1

    def note_written(self, indices: Iterable[int]) -> None:
        """Record that scoring or an SCR cut just wrote these slices of ``mask`` (not the user's hand)."""
        for z in indices:
            self.auto_digest[int(z)] = _digest(self.mask[int(z)])

    def hand_edited(self, z: int) -> bool:
        """Whether slice ``z`` of the mask was changed by hand since scoring or SCR last wrote it."""
        known = self.auto_digest.get(int(z))
        return known is not None and known != _digest(self.mask[int(z)])

    def hand_edited_slices(self) -> list[int]:
        return [z for z in sorted(self.auto_digest) if self.hand_edited(z)]

    def mask_description(self) -> str:
        """How the mask as shown was made, slice by slice: the operating points it was cut at and any hand edits.

        The viewer's exports say this above their table, as ``anomalens score`` names its one operating point:
        the SCR sliders re-cut the slices shown while they moved, so one mask may hold several points.
        """
        from ..engine.protocol import format_selection

        cal = self.calibration
        calibrated = cal.scr.key() if cal is not None and cal.scr is not None else None
        edited = set(self.hand_edited_slices())
        by_point: dict[tuple | None, list[int]] = {}
        for z in np.flatnonzero(self.scored):
            if int(z) not in edited:
                by_point.setdefault(self.cut_params.get(int(z)), []).append(int(z))
        parts = []
        for key, zs in sorted(by_point.items(), key=lambda kv: kv[1][0]):
            if key is None:
                what = f"plain mask (threshold {cal.threshold:.4g})" if cal is not None else "no mask"
            else:
                what = (f"SCR mask (threshold {key[0]:.4g}, lambda {key[1]:.4g}, tau {key[2]:.4g}, {key[3]})"
                        + (", the calibrated point" if key == calibrated else ", set with the SCR sliders"))
            parts.append(f"{what} on slice{'s' * (len(zs) != 1)} {format_selection(zs)}")
        if edited:
            parts.append(f"edited by hand on slice{'s' * (len(edited) != 1)} {format_selection(sorted(edited))}")
        return "the mask as shown in the viewer: " + "; ".join(parts)

    # -- what the docks read -------------------------------------------------------------------------
    @property
    def calibrated(self) -> bool:
        """Whether the map is in normal-quantile units with a mask (else raw scores, no mask)."""
        return self.calibration is not None and self.unit.value == "normal-quantile"

    @property
    def threshold(self) -> float | None:
        """The plain operating point in the map's unit (None: uncalibrated, no threshold)."""
        return self.calibration.threshold if self.calibrated and self.calibration is not None else None

    @property
    def slice_scores(self) -> dict[int, float]:
        """``{z: score}`` of every scored slice (the map's maximum over tissue, in ``unit``)."""
        return {z: s.score for z, s in sorted(self.slices.items())}

    def descriptors(self, z: int) -> tuple[np.ndarray | None, np.ndarray | None]:
        """(features, intensities) for SCR's pairwise weights of slice z: features when the detector gave them."""
        f = self.features.get(int(z))
        return (f, None) if f is not None else (None, self.prepared.batch([z])[0])

    @property
    def title(self) -> str:
        """``brain1 · patchcore v2``: the image and the model, as the layer names start."""
        return f"{self.layer_name} · {self.label}"

    @property
    def heatmap_name(self) -> str:
        return f"{self.title} anomaly{STALE_SUFFIX if self.stale else ''}"

    @property
    def mask_name(self) -> str:
        return f"{self.title} mask{STALE_SUFFIX if self.stale else ''}"

    @cached_property
    def study_name(self) -> str:
        """The study in suggested names: its series description, else a short hash (hashed once per result).

        Never the layer name: napari names a layer after its file, and sites name files after patients.
        """
        return study_name(self.volume)

    @property
    def file_stem(self) -> str:
        """A file-name stem for exports: ``AX_CT_patchcore_v2`` (series description) or ``f-1a2b3c4d_patchcore_v2``."""
        return export_stem(self.volume, self.label, self.study_name)

    @property
    def canvas_title(self) -> tuple[str, str]:
        """The result as the canvas names it: (``sample brain1``, ``lorentz v1``), never the layer's file name.

        A snapshot exports the canvas, and napari names a layer after its file (``DOE^JANE 98765``): the
        canvas uses the series description, else the study's short hash, as suggested file names do.
        """
        from .naming import series_text

        return series_text(self.volume) or self.study_name, self.label

    @property
    def unit_text(self) -> str:
        """One line on what the numbers mean, for status lines and the canvas legend."""
        return f"{self.title}: {self.unit.description}"


def format_score(value: float, unit: MapUnit | str) -> str:
    """A score as the docks write it.

    Three decimals in normal-quantile units (0.998 against 1.004 matters), else four significant digits
    (raw scores have any scale).
    """
    return f"{value:.3f}" if str(getattr(unit, "value", unit)) == "normal-quantile" else f"{value:.4g}"


# -- layers (UI thread) -------------------------------------------------------------------------------

def heatmap_contrast(maps: np.ndarray, calibration: Calibration | None, unit: MapUnit) -> tuple[float, float]:
    """Contrast limits for a heatmap layer.

    Normal-quantile maps: everything below the plain threshold looks like normal tissue, so the colour ramp
    starts a little below it and ends at the strongest score (at least 1, the top of the normal range). Raw
    maps have no meaning across models, so their median and top percentile are used.
    """
    vals = np.asarray(maps, dtype=np.float32)
    vals = vals[np.isfinite(vals) & (vals != 0)]
    if calibration is not None and unit.value == "normal-quantile":
        return quantile_ramp(float(calibration.threshold), float(vals.max()) if vals.size else 1.0)
    if vals.size == 0:
        return (0.0, 1.0)
    lo, hi = (float(v) for v in np.percentile(vals, (50.0, 99.9)))
    return (lo, hi if hi > lo else lo + 1e-6)


def quantile_ramp(threshold: float, top: float) -> tuple[float, float]:
    """A normal-quantile heatmap's colour ramp: just under the mask's cut to the strongest score, at least 1.

    One rule for scoring and for SCR's threshold moves: "Reset to calibrated" had left a ramp ending at 1.04
    where scoring had set 1.00. The ramp starts ``RAMP_BELOW`` under ``threshold``; 1 is the top of the normal range.
    """
    lo = float(threshold) - RAMP_BELOW
    hi = max(1.0, float(top))
    return (lo, hi if hi > lo else lo + 0.1)


def cut_threshold(state: AnomaLensState, res: ScanResults) -> float | None:
    """The threshold the shown mask is cut at: SCR's as the user moved it, else the calibrated plain one."""
    if not res.calibrated:
        return None
    return float(state.scr.threshold) if state.scr is not None else res.threshold


def follow_threshold(viewer: napari.Viewer, res: ScanResults, threshold: float | None) -> None:
    """Start a normal-quantile heatmap's colour ramp ``RAMP_BELOW`` under ``threshold`` (the mask's cut).

    Moving SCR's threshold to 0.89 had left the ramp at 0.94: the mask's outline then ran through tissue
    drawn in no colour at all.
    """
    heat = find_layer(viewer, res.heatmap_name)
    if heat is None or threshold is None or res.calibration is None or res.unit.value != "normal-quantile":
        return
    # the ramp's top as heatmap_contrast sets it (at least 1, else the strongest score; unscored slices are 0),
    # not the current top: a move to 0.999 had raised it for good. Called on every slider move: no copy.
    lo, hi = quantile_ramp(float(threshold), res.ramp_top())
    if user_set_contrast(heat):
        return  # the reader set their own window on the heatmap (napari's layer controls): theirs stays
    low, high = (float(v) for v in heat.contrast_limits_range)
    if lo < low or hi > high:
        heat.contrast_limits_range = (min(low, lo), max(high, hi))
    set_ramp(heat, (lo, hi))


#: Heatmap metadata: the colour ramp AnomaLens last set (a different one now was set by the user).
RAMP_KEY = "anomalens_ramp"


def set_ramp(heat: Any, limits: tuple[float, float]) -> None:
    """Set the heatmap's colour ramp and remember it as ours."""
    heat.contrast_limits = limits
    heat.metadata[RAMP_KEY] = tuple(float(v) for v in heat.contrast_limits)


def user_set_contrast(heat: Any) -> bool:
    """Whether the heatmap's ramp is not the one AnomaLens set last (the user moved napari's contrast slider).

    SCR moves and re-scoring reset it, which threw away a window the reader had chosen.
    """
    ours = heat.metadata.get(RAMP_KEY)
    return ours is not None and not np.allclose(ours, [float(v) for v in heat.contrast_limits], atol=1e-6)


def find_layer(viewer: napari.Viewer, name: str) -> Any:
    """The layer called ``name`` or None."""
    return viewer.layers[name] if name in viewer.layers else None


def show_results(viewer: napari.Viewer, results: ScanResults) -> tuple[Any, Any]:
    """Create or update the heatmap and mask layers of ``results``.

    Existing layers are updated in place (``layer.data[z] = …``; ``refresh()``), which keeps a labels
    layer's undo history of hand edits: napari resets that history only when ``layer.data`` is replaced.
    """
    source = find_layer(viewer, results.layer_name)
    scale, extra = result_geometry(source, results.volume)  # exactly the scan layer's grid (radiological)
    limits = heatmap_contrast(results.ramp_maps(), results.calibration, results.unit)
    meta = {ROLE_KEY: "heatmap", UNIT_KEY: results.unit.value, "unit_description": results.unit.description,
            MODEL_KEY: results.label, "model_fingerprint": results.model.fingerprint}
    heat = find_layer(viewer, results.heatmap_name)
    added = heat is None or tuple(heat.data.shape) != results.maps.shape
    if heat is None or tuple(heat.data.shape) != results.maps.shape:
        if heat is not None:
            viewer.layers.remove(heat)
        heat = viewer.add_image(results.maps, name=results.heatmap_name, scale=scale, colormap=HEATMAP_COLORMAP,
                                opacity=HEATMAP_OPACITY, blending="additive", contrast_limits=limits,
                                metadata=meta, **extra)
        set_ramp(heat, limits)  # remembered as ours, so a later window the reader sets is told apart
    else:
        heat.metadata.update(meta)
        if heat.data is not results.maps:
            heat.data = results.maps
        if not user_set_contrast(heat):  # a window the reader chose survives scoring more slices
            heat.contrast_limits_range = (min(limits[0], float(results.maps.min())),
                                          max(limits[1], limits[0] + 1e-6))
            set_ramp(heat, limits)
        heat.refresh()
    mask = None
    if results.calibrated:
        mask = find_layer(viewer, results.mask_name)
        mask_meta = {ROLE_KEY: "mask", MODEL_KEY: results.label, "model_fingerprint": results.model.fingerprint}
        if mask is None or tuple(mask.data.shape) != results.mask.shape:
            if mask is not None:
                viewer.layers.remove(mask)
            mask = viewer.add_labels(results.mask, name=results.mask_name, scale=scale, opacity=MASK_OPACITY,
                                     metadata=mask_meta, **extra)
            style_prediction(mask)
            added = True
        elif mask.data is not results.mask:
            write_mask(mask, results.mask)  # adopt the layer's array: hand edits and SCR share one mask
            results.mask = mask.data
        else:
            mask.refresh()
    style_references(viewer)
    if added and source is not None:
        # napari makes a new layer the active one: a fresh mask left active put napari's paint hints over the
        # status bar and its keys (1–7, brush) live on the model's mask; the scan stays the one worked on
        viewer.layers.selection.active = source
    return heat, mask


# -- mask colours: the model's outline and the expert's fill -----------------------------------------

def labels_colormap(color: str) -> Any:
    """A labels colormap drawing every non-zero label in ``color`` (background transparent).

    One colour per mask whatever label a hand edit paints with, so "which mask is this" has one answer.
    """
    from napari.utils.colormaps import DirectLabelColormap

    return DirectLabelColormap(color_dict={None: color, 0: (0.0, 0.0, 0.0, 0.0)})


def style_prediction(layer: Any) -> None:
    """Draw a model's mask as a cyan outline (``PREDICTION_CONTOUR`` pixels): the anatomy under it stays visible."""
    layer.colormap = labels_colormap(PREDICTION_COLOR)
    layer.contour = PREDICTION_CONTOUR
    layer.opacity = MASK_OPACITY
    layer.metadata[STYLED_KEY] = True


def style_reference(layer: Any) -> None:
    """Draw a reference (expert) lesion mask filled in translucent yellow, under the model's cyan outline."""
    layer.colormap = labels_colormap(REFERENCE_COLOR)
    layer.contour = 0
    layer.opacity = REFERENCE_OPACITY
    layer.metadata[STYLED_KEY] = True


def reference_layers(viewer: napari.Viewer) -> list[Any]:
    """The reference lesion masks in the viewer (labels layers with the ``lesion`` role, e.g. "brain1 lesion")."""
    from napari.layers import Labels

    return [lyr for lyr in viewer.layers if isinstance(lyr, Labels) and lyr.metadata.get(ROLE_KEY) == "lesion"]


def style_references(viewer: napari.Viewer) -> list[Any]:
    """Give reference masks not yet styled their colour (a user's later change is kept); returns those styled."""
    todo = [lyr for lyr in reference_layers(viewer) if not lyr.metadata.get(STYLED_KEY)]
    for lyr in todo:
        style_reference(lyr)
    return todo


def mask_legend(viewer: napari.Viewer, results: ScanResults | None) -> str:
    """Rich text saying which colour is which mask (the Detector dock shows it under the score curve)."""
    if results is None or not results.calibrated:
        return ""
    parts = [f'<span style="color:{PREDICTION_COLOR}">&#9634;</span> outline: {results.label} mask (model)']
    parts += [f'<span style="color:{REFERENCE_COLOR}">&#9632;</span> filled: {lyr.name} (reference)'
              for lyr in reference_layers(viewer) if lyr.visible]
    return "<br>".join(parts)


#: Canvas text overlays (napari ``canvas.overlays`` keys) naming the two masks, each in its mask's colour.
KEY_OVERLAYS = {"prediction": "anomalens_key_prediction", "reference": "anomalens_key_reference"}


def show_mask_key(viewer: napari.Viewer, results: ScanResults | None) -> dict[str, str]:
    """Name the masks on the canvas, bottom right, each line in its mask's colour; returns the texts shown.

    The dock's legend may be scrolled away on a small screen; the canvas is where the colours are read. The
    model is named in the caption over the colour bar, so each line stays short (``CAPTION_CHARS``).
    """
    from napari.components.overlays import TextOverlay

    mask = find_layer(viewer, results.mask_name) if results is not None and results.calibrated else None
    refs = [lyr for lyr in reference_layers(viewer) if lyr.visible]
    texts = {"prediction": "■ outline: model's mask" if mask is not None and mask.visible else "",
             # no layer names on the canvas (a snapshot exports it; napari names a layer after its file)
             "reference": (f"■ filled: reference lesion{'s' if len(refs) > 1 else ''}") if refs else ""}
    overlays = viewer.canvas.overlays
    for role, key in KEY_OVERLAYS.items():
        if key not in overlays:
            if not texts[role]:
                continue
            overlays[key] = TextOverlay(position="bottom_right", font_size=10, visible=False,
                                        color=PREDICTION_COLOR if role == "prediction" else REFERENCE_COLOR)
        overlays[key].text = texts[role]
        overlays[key].visible = bool(texts[role])
    return {role: text for role, text in texts.items() if text}


def most_anomalous(results: ScanResults) -> int | None:
    """The z of the highest-scoring slice scored so far, not counting the model's own normal slices.

    The engine's ``ScanResult.most_anomalous`` rule, less ``results.normal_slices``.
    """
    top = results.reading_start()
    return None if top is None else top.z


def goto_most_anomalous(viewer: napari.Viewer, results: ScanResults, result: ScanResult | None = None) -> int | None:
    """Show the most anomalous slice of ``result`` (else of everything ``results`` holds); returns its z.

    Where a radiologist starts reading a scored volume: the slice the model is surest about.
    """
    top = results.reading_start(result.slices if result is not None else None)
    z = None if top is None else top.z
    layer = find_layer(viewer, results.layer_name) or find_layer(viewer, results.heatmap_name)
    if z is not None and layer is not None:
        goto_index(viewer, layer, z)
    return z


def result_layers(viewer: napari.Viewer, results: ScanResults) -> list[Any]:
    """The heatmap and mask layers of ``results`` that are in the viewer."""
    return [lyr for lyr in (find_layer(viewer, results.heatmap_name), find_layer(viewer, results.mask_name))
            if lyr is not None]


def set_stale(viewer: napari.Viewer, results: ScanResults, stale: bool) -> None:
    """Mark (or unmark) a result's layers as made by a model that is no longer the loaded one."""
    if results.stale == stale:
        return
    layers = result_layers(viewer, results)
    results.stale = stale
    for lyr in layers:
        lyr.name = results.heatmap_name if lyr.metadata.get(ROLE_KEY) == "heatmap" else results.mask_name


def set_visible(viewer: napari.Viewer, results: ScanResults, visible: bool) -> None:
    for lyr in result_layers(viewer, results):
        lyr.visible = visible


#: Where the canvas names the result and its unit: over the colour bar, whose numbers it explains. napari tiles
#: the overlays of one corner; at the bottom left, beside the mask key, the two met over the "P" letter on a
#: 717-px canvas (and over each other on narrower ones), in the snapshot that goes into reports.
CAPTION_POSITION = "top_right"
#: The longest caption line (the study and the model each have one): right-aligned, it stays clear of the
#: centred edge letter on a 500-px canvas (about 9 px a character at napari's font size 10).
CAPTION_CHARS = 24


def elide(text: str, most: int) -> str:
    """``text`` cut to ``most`` characters with an ellipsis (the canvas has no room for long descriptions)."""
    return text if len(text) <= most else text[:max(most - 1, 1)].rstrip() + "…"


def show_legend(viewer: napari.Viewer, current: ScanResults | None) -> None:
    """Say on the canvas what the current result's numbers are, with a colour bar on its heatmap only."""
    for lyr in viewer.layers:
        if lyr.metadata.get(ROLE_KEY) == "heatmap" and hasattr(lyr, "colorbar"):
            lyr.colorbar.visible = False
    overlays = getattr(getattr(viewer, "canvas", None), "overlays", None)
    overlay = overlays.text if overlays is not None else viewer.text_overlay  # napari < 0.9: the old attribute
    if current is None:
        overlay.visible = False
        return
    heat = find_layer(viewer, current.heatmap_name)
    if heat is not None and hasattr(heat, "colorbar"):
        heat.colorbar.visible = True
    meaning = "1 = top of normal range" if current.calibrated else "not calibrated, no mask"
    stale = f"\n{STALE_SUFFIX.strip()}" if current.stale else ""
    study, model = (elide(part, CAPTION_CHARS) for part in current.canvas_title)
    overlay.text = f"{study}\n{model}{stale}\n{current.unit.short}\n{meaning}"
    overlay.position = CAPTION_POSITION
    overlay.font_size = 10
    tiling = getattr(getattr(viewer, "canvas", None), "overlay_tiling", None)
    if tiling is not None:  # napari tiles the top right sideways: the colour bar went left, under the "A"
        tiling.top_right = "vertical"
    overlay.visible = heat is None or bool(heat.visible)  # the caption explains the heatmap: hidden with it
    if heat is not None and heat not in _CAPTIONED:
        _CAPTIONED.add(heat)
        heat.events.visible.connect(lambda event, heat=heat: _caption_follows(viewer, heat))
    layers = viewer.layers
    if layers not in _CAPTIONED:
        _CAPTIONED.add(layers)
        layers.events.removed.connect(lambda event: _caption_follows(viewer, event.value, removed=True))


#: Heatmap layers (and layer lists) the canvas caption follows (``show_legend`` links each once).
_CAPTIONED: weakref.WeakSet = weakref.WeakSet()


def _caption_follows(viewer: napari.Viewer, heat: Any, removed: bool = False) -> None:
    """Hide the caption with its heatmap, show it again with it; a removed heatmap takes it away for good.

    "Close and open" removed brain1's heatmap and left "brain1 · lorentz v1" over the next study.
    """
    overlays = getattr(getattr(viewer, "canvas", None), "overlays", None)
    overlay = overlays.text if overlays is not None else viewer.text_overlay
    if getattr(heat, "metadata", {}).get(ROLE_KEY) != "heatmap":
        return
    from .state import get_state

    current = get_state(viewer).results
    if removed:
        if current is None or current.heatmap_name == heat.name or find_layer(viewer, current.heatmap_name) is None:
            overlay.visible = False
    elif current is not None and current.heatmap_name == heat.name:
        overlay.visible = bool(heat.visible)


def publish(viewer: napari.Viewer, state: AnomaLensState, layer_name: str, result: ScanResult,
            detector: Any, jump: bool | None = None, normal_slices: Iterable[int] = ()) -> ScanResults:
    """Add a scoring's result to the viewer: merged into its (image, model) results, shown, made current.

    The result's warnings (a CT scored with an MR model, a shrunk field of view) reach the user once per
    image and model, as a notification; the docks show them in their status lines (``results.warnings``).
    ``jump``: show the result's most anomalous slice afterwards; by default when more than one slice was
    scored (a volume, the demo's held-out slices, a re-scoring after fine-tuning), while scoring one slice
    stays on it. ``normal_slices``: slices the model was fitted or calibrated on (``ScanResults.normal_slices``).
    """
    res = state.results_of(layer_name, result.model.fingerprint)
    if res is not None and res.accepts(result):
        res.merge(result)
        res.detector = detector
    else:
        res = state.add_results(ScanResults.from_result(layer_name, result, detector))
    res.normal_slices = res.normal_slices | frozenset(int(z) for z in (*normal_slices, *result.seen_slices))
    if res.stale:
        set_stale(viewer, res, False)
    show_results(viewer, res)
    tell_once(state, res)
    state.select_results(res)
    show_legend(viewer, res)
    state.mask_changed.emit(res.mask)
    if jump if jump is not None else len(result.indices) > 1:
        goto_most_anomalous(viewer, res, result)
    return res


def tell_once(state: AnomaLensState, res: ScanResults) -> list[str]:
    """Notify the user of a result's warnings (and of raw units) once per image and model; returns what was new."""
    key = (res.layer_name, res.model.fingerprint)
    told = state.told.setdefault(key, set())
    new = [w for w in res.warnings if w not in told]
    for w in new:
        told.add(w)
        notify_warning(f"{res.title}: {w}")
    if not res.calibrated and "uncalibrated" not in told:
        told.add("uncalibrated")
        notify_info(f"{res.label} is not calibrated: its heatmap is in raw detector scores and there is no mask; "
                    "calibrate it on a few normal scans for normal-quantile units and masks")
    return new


def _digest(mask_slice: np.ndarray) -> bytes:
    """A short fingerprint of one mask slice (which pixels are set), for telling hand edits from our writes."""
    return hashlib.blake2b(np.packbits(np.asarray(mask_slice) != 0).tobytes(), digest_size=16).digest()


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


def shown_index(viewer: napari.Viewer, layer: Any) -> int | None:
    """The z index of ``layer`` the canvas shows now, or None when it shows none of its slices.

    Unlike :func:`current_index` (which clamps), a scan whose slices lie elsewhere in the world than the
    viewer's current position, or that is hidden, is not on screen: scoring "the shown slice" of it would
    score a slice the user cannot see.
    """
    if layer is None:
        return None
    if not layer.visible:
        return None
    if layer.ndim < 3:
        return 0
    z = float(layer.world_to_data(viewer.dims.point)[-3])
    n = layer.data.shape[-3]
    return min(max(round(z), 0), n - 1) if -0.5 <= z <= n - 0.5 else None


def goto_index(viewer: napari.Viewer, layer: Any, z: int) -> None:
    """Show slice ``z`` of ``layer`` (its scale and translation taken into account)."""
    if layer is None or layer.ndim < 3:
        return
    point = list(layer.data_to_world([*([0] * (layer.ndim - 3)), int(z), 0, 0]))
    axis = viewer.dims.ndim - 3
    viewer.dims.set_point(axis, float(point[-3]))


def highlight_layer(viewer: napari.Viewer, layer: Any) -> Any:
    """The points layer that rings a patch on ``layer``'s grid, added (empty) when missing.

    The Poincaré dock asks for it as soon as it has points to hover: adding a layer holds the UI thread for
    ~100 ms, a stall on the first hover but not within the scoring that made the points.
    """
    pts = find_layer(viewer, HIGHLIGHT_LAYER)
    if pts is None:
        extra = {k: v for k, v in same_geometry(layer).items() if k != "scale"}  # translation etc. of the scan
        pts = viewer.add_points(np.zeros((0, 3)), ndim=3, name=HIGHLIGHT_LAYER, scale=tuple(layer.scale)[-3:],
                                size=12, symbol="ring", face_color="transparent", border_color="cyan",
                                metadata={ROLE_KEY: "highlight"}, **extra)
    return pts


def highlight_patch(viewer: napari.Viewer, layer: Any, z: float, y: float, x: float) -> None:
    """Ring the patch at (z, y, x) (data coordinates of ``layer``) in a points layer on the same grid."""
    highlight_layer(viewer, layer).data = np.array([[z, y, x]])
