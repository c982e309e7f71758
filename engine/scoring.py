"""A scan's result, made in one place: scan → detector → map in one unit → plain and SCR masks → per-slice scores.

``score_scan`` is the only function that turns a model and a scan into what the product shows and writes:
the CLI ``score``, batch scoring on dask, ``make demo``, ``anomalens eval`` and the viewer's workers all call
it and only present what it returns, so the same model and scan give the same numbers everywhere. Below it,
``apply_calibration`` is the only place raw detector maps become normal-quantile units and masks.

Units: a calibrated model's map is in normal-quantile units (0–1 on normal tissue, 1.0 the top of the
normal range, > 1 beyond every normal pixel; ``engine.postprocess.normalise``) and comes with the plain
mask (at the calibrated threshold) and the SCR mask (at the calibrated λ); an uncalibrated model's map is
its raw score, says so, and has no mask. The lesion mask a user gets (``lesion_mask``, flagged slices,
lesion volume) is the SCR mask when SCR is calibrated, else the plain one.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

import numpy as np

from .calibration import Calibration, ScrSettings
from .detectors.result import AnomalyResult
from .errors import ConfigError, ModelError
from .io.base import gap_indices
from .pipeline import PreparedScan, merge_results, model_grid, prepare, scan_placement
from .preprocess.foreground import foreground_mask
from .preprocess.fov import Placement, from_working, shrink_warning, to_working
from .preprocess.intensity import IntensityConfig
from .progress import CancelToken, ProgressCallback, check, report
from .protocol import format_selection
from .provenance import seen_in, seen_warning

if TYPE_CHECKING:
    from .detectors.base import Detector
    from .volume import Volume

log = logging.getLogger(__name__)

#: Slices scored per detector call. One value for every caller: batch composition must not change a number.
SCORE_BATCH = 8


class MapUnit(StrEnum):
    """What a map's numbers mean."""

    QUANTILE = "normal-quantile"
    RAW = "raw"

    @property
    def description(self) -> str:
        """One line for file headers, JSON and the viewer's labels."""
        if self is MapUnit.QUANTILE:
            return "normal-quantile units (1.0 = top of the normal range; above 1 = beyond every normal pixel)"
        return "raw detector scores (the model is not calibrated: no threshold, no mask)"

    @property
    def short(self) -> str:
        """A few characters for a colour bar or an axis."""
        return "normal quantile" if self is MapUnit.QUANTILE else "raw score"


@dataclass(frozen=True)
class ModelIdentity:
    """Which model made a result: enough to reproduce or audit it, nothing about patients."""

    detector: str
    detector_version: str
    name: str
    bundle_version: int
    fingerprint: str
    calibrated: bool
    calibration_created: str = ""

    @classmethod
    def of(cls, detector: Detector) -> ModelIdentity:
        manifest = detector.bundle_manifest or {}
        cal = detector.calibration
        return cls(detector=detector.name, detector_version=str(detector.version),
                   name=str(getattr(detector, "display_name", "") or detector.name),
                   bundle_version=int(manifest.get("bundle_version") or 0),
                   fingerprint=detector.content_fingerprint(), calibrated=cal is not None,
                   calibration_created=cal.created if cal is not None else "")

    @property
    def label(self) -> str:
        """``lorentz v3`` (a saved bundle) or ``lorentz (unsaved)``; the viewer's layer names carry it."""
        version = f"v{self.bundle_version}" if self.bundle_version else "(unsaved)"
        return f"{self.name} {version}"

    def to_dict(self) -> dict[str, Any]:
        return {"detector": self.detector, "detector_version": self.detector_version, "name": self.name,
                "bundle_version": self.bundle_version, "fingerprint": self.fingerprint,
                "calibrated": self.calibrated, "calibration_created": self.calibration_created or None}


