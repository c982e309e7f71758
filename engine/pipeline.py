"""The entry functions behind the CLI, the viewer's workers and the tests (one code path for all three).

Data flows one way: spec → ``Volume`` → normalised slices → detector → ``AnomalyResult`` → outputs.
"""

from __future__ import annotations

import csv
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .detectors import AnomalyResult, Detector, create_detector
from .errors import ConfigError, InvalidVolumeError
from .fileio import atomic_path
from .preprocess import IntensityConfig, foreground_mask, normalise_volume
from .preprocess.fov import Placement, WorkingGrid, grid_for, place, shrink_warning, to_working
from .progress import CancelToken, ProgressCallback, check, report
from .volume import Volume


@dataclass
class PreparedScan:
    """A scan normalised for a model: slices in [0, 1] on the scan's grid, and its tissue mask."""

    volume: Volume
    slices: np.ndarray
    foreground: np.ndarray
    indices: np.ndarray

    @property
    def n_slices(self) -> int:
        return len(self.slices)


@dataclass
class VolumeScore:
    """Scores of (some) slices of a volume, placed back on the full grid for export and display."""

    prepared: PreparedScan
    result: AnomalyResult
    heatmap: np.ndarray  # (z, y, x) on the volume grid; unscored slices are 0
    slice_scores: dict[int, float] = field(default_factory=dict)
    seconds_per_slice: float = 0.0


def load_volume(spec: str, **read_opts: Any) -> Volume:
    """Read a scan from a SPEC (file, DICOM folder, ``sample:NAME``, optional ``#slices`` suffix)."""
    from .io.spec import load_spec

    return load_spec(spec, **read_opts)


def prepare(volume: Volume, intensity: IntensityConfig | dict | None = None) -> PreparedScan:
    """Normalise a volume's intensities and compute its foreground."""
    cfg = intensity if isinstance(intensity, IntensityConfig) else IntensityConfig.from_dict(intensity)
    slices = normalise_volume(volume, cfg)
    indices = np.asarray(volume.metadata.get("selected_slices", range(volume.n_slices)), dtype=int)
    return PreparedScan(volume=volume, slices=slices, foreground=foreground_mask(slices), indices=indices)


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
    return place(prepared.slices.shape[1:], prepared.volume.spacing_zyx[1:], grid, prepared.foreground)


def working_slices(prepared: PreparedScan, indices: Sequence[int] | np.ndarray,
                   grid: WorkingGrid | None) -> tuple[np.ndarray, Placement | None]:
    """Slices of a prepared scan as a model sees them, and where they lie (None: padded to a square)."""
    from .preprocess.resize import pad_to_square

    sl = prepared.slices[np.asarray(indices, dtype=int)]
    if grid is None:
        return pad_to_square(sl), None
    p = scan_placement(prepared, grid)
    return to_working(sl, p), p


def field_of_view_warning(detector: Detector, prepared: PreparedScan) -> str | None:
    """A warning when a scan's tissue is wider than the model's field of view (it is shrunk to fit)."""
    grid = model_grid(detector)
    if grid is None:
        return None
    return shrink_warning(scan_placement(prepared, grid), grid)


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
    from .preprocess.orient import orientation_of, reorient
    from .preprocess.resize import pad_to_square

    if not specs:
        raise ConfigError("no normal scans given")
    scans: list[tuple[PreparedScan, np.ndarray]] = []
    orientation = None
    for i, spec in enumerate(specs):
        check(cancel)
        volume = load_volume(spec)
        if orientation is None:
            orientation = orientation_of(volume)
            if info is not None:
                info["modality"] = volume.modality
                info["orientation"] = orientation
        elif volume.n_slices > 1:
            volume = reorient(volume, orientation)
        prepared = prepare(volume, intensity)
        keep = np.flatnonzero(prepared.foreground.reshape(prepared.n_slices, -1).mean(1) > 0.02)
        if keep.size:
            scans.append((prepared, keep))
        report(progress, (i + 1) / len(specs), f"read {keep.size} slices")
    if not scans:
        raise InvalidVolumeError("none of the normal scans has slices with tissue in them")
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
          cancel: CancelToken | None = None, grid: WorkingGrid | None = None) -> Detector:
    """Create and fit a detector on normal scans (SPECs) or an already prepared slice stack.

    SPECs are brought onto ``grid``, or one taken from them; a prepared stack carries the ``grid`` it was
    made on (None: padded squares, and the model scores scans the same way).
    """
    det = create_detector(detector, config=config, device=device, seed=seed)
    icfg = IntensityConfig.from_dict(intensity)
    info: dict = {}
    if isinstance(normals, np.ndarray):
        stack = normals
        grid_d = None if grid is None else grid.to_dict()
    else:
        stack = gather_normals(list(normals), icfg, progress=lambda f, m: report(progress, 0.1 * f, m),
                               cancel=cancel, info=info, grid="auto" if grid is None else grid)
        grid_d = info.pop("grid")
    det.preprocessing = {"intensity": icfg.to_dict(), **({"grid": grid_d} if grid_d else {})}
    det.fit(stack, progress=lambda f, m: report(progress, 0.1 + 0.9 * f, m), cancel=cancel)
    det.training.update(info)  # the viewer warns when a scan's modality differs from the training data
    return det


