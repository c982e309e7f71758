"""The steps before a detector: reading scans, normalising them, placing them on a model's working grid, training.

Data flows one way: spec → ``Volume`` → normalised slices on the working grid → detector → ``AnomalyResult``;
``engine.scoring.score_scan`` takes it from there to the product's one result, ``engine.evaluation`` measures
it. The CLI, the viewer's workers, batch scoring and the tests all call these same functions.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .detectors import AnomalyResult, Detector, create_detector
from .errors import ConfigError, InvalidVolumeError
from .io.base import NAN_REMEDY, gap_indices
from .preprocess import IntensityConfig, foreground_mask
from .preprocess.fov import Placement, WorkingGrid, grid_for, place, to_working
from .preprocess.intensity import scale_to_unit
from .progress import CancelToken, ProgressCallback, check, report
from .volume import Volume

if TYPE_CHECKING:
    from .domain import TrainingDomain


log = logging.getLogger(__name__)


class PreparedScan:
    """A scan normalised for a model: slices in [0, 1] on the scan's grid, and its tissue mask.

    The normalisation range and the tissue threshold come from the whole scan (``prepare``), so any batch
    of slices normalises and masks exactly as the whole stack does: ``batch(z)`` makes a few slices without
    holding the whole normalised stack, which streaming a 600-slice CT needs; ``slices`` and ``foreground``
    are the whole stack, made on first use and kept.
    """

    BATCH = 32

    def __init__(self, volume: Volume, lo: float = 0.0, hi: float = 1.0, threshold: float | None = None,
                 slices: np.ndarray | None = None, foreground: np.ndarray | None = None,
                 intensity: IntensityConfig | None = None) -> None:
        self.volume = volume
        self.lo, self.hi, self.threshold = float(lo), float(hi), threshold
        self.intensity = intensity or IntensityConfig()  # how it was normalised (a result reuses it only alike)
        self._slices = None if slices is None else np.asarray(slices, dtype=np.float32)
        self._foreground = None if foreground is None else np.asarray(foreground, dtype=bool)

    @property
    def n_slices(self) -> int:
        return self.volume.n_slices

    def batch(self, z: np.ndarray | Sequence[int]) -> np.ndarray:
        """Normalised slices ``z`` (array indices), without keeping them."""
        idx = np.asarray(z, dtype=int)
        if self._slices is not None:
            return self._slices[idx]
        return scale_to_unit(self.volume.array[idx], self.lo, self.hi)

    def batch_foreground(self, z: np.ndarray | Sequence[int], slices: np.ndarray | None = None) -> np.ndarray:
        """Tissue masks of slices ``z`` (``slices``: their normalised voxels, when already at hand)."""
        idx = np.asarray(z, dtype=int)
        if self._foreground is not None:
            return self._foreground[idx]
        sl = self.batch(idx) if slices is None else slices
        if self.threshold is None:
            return np.zeros(sl.shape, dtype=bool)
        return foreground_mask(sl, threshold=self.threshold)

    @property
    def slices(self) -> np.ndarray:
        if self._slices is None:
            self._slices = scale_to_unit(self.volume.array, self.lo, self.hi)
        return self._slices

    @property
    def foreground(self) -> np.ndarray:
        if self._foreground is None:
            fg = np.zeros(self.volume.shape, dtype=bool)
            for start in range(0, self.n_slices, self.BATCH):
                z = np.arange(start, min(self.n_slices, start + self.BATCH))
                fg[z] = self.batch_foreground(z)
            self._foreground = fg
        return self._foreground


def load_volume(spec: str, **read_opts: Any) -> Volume:
    """Read a scan from a SPEC (file, DICOM folder, ``sample:NAME``, optional ``#slices`` suffix)."""
    from .io.spec import load_spec, split_spec
    from .logredact import remember

    remember(split_spec(spec)[0])  # log lines about it never show its path or the names in it
    return load_spec(spec, **read_opts)


def prepare(volume: Volume, intensity: IntensityConfig | dict | None = None) -> PreparedScan:
    """How a volume is normalised for a model: its intensity range and tissue threshold, from the whole scan.

    Nothing is normalised yet (``PreparedScan.slices`` / ``batch`` do it on use). A slice selection takes
    both from its whole scan (``Volume.intensity_reference``), so it normalises as it would inside it.
    """
    from .preprocess.foreground import tissue_threshold
    from .preprocess.intensity import intensity_range, intensity_reference

    cfg = intensity if isinstance(intensity, IntensityConfig) else IntensityConfig.from_dict(intensity)
    if not np.isfinite(volume.array).all():
        raise InvalidVolumeError(f"the scan contains NaN/inf voxels; to replace them, {NAN_REMEDY}")
    ref = volume.intensity_reference if volume.intensity_reference is not None else intensity_reference(volume.array)
    lo, hi = intensity_range(ref, volume.modality, cfg)
    threshold = tissue_threshold(scale_to_unit(ref, lo, hi))
    return PreparedScan(volume=volume, lo=lo, hi=hi, threshold=threshold, intensity=cfg)


def model_grid(detector: Detector) -> WorkingGrid | None:
    """The working grid a model was trained on (None: saved before grids existed, pads to a square)."""
    return WorkingGrid.from_dict((detector.preprocessing or {}).get("grid"))


def scans_grid(scans: Sequence[PreparedScan], size: int | None = None) -> WorkingGrid:
    """The working grid a set of training scans defines (their largest body extent; ``grid_for``)."""
    from .preprocess.fov import body_extent_mm

    return grid_for([body_extent_mm(p.foreground, p.volume.spacing_zyx[1:]) for p in scans],
                    [p.volume.spacing_zyx[1:] for p in scans], size)


def scan_placement(prepared: PreparedScan, grid: WorkingGrid) -> Placement:
    """Where a scan lies on a working grid, from its whole tissue: every slice and batch is placed alike."""
    return place(prepared.volume.shape[1:], prepared.volume.spacing_zyx[1:], grid, prepared.foreground)


def working_slices(prepared: PreparedScan, indices: Sequence[int] | np.ndarray,
                   grid: WorkingGrid | None) -> tuple[np.ndarray, Placement | None]:
    """Slices of a prepared scan as a model sees them, and where they lie (None: padded to a square)."""
    from .preprocess.resize import pad_to_square

    sl = prepared.batch(indices)
    if grid is None:
        return pad_to_square(sl), None
    p = scan_placement(prepared, grid)
    return to_working(sl, p), p


def marked_slices(volume: Volume, indices: Sequence[int]) -> list[int]:
    """Slices a user marked normal that are data: the empty fillers a reader put in for missing slices go.

    Raises:
        ConfigError: none is left.
    """
    gaps = set(gap_indices(volume))
    kept = sorted({int(z) for z in indices} - gaps)
    if not kept:
        raise ConfigError("the marked slices are all empty fillers of slices missing from the series; mark others")
    return kept


def gather_normals(specs: Sequence[str], intensity: IntensityConfig | dict | None = None,
                   size: int | None = None, progress: ProgressCallback | None = None,
                   cancel: CancelToken | None = None, info: dict | None = None,
                   grid: WorkingGrid | str | None = "auto") -> np.ndarray:
    """Normalised normal slices from several SPECs on one working grid, in one orientation.

    Different scans have different grids and pixel sizes; detectors need one stack with anatomy at one
    scale. Each scan is turned to the first scan's orientation (flips only) and resampled onto a working
    grid of fixed millimetres (``engine.preprocess.fov``): ``grid="auto"`` takes it from these scans
    (their largest body extent; ``size`` pixels a side, else their finest spacing) and reports it as
    ``info["grid"]``; a ``WorkingGrid`` (a trained model's) is used as given; None pads each scan to a
    square and resizes it to ``size`` (or the first scan's side), as models without a grid expect. Empty
    slices (no tissue) are dropped since they teach nothing about anatomy.
    """
    from .preprocess import resize_slices
    from .preprocess.orient import orientation_of, reorient, slices_before
    from .preprocess.resize import pad_to_square

    if not specs:
        raise ConfigError("no normal scans given")
    scans: list[tuple[PreparedScan, np.ndarray]] = []
    orientation = None
    for i, spec in enumerate(specs):
        check(cancel)
        volume = as_read = load_volume(spec)
        if info is not None and volume.warnings:  # numbered, never by path: logs and bundles outlive the session
            info.setdefault("warnings", []).extend(f"normal scan {i + 1} of {len(specs)}: {w}" for w in volume.warnings)
        if orientation is None:
            orientation = orientation_of(volume)
            if info is not None:
                info["modality"] = volume.modality
                info["orientation"] = orientation
        elif volume.n_slices > 1:
            volume = reorient(volume, orientation)
        prepared = prepare(volume, intensity)
        keep = np.flatnonzero(prepared.foreground.reshape(prepared.n_slices, -1).mean(1) > 0.02)
        keep = np.setdiff1d(keep, gap_indices(volume))  # empty fillers of missing slices teach nothing
        if keep.size:
            scans.append((prepared, keep))
            file_z = list(range(volume.n_slices)) if volume is as_read else slices_before(as_read, volume)
            if info is not None and file_z is not None:  # slices that became another axis are no file slice
                from .provenance import record_seen

                record_seen(info, as_read, [file_z[k] for k in keep])
        report(progress, (i + 1) / len(specs), f"read {keep.size} slices")
    if not scans:
        raise InvalidVolumeError("none of the normal scans has slices with tissue in them")
    if info is not None:  # what the model will know it was trained on (engine.domain: warnings at scoring)
        from .domain import TRAINING_KEY, describe_scans

        info[TRAINING_KEY] = describe_scans([p.volume for p, _ in scans], [p.foreground for p, _ in scans]).to_dict()
    if isinstance(grid, str):
        grid = scans_grid([p for p, _ in scans], size)
    stacks = []
    for prepared, keep in scans:
        if grid is None:
            slices = pad_to_square(prepared.slices[keep])
            size = size or slices.shape[1]
            stacks.append(resize_slices(slices, (size, size)) if slices.shape[1] != size else slices)
        else:
            stacks.append(working_slices(prepared, keep, grid)[0])
    if info is not None and grid is not None:
        info["grid"] = grid.to_dict()
    return np.concatenate(stacks).astype(np.float32)


def train(detector: str, normals: Sequence[str] | np.ndarray, config: dict | None = None, device: str = "auto",
          seed: int = 0, intensity: dict | None = None, progress: ProgressCallback | None = None,
          cancel: CancelToken | None = None, grid: WorkingGrid | None = None,
          domain: TrainingDomain | None = None) -> Detector:
    """Create and fit a detector on normal scans (SPECs) or an already prepared slice stack.

    SPECs are brought onto ``grid``, or one taken from them; a prepared stack carries the ``grid`` it was
    made on (None: padded squares, and the model scores scans the same way) and the ``domain`` of the scans
    it came from (``engine.domain.describe_scans``), so the model can warn about scans unlike them.
    """
    det = create_detector(detector, config=config, device=device, seed=seed)
    icfg = IntensityConfig.from_dict(intensity)
    info: dict = {}
    if isinstance(normals, np.ndarray):
        stack = normals
        grid_d = None if grid is None else grid.to_dict()
        if domain is not None:
            from .domain import TRAINING_KEY

            info[TRAINING_KEY] = domain.to_dict()
            info["modality"] = domain.modalities[0] if domain.modalities else "OT"
    else:
        stack = gather_normals(list(normals), icfg, progress=lambda f, m: report(progress, 0.1 * f, m),
                               cancel=cancel, info=info, grid="auto" if grid is None else grid)
        grid_d = info.pop("grid")
    det.preprocessing = {"intensity": icfg.to_dict(), **({"grid": grid_d} if grid_d else {})}
    det.fit(stack, progress=lambda f, m: report(progress, 0.1 + 0.9 * f, m), cancel=cancel)
    det.notes = info.pop("warnings", [])  # what reading the normals turned up: shown by the caller, not saved
    det.training.update(info)  # modality, domain, orientation: score_scan warns about scans unlike these
    log.info("trained %s on %d normal slices of %d×%d px (working grid %s)", detector, len(stack),
             *stack.shape[1:], "from the scans" if grid_d else "none: slices as given")
    return det


def parse_slices(selection: str | None, n: int) -> np.ndarray:
    """Parse ``3-10,14`` into sorted unique indices within [0, n)."""
    from .io.spec import parse_selection

    if not selection:
        return np.arange(n)
    return np.asarray(parse_selection(selection, n), dtype=int)


def _merge_embeddings(es: Sequence[Any], offsets: np.ndarray) -> Any:
    """Batches' embeddings as one (the geometry, hyperplane and its owner are the first part's; its views too)."""
    slice_index = np.concatenate([e.slice_index + o for e, o in zip(es, offsets, strict=True)])
    centers = np.concatenate([e.centers for e in es])
    scores = None if any(e.scores is None for e in es) else np.concatenate([e.scores for e in es])
    n_views = min(len(e.alternatives) for e in es)
    views = tuple(dataclasses.replace(es[0].alternatives[k], points=np.concatenate([e.alternatives[k].points
                                                                                     for e in es]),
                                      slice_index=slice_index, centers=centers, scores=scores)
                  for k in range(n_views))
    return dataclasses.replace(es[0], points=np.concatenate([e.points for e in es]), slice_index=slice_index,
                               centers=centers, scores=scores, alternatives=views)


def merge_results(parts: Sequence[AnomalyResult]) -> AnomalyResult:
    """Concatenate batch results (embeddings get their slice indices offset)."""
    if len(parts) == 1:
        return parts[0]
    feats = None if any(p.features is None for p in parts) else np.concatenate([p.features for p in parts])
    emb = None
    if all(p.embeddings is not None for p in parts):
        offsets = np.cumsum([0] + [p.n_slices for p in parts[:-1]])
        es = [p.embeddings for p in parts]
        emb = _merge_embeddings(es, offsets)
    own = None if any(p.own_masks is None for p in parts) else np.concatenate([p.own_masks for p in parts])
    return AnomalyResult(heatmaps=np.concatenate([p.heatmaps for p in parts]),
                         scores=np.concatenate([p.scores for p in parts]), embeddings=emb, features=feats,
                         normalised=parts[0].normalised, info=dict(parts[0].info), own_masks=own,
                         own_masks_method=parts[0].own_masks_method)