@dataclass(frozen=True)
class SliceScore:
    """One scored slice: ``index`` as in the file (a selection keeps the original numbers), ``z`` in the array.

    ``score`` is the map's maximum over the slice's tissue, in the result's unit. ``flagged`` is whether the
    lesion mask holds voxels on it (None: no mask, the model is not calibrated).
    """

    index: int
    z: int
    score: float
    flagged: bool | None
    mask_voxels: int | None
    volume_ml: float | None

    def with_mask(self, mask: np.ndarray, voxel_ml: float) -> SliceScore:
        """This slice's row counted from another mask of it (the viewer's, hand edits included)."""
        voxels = int(np.count_nonzero(mask))
        return dataclasses.replace(self, flagged=voxels > 0, mask_voxels=voxels, volume_ml=voxels * voxel_ml)


@dataclass
class CalibratedMaps:
    """Maps of some slices in normal-quantile units and their two operating-point masks (same grid)."""

    maps: np.ndarray
    mask: np.ndarray
    scr_mask: np.ndarray | None
    threshold: float
    scr: ScrSettings


@dataclass
class ScanResult:
    """Everything the product shows and writes for one scan and one model (arrays on the scan's own grid).

    ``map``, ``mask`` and ``mask_scr`` are (z, y, x) like the volume; slices not in ``indices`` are zero
    and were not scored. ``raw`` is the detector's own output for the scored slices (embeddings for the
    Poincaré disk, per-pixel descriptors for SCR), placed on the scan's grid, in raw units (None unless
    ``score_scan(detail=True)``).
    """

    volume: Volume
    prepared: PreparedScan
    indices: np.ndarray
    map: np.ndarray
    unit: MapUnit
    mask: np.ndarray | None
    mask_scr: np.ndarray | None
    calibration: Calibration | None
    scr: ScrSettings | None
    slices: tuple[SliceScore, ...]
    model: ModelIdentity
    raw: AnomalyResult | None
    warnings: tuple[str, ...] = ()
    seconds_per_slice: float = 0.0
    notes: tuple[str, ...] = field(default_factory=tuple)
    #: How the detector cut ``mask_scr`` itself (its paper's SCR), None when the engine's SCR cut it.
    scr_source: str | None = None
    #: Array slices of this scan the model was fitted or calibrated on (``engine.provenance``): no test of it.
    seen_slices: tuple[int, ...] = ()
    #: torch's CPU threads while it was scored: the backbone's sums round differently with another count
    #: (brain1, PatchCore: features 1e-5 apart, up to 0.004 normal-quantile units, a mask voxel), so the same
    #: model, scan and thread count give the same numbers to the bit, and a record says which count it was.
    threads: int = 0

    @property
    def calibrated(self) -> bool:
        return self.unit is MapUnit.QUANTILE

    @property
    def lesion_mask(self) -> np.ndarray | None:
        """The mask a user gets: SCR's when it was cut, else the plain one (None when uncalibrated)."""
        return self.mask_scr if self.mask_scr is not None else self.mask

    @property
    def lesion_mask_kind(self) -> str | None:
        if self.mask_scr is not None:
            return "scr"
        return "plain" if self.mask is not None else None

    @property
    def voxel_ml(self) -> float:
        """One voxel's volume in millilitres (spacing in mm)."""
        return float(np.prod(self.volume.spacing)) / 1000.0

    @property
    def flagged_slices(self) -> list[int]:
        return [s.index for s in self.slices if s.flagged]

    @property
    def lesion_volume_ml(self) -> float | None:
        m = self.lesion_mask
        return None if m is None else float(np.count_nonzero(m)) * self.voxel_ml

    @property
    def threshold(self) -> float | None:
        return None if self.calibration is None else self.calibration.threshold

    def most_anomalous(self) -> int | None:
        """The array z of the highest-scoring slice (where a viewer opens), None when nothing was scored."""
        if not self.slices:
            return None
        return max(self.slices, key=lambda s: s.score).z

    def summary(self) -> dict[str, Any]:
        """What ``score --json``, the batch manifest and reports say about the result (no paths, no names)."""
        return {
            "unit": self.unit.value, "unit_description": self.unit.description,
            "model": self.model.to_dict(),
            "n_slices": len(self.indices),
            "max_score": max((s.score for s in self.slices), default=None),
            "threshold": self.threshold,
            "mask": self.lesion_mask_kind,
            "scr": ({"source": self.scr_source} if self.scr_source else None) if self.scr is None else {
                "threshold": self.scr.threshold, "lambda": self.scr.lam, "tau": self.scr.tau, "mode": self.scr.mode},
            "flagged_slices": self.flagged_slices if self.calibrated else None,
            "seen_slices": file_slices(self.volume, self.seen_slices),
            "torch_threads": self.threads,
            "lesion_volume_ml": None if self.lesion_volume_ml is None else round(self.lesion_volume_ml, 4),
            "seconds_per_slice": round(self.seconds_per_slice, 4),
            "warnings": list(self.warnings),
        }