def parse_slices(selection: str | None, n: int) -> np.ndarray:
    """Parse ``3-10,14`` into sorted unique indices within [0, n)."""
    from .io.spec import parse_selection

    if not selection:
        return np.arange(n)
    return np.asarray(parse_selection(selection, n), dtype=int)


def score_volume(detector: Detector, volume: Volume, slices: Sequence[int] | None = None,
                 batch_size: int = 16, progress: ProgressCallback | None = None,
                 cancel: CancelToken | None = None) -> VolumeScore:
    """Score selected slices of a volume with a fitted detector, in batches, with progress and cancel."""
    prepared = prepare(volume, (detector.preprocessing or {}).get("intensity"))
    idx = np.arange(volume.n_slices) if slices is None else np.asarray(list(slices), dtype=int)
    if idx.size == 0:
        raise ConfigError("no slices selected")
    if idx.min() < 0 or idx.max() >= volume.n_slices:
        raise ConfigError(f"slice selection out of range 0-{volume.n_slices - 1}")
    parts: list[AnomalyResult] = []
    grid = model_grid(detector)
    placement = None if grid is None else scan_placement(prepared, grid)
    t0 = time.perf_counter()
    for start in range(0, len(idx), batch_size):
        check(cancel)
        batch = idx[start:start + batch_size]
        if placement is None:
            parts.append(_score_square(detector, prepared.slices[batch], cancel))
        else:
            res = detector.score(to_working(prepared.slices[batch], placement), cancel=cancel)
            parts.append(_back_to_scan(res, placement, grid))
        report(progress, min(1.0, (start + len(batch)) / len(idx)), f"scored {start + len(batch)}/{len(idx)} slices")
    elapsed = time.perf_counter() - t0
    result = merge_results(parts)
    heat = np.zeros(volume.shape, dtype=np.float32)
    heat[idx] = result.heatmaps
    scores = {int(volume.metadata.get("selected_slices", list(range(volume.n_slices)))[i]): float(s)
              for i, s in zip(idx, result.scores, strict=True)}
    return VolumeScore(prepared=prepared, result=result, heatmap=heat, slice_scores=scores,
                       seconds_per_slice=elapsed / len(idx))


def _score_square(detector: Detector, slices: np.ndarray, cancel: CancelToken | None) -> AnomalyResult:
    """Score slices padded to a square (as the normals were in training) and crop the maps back."""
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
                         info=res.info)


def _back_to_scan(res: AnomalyResult, p: Placement, grid: WorkingGrid) -> AnomalyResult:
    """A result on the working grid, brought back to the scan's grid (maps, features, patch centres)."""
    from .preprocess.fov import from_working

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
    info = dict(res.info)
    warning = shrink_warning(p, grid)
    if warning:
        info["zoom_out"] = warning
    return AnomalyResult(heatmaps=from_working(res.heatmaps, p), scores=res.scores, embeddings=emb,
                         features=feats, normalised=res.normalised, info=info)