# -- calibration applied to a detector's output ---------------------------------------------------------

def apply_calibration(calibration: Calibration, result: AnomalyResult, slices: np.ndarray,
                      foreground: np.ndarray | None = None, scr: bool = True,
                      settings: ScrSettings | None = None) -> CalibratedMaps:
    """Normalise, threshold and (optionally) SCR-refine a result at a calibrated operating point.

    ``slices`` are the intensities the result was scored on (SCR's pairwise fallback when the detector gave no
    per-pixel features). ``settings`` overrides SCR's point (the viewer's sliders); default: the calibrated one.
    In 3-D mode the stack is cut as one graph, so give it consecutive slices of one scan. A result with the
    detector's own masks (``AnomalyResult.own_masks``) gets those, on tissue, as its SCR mask.
    """
    maps = calibration.normalise(result.heatmaps)
    fg = foreground_mask(slices) if foreground is None else np.asarray(foreground, bool)
    plain = (maps > calibration.threshold) & fg
    point = settings or calibration.scr
    scr_mask = None
    if scr and result.own_masks is not None:
        scr_mask = result.own_masks & fg
    elif scr and point.usable:
        scr_mask = cut_scr(maps, fg, point, features=result.features,
                           intensities=None if result.features is not None else slices)
    return CalibratedMaps(maps=maps, mask=plain, scr_mask=scr_mask, threshold=calibration.threshold, scr=point)


def cut_scr(maps: np.ndarray, foreground: np.ndarray, point: ScrSettings, features: np.ndarray | None = None,
            intensities: np.ndarray | None = None, weights: Any = None) -> np.ndarray:
    """The SCR mask of normal-quantile maps at an operating point: the one place any SCR mask is cut.

    ``apply_calibration`` cuts the result's masks with it, and the viewer's live slider preview and "Apply
    to volume" cut with it too, so a mask tuned on screen is the mask ``score_scan(settings=…)`` writes.
    ``weights``: SCR's pairwise weights for this grid when the caller keeps them (they depend only on the
    descriptors, τ and the mode, not on λ or the threshold). One slice, or consecutive slices.
    """
    from .postprocess.scr import scr_refine

    maps = np.asarray(maps, dtype=np.float32)
    mode = point.mode if maps.ndim == 3 and maps.shape[0] > 1 else "2d"
    return scr_refine(maps, point.threshold, float(point.lam or 0.0), point.tau, features=features,
                      intensities=intensities, mode=mode, temperature=point.temperature, weights=weights,
                      foreground=np.asarray(foreground, bool))


# -- the entry function -------------------------------------------------------------------------------

def score_scan(detector: Detector, volume: Volume, slices: Sequence[int] | np.ndarray | None = None, *,
               scr: bool = True, settings: ScrSettings | None = None, detail: bool = True,
               prepared: PreparedScan | None = None, model: ModelIdentity | None = None,
               progress: ProgressCallback | None = None, cancel: CancelToken | None = None) -> ScanResult:
    """Score a scan (or some of its slices, as array indices) with a fitted model: the product's one result.

    Slices are normalised, scored, calibrated and cut batch by batch (``SCORE_BATCH``), so memory holds the
    scan, its map and masks and one batch, whatever the scan's length. 3-D SCR, which links slices, cuts each
    run of consecutive slices once they are all scored, so it keeps every batch's raw output until then.

    Args:
        detector: a fitted detector, calibrated or not.
        volume: the scan as read (``pipeline.load_volume``); never modified.
        slices: array z indices to score (default: all).
        scr: cut the SCR mask (calibrated models with SCR parameters).
        settings: SCR's operating point instead of the calibrated one (the viewer's sliders).
        detail: keep the detector's own output in ``raw`` (embeddings for the Poincaré disk, per-pixel
            features for live SCR): the viewer wants it; files, batches and metrics do not.
        prepared: this volume's ``PreparedScan`` from an earlier call (``ScanResult.prepared``), so scoring
            one more slice does not normalise and mask the whole scan again; used only when it is this volume's,
            prepared as this model prepares scans.
        model: the detector's ``ModelIdentity`` when the caller has it (computing it hashes every weight).
        progress: progress callback; scoring is 0–90 %, 3-D SCR the rest.
        cancel: cancel token, checked between batches.

    Raises:
        ConfigError: an empty or out-of-range slice selection.
        ModelError: an unfitted model.
    """
    if not detector.fitted:
        raise ModelError(f"the {detector.name} model is not trained yet: train it or load a bundle")
    idx = np.arange(volume.n_slices) if slices is None else np.unique(np.asarray(list(slices), dtype=int))
    if idx.size == 0:
        raise ConfigError("no slices selected")
    if idx.min() < 0 or idx.max() >= volume.n_slices:
        raise ConfigError(f"slice selection out of range 0-{volume.n_slices - 1}")
    gaps = gap_indices(volume)  # empty slices a reader inserted where the series has none: not data
    idx = np.setdiff1d(idx, gaps)
    if idx.size == 0:
        raise ConfigError("no slices selected: only empty slices inserted where the series has none")
    intensity = (detector.preprocessing or {}).get("intensity")
    if prepared is None or prepared.volume is not volume or prepared.intensity != IntensityConfig.from_dict(intensity):
        prepared = prepare(volume, intensity)
    warnings = _scan_warnings(detector, prepared)
    seen = tuple(seen_in(detector.training, volume, among=idx))
    overlap = sorted(set(seen) & {int(z) for z in idx})
    if overlap:  # slice numbers as in the file, as scores.csv gives them (not the selection's array indices)
        warnings.append(seen_warning(file_slices(volume, overlap)))
    empty = [int(z) for z in idx if not prepared.foreground[int(z)].any()]
    if empty:
        one = len(empty) == 1
        warnings.append(f"{len(empty)} of the scored slices ({format_selection(file_slices(volume, empty))}) "
                        f"{'holds' if one else 'hold'} no tissue: {'it scores' if one else 'they score'} 0 and "
                        f"{'is' if one else 'are'} never flagged")
    grid = model_grid(detector)
    placement = None if grid is None else scan_placement(prepared, grid)
    if placement is not None and grid is not None:
        shrink = shrink_warning(placement, grid)
        if shrink:
            warnings.append(shrink)
    cal = detector.calibration
    own = scr and detector.cuts_own_masks  # the paper's own cut in SCR's slot (InvDetect scr_mode=paper)
    point = None if cal is None else (settings or cal.scr)
    cut = point is not None and scr and point.usable and not own
    linked = cut and point is not None and point.mode == "3d"
    shape = volume.shape
    full_map = np.zeros(shape, np.float32)
    mask = None if cal is None else np.zeros(shape, bool)
    mask_scr = np.zeros(shape, bool) if cut or own else None
    own_method = ""
    parts: list[AnomalyResult] = []
    t0 = time.perf_counter()
    for start in range(0, len(idx), SCORE_BATCH):
        check(cancel)
        batch = idx[start:start + SCORE_BATCH]
        sl = prepared.batch(batch)
        part = _score_batch(detector, sl, placement, cancel)
        if not detail:
            part.embeddings = None
        if own and part.own_masks is not None:
            own_method = part.own_masks_method
        if cal is None:
            full_map[batch] = part.heatmaps
            if mask_scr is not None and part.own_masks is not None:
                mask_scr[batch] = part.own_masks & prepared.batch_foreground(batch, sl)
        elif not linked:
            c = apply_calibration(cal, part, sl, prepared.batch_foreground(batch, sl), scr=cut or own,
                                  settings=point)
            full_map[batch], mask[batch] = c.maps, c.mask  # type: ignore[index]
            if mask_scr is not None and c.scr_mask is not None:
                mask_scr[batch] = c.scr_mask
        if detail or linked:
            parts.append(part)
        done = start + len(batch)
        report(progress, 0.9 * done / len(idx), f"scored {done}/{len(idx)} slices")
    seconds = (time.perf_counter() - t0) / len(idx)
    raw = merge_results(parts) if parts else None
    if linked and raw is not None and cal is not None:
        for run in _runs(idx):
            check(cancel)
            sl = prepared.batch(run)
            c = apply_calibration(cal, _take(raw, np.searchsorted(idx, run)), sl, prepared.batch_foreground(run, sl),
                                  scr=True, settings=point)
            full_map[run], mask[run] = c.maps, c.mask  # type: ignore[index]
            if mask_scr is not None and c.scr_mask is not None:
                mask_scr[run] = c.scr_mask
            report(progress, 0.9 + 0.1 * float(run[-1] - idx[0] + 1) / float(idx[-1] - idx[0] + 1), "cutting in 3-D")
    result = ScanResult(volume=volume, prepared=prepared, indices=idx, map=full_map,
                        unit=MapUnit.RAW if cal is None else MapUnit.QUANTILE, mask=mask, mask_scr=mask_scr,
                        calibration=cal, scr=point if cut else None, slices=(),
                        model=model or ModelIdentity.of(detector), raw=raw if detail else None,
                        warnings=tuple(dict.fromkeys(warnings)), seconds_per_slice=seconds,
                        scr_source=own_method or None, seen_slices=seen, threads=_torch_threads())
    result.slices = slice_scores(result)
    log.info("scored %d slices (%.3f s each, %d torch threads): %d flagged, unit %s", len(idx), seconds,
             result.threads, len(result.flagged_slices), result.unit.short)
    report(progress, 1.0, "scored")
    return result