def merge_results(parts: Sequence[AnomalyResult]) -> AnomalyResult:
    """Concatenate batch results (embeddings get their slice indices offset)."""
    if len(parts) == 1:
        return parts[0]
    from .detectors import Embeddings

    feats = None if any(p.features is None for p in parts) else np.concatenate([p.features for p in parts])
    emb = None
    if all(p.embeddings is not None for p in parts):
        offsets = np.cumsum([0] + [p.n_slices for p in parts[:-1]])
        es = [p.embeddings for p in parts]
        e0 = es[0]
        emb = Embeddings(
            points=np.concatenate([e.points for e in es]),
            slice_index=np.concatenate([e.slice_index + o for e, o in zip(es, offsets, strict=True)]),
            centers=np.concatenate([e.centers for e in es]),
            manifold=e0.manifold, curvature=e0.curvature,
            scores=None if any(e.scores is None for e in es) else np.concatenate([e.scores for e in es]),
            hyperplane=e0.hyperplane, hyperplane_offset=e0.hyperplane_offset,
        )
    return AnomalyResult(heatmaps=np.concatenate([p.heatmaps for p in parts]),
                         scores=np.concatenate([p.scores for p in parts]), embeddings=emb, features=feats,
                         normalised=parts[0].normalised, info=dict(parts[0].info))


def write_score_outputs(vs: VolumeScore, out_dir: str | Path) -> dict[str, Path]:
    """Write ``heatmap.nii.gz`` on the input's grid and ``scores.csv`` (slice, score), atomically."""
    from .io import write_like

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    heat_path = write_like(vs.prepared.volume, vs.heatmap, out / "heatmap.nii.gz")
    csv_path = out / "scores.csv"
    with atomic_path(csv_path) as tmp, tmp.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["slice", "score"])
        for k in sorted(vs.slice_scores):
            w.writerow([k, f"{vs.slice_scores[k]:.6g}"])
    return {"heatmap": Path(heat_path), "scores": csv_path}


# -- evaluation (``anomalens eval``, the viewer's evaluation worker and the tests) ---------------------

@dataclass
class Evaluation:
    """Metrics of a model on labelled data, with the maps and masks they were computed from (for reports).

    ``maps`` are in normal-quantile units when the model is calibrated (raw detector scores otherwise);
    ``mask`` and ``scr_mask`` are the calibrated operating point without and with SCR (None when unavailable).
    """

    metrics: dict[str, Any]
    maps: np.ndarray
    mask: np.ndarray | None
    scr_mask: np.ndarray | None
    result: AnomalyResult


def score_slices(detector: Detector, slices: np.ndarray, batch_size: int = 16, keep_embeddings: bool = False,
                 progress: ProgressCallback | None = None,
                 cancel: CancelToken | None = None) -> tuple[AnomalyResult, float]:
    """Score an already normalised stack in batches; returns the result and the seconds per slice.

    Embeddings are dropped unless asked for: one point per patch for a whole dataset is memory the
    metrics never use.
    """
    if len(slices) == 0:
        raise ConfigError("no slices to score")
    parts: list[AnomalyResult] = []
    t0 = time.perf_counter()
    for start in range(0, len(slices), batch_size):
        check(cancel)
        part = detector.score(slices[start:start + batch_size], cancel=cancel)
        if not keep_embeddings:
            part.embeddings = None
        parts.append(part)
        done = min(len(slices), start + batch_size)
        report(progress, done / len(slices), f"scored {done}/{len(slices)} slices")
    return merge_results(parts), (time.perf_counter() - t0) / len(slices)