def with_plain_mask(result: ScanResult) -> ScanResult:
    """An SCR-only result with its plain-threshold mask beside it, as ``score_scan`` makes it.

    The viewer keeps only the mask it shows (SCR's, hand edits included); a PACS push sends both segments,
    as ``anomalens score --push`` does: the map above the calibrated threshold, on tissue, on the scored slices.
    """
    if result.mask_scr is None or result.mask is not None or result.calibration is None:
        return result
    idx = np.asarray(result.indices, dtype=int)
    plain = np.zeros(result.volume.shape, dtype=bool)
    if len(idx):
        tissue = result.prepared.batch_foreground(idx)
        plain[idx] = (result.map[idx] > float(result.calibration.threshold)) & tissue
    return dataclasses.replace(result, mask=plain)


def _torch_threads() -> int:
    import torch

    return int(torch.get_num_threads())


def file_slices(volume: Volume, zs: Iterable[int]) -> list[int]:
    """Array indices of ``volume`` as slice numbers of its file (a ``SPEC#5-14`` selection starts at 5, not 0).

    What users read (scores.csv, ``flagged_slices``) numbers slices as in the file; a warning naming array
    indices of a selection named slices the output did not hold.
    """
    original = volume.metadata.get("selected_slices")
    return [int(original[int(z)]) if original is not None else int(z) for z in zs]


def slice_scores(result: ScanResult) -> tuple[SliceScore, ...]:
    """Per-slice scores of a result: the map's maximum over tissue, and the lesion mask's voxels on it."""
    original = result.volume.metadata.get("selected_slices")
    lesion = result.lesion_mask
    out = []
    for z in result.indices:
        z = int(z)
        fg = result.prepared.foreground[z]
        # No tissue, nothing to score: the map's top over air scored an all-zero scan above the threshold (0.991
        # against 0.990) on slices its tissue-bound mask never flagged
        score = float(result.map[z][fg].max()) if fg.any() else 0.0
        voxels = None if lesion is None else int(np.count_nonzero(lesion[z]))
        out.append(SliceScore(index=int(original[z]) if original is not None else z, z=z, score=score,
                              flagged=None if voxels is None else voxels > 0, mask_voxels=voxels,
                              volume_ml=None if voxels is None else voxels * result.voxel_ml))
    return tuple(out)


def _scan_warnings(detector: Detector, prepared: PreparedScan) -> list[str]:
    """What the user must know before trusting this scan's result: the volume's own notes and domain checks."""
    from .domain import TrainingDomain, domain_warnings

    domain = TrainingDomain.from_training({**(detector.preprocessing or {}), **(detector.training or {})})
    return [*prepared.volume.warnings, *domain_warnings(domain, prepared.volume, foreground=prepared.foreground)]


def _runs(idx: np.ndarray) -> list[np.ndarray]:
    """Consecutive runs of sorted indices: 3-D SCR links neighbouring slices only."""
    return np.split(idx, np.flatnonzero(np.diff(idx) != 1) + 1)


def _take(res: AnomalyResult, pos: np.ndarray) -> AnomalyResult:
    """The slices ``pos`` of a result (maps and per-pixel features; embeddings are not needed for masks)."""
    if len(pos) == res.n_slices:
        return res
    return AnomalyResult(heatmaps=res.heatmaps[pos], scores=res.scores[pos], embeddings=None,
                         features=None if res.features is None else res.features[pos], normalised=res.normalised,
                         info=res.info, own_masks=None if res.own_masks is None else res.own_masks[pos],
                         own_masks_method=res.own_masks_method)


def _score_batch(detector: Detector, slices: np.ndarray, placement: Placement | None,
                 cancel: CancelToken | None) -> AnomalyResult:
    """The detector's raw output for some normalised slices, on the scan's grid."""
    if placement is None:
        return _score_square(detector, slices, cancel)
    return _back_to_scan(detector.score(to_working(slices, placement), cancel=cancel), placement)


def _score_square(detector: Detector, slices: np.ndarray, cancel: CancelToken | None) -> AnomalyResult:
    """Score slices padded to a square (bundles from before working grids) and crop the maps back."""
    from .preprocess.resize import pad_to_square

    _, h, w = slices.shape
    if h == w:
        return detector.score(slices, cancel=cancel)
    res = detector.score(pad_to_square(slices), cancel=cancel)
    top, left = (max(h, w) - h) // 2, (max(h, w) - w) // 2
    crop = (slice(None), slice(top, top + h), slice(left, left + w))
    emb = res.embeddings
    if emb is not None:
        emb.centers = emb.centers - np.asarray([top, left], np.float32)
    return AnomalyResult(heatmaps=res.heatmaps[crop], scores=res.scores, embeddings=emb,
                         features=None if res.features is None else res.features[crop], normalised=res.normalised,
                         info=res.info, own_masks=None if res.own_masks is None else res.own_masks[crop],
                         own_masks_method=res.own_masks_method)


def _back_to_scan(res: AnomalyResult, p: Placement) -> AnomalyResult:
    """A result on the working grid, brought back to the scan's grid (maps, features, patch centres)."""
    feats = None
    if res.features is not None and res.features.ndim == 3:
        feats = from_working(res.features, p)
    elif res.features is not None:
        f = np.moveaxis(res.features, -1, 1)  # (n, H, W, C) → (n, C, H, W): resample each channel alike
        n, c = f.shape[:2]
        back = from_working(f.reshape(n * c, *f.shape[2:]), p)
        feats = np.moveaxis(back.reshape(n, c, *back.shape[1:]), 1, -1)
    emb = res.embeddings
    if emb is not None:
        emb.centers = p.to_scan_points(emb.centers)
    own = None if res.own_masks is None else from_working(res.own_masks.astype(np.float32), p) > 0.5
    return AnomalyResult(heatmaps=from_working(res.heatmaps, p), scores=res.scores, embeddings=emb,
                         features=feats, normalised=res.normalised, info=dict(res.info), own_masks=own,
                         own_masks_method=res.own_masks_method)