def evaluate_model(detector: Detector, data: Any, scr: bool = True, reduce: str = "max", n_boot: int = 1000,
                   batch_size: int = 16, progress: ProgressCallback | None = None,
                   cancel: CancelToken | None = None) -> Evaluation:
    """Score labelled data (``datasets.EvalData``) and compute every metric, at the calibrated operating point.

    Dice and precision need an operating point that was not tuned on the test data, so they come from
    the model's calibration (normals only); an uncalibrated model gets None for them, with a note.
    ``best_dice`` is tuned on this very data and is labelled as an upper bound wherever it is shown.
    """
    from .calibration import apply_calibration
    from .metrics import evaluate

    notes: list[str] = list(getattr(data, "notes", []))
    cal = detector.calibration or {}
    is_calibrated = "normaliser" in cal
    mode = cal.get("mode", "2d")
    if is_calibrated and mode == "3d" and not getattr(data, "is_stack", True):
        mode = "2d"
        notes.append("the model was calibrated for 3-D SCR, but these are separate 2-D images: SCR ran in 2-D")
    # In 2-D mode each slice is cut on its own, so the calibration is applied batch by batch and the
    # per-pixel features (large for a whole dataset) are dropped right away; 3-D SCR needs the whole stack.
    per_batch = is_calibrated and mode == "2d"
    n = len(data.slices)
    if n == 0:
        raise ConfigError("no slices to evaluate")
    parts: list[AnomalyResult] = []
    maps_parts: list[np.ndarray] = []
    mask_parts: list[np.ndarray] = []
    scr_parts: list[np.ndarray | None] = []
    seconds = 0.0
    for start in range(0, n, batch_size):
        check(cancel)
        sl = slice(start, min(n, start + batch_size))
        t0 = time.perf_counter()
        part = detector.score(data.slices[sl], cancel=cancel)
        seconds += time.perf_counter() - t0
        part.embeddings = None
        if per_batch:
            c = apply_calibration(detector, part, data.slices[sl], data.foreground[sl], scr=scr, mode="2d")
            maps_parts.append(c.maps)
            mask_parts.append(c.mask)
            scr_parts.append(c.scr_mask)
        if not (is_calibrated and mode == "3d"):
            part.features = None
        parts.append(part)
        report(progress, 0.85 * sl.stop / n, f"scored {sl.stop}/{n} slices")
    result = merge_results(parts)
    sec = seconds / n
    mask = scr_mask = None
    threshold = None
    maps = result.heatmaps
    if is_calibrated:
        if per_batch:
            maps, mask = np.concatenate(maps_parts), np.concatenate(mask_parts)
            scr_ok = [p for p in scr_parts if p is not None]
            scr_mask = np.concatenate(scr_ok) if len(scr_ok) == len(scr_parts) else None
        else:
            report(progress, 0.85, "applying the calibration" + (" and SCR" if scr else ""))
            c = apply_calibration(detector, result, data.slices, data.foreground, scr=scr, mode=mode)
            maps, mask, scr_mask = c.maps, c.mask, c.scr_mask
        threshold = float(cal["threshold"])
        if not scr:
            notes.append("SCR was switched off (--no-scr), so dice_scr and precision_scr are null")
        elif scr_mask is None:
            notes.append("the calibration has no SCR λ (no features or intensities at calibration time), "
                         "so dice_scr and precision_scr are null")
    else:
        notes.append("the model is not calibrated, so dice/precision (with and without SCR) have no operating "
                     "point and are null: run 'anomalens calibrate --model MODEL --normals SPEC... --out NEW' "
                     "with held-out normal scans")
    training = detector.training or {}
    fps = data.fingerprints()
    if training.get("fingerprint") in fps:
        notes.append("this data is the data the model was fitted on: every metric is optimistic; evaluate on "
                     "held-out scans")
    elif (training.get("fine_tuned_on") or {}).get("fingerprint") in fps:
        notes.append("this data is the data the model was fine-tuned on: every metric is optimistic")
    if cal.get("fingerprint") in fps:
        notes.append("this data is the data the model was calibrated on: the operating point is tuned to it")
    report(progress, 0.9, "computing metrics")
    metrics = evaluate(maps, data.masks, data.foreground, threshold=threshold, scr_masks=scr_mask,
                       reduce=reduce, n_boot=n_boot, seed=detector.seed)
    metrics["notes"] = notes + [n for n in metrics.get("notes", []) if n not in notes]
    metrics["seconds_per_slice"] = float(sec)
    metrics["calibrated"] = "normaliser" in cal
    metrics["scr"] = scr_mask is not None
    report(progress, 1.0, "done")
    return Evaluation(metrics=metrics, maps=maps, mask=mask, scr_mask=scr_mask, result=result)
