"""Measuring a model: ``anomalens eval`` on labelled scans, and the on-site protocol of the benches and the demo.

``evaluate_model`` scores every labelled scan through ``engine.scoring.score_scan``, the function behind
``anomalens score`` and the viewer, so its Dice and Dice with SCR measure exactly the masks a user gets.

The on-site protocol (issue: Lorentz detector) fits on healthy sources plus a case's own lesion-free
slices far from the lesion, and evaluates on the rest, so no number is ever measured on a fitted slice.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import ConfigError
from .preprocess import foreground_mask
from .preprocess.fov import (
    Placement,
    WorkingGrid,
    mask_to_working,
    to_working,
)
from .progress import CancelToken, ProgressCallback, check, report, stage
from .protocol import SliceSplit, onsite_split
from .provenance import SEEN_WARNING_TAIL
from .volume import Volume

if TYPE_CHECKING:
    from .datasets import EvalData
    from .detectors.base import Detector
    from .pipeline import PreparedScan


@dataclass
class OnsiteData:
    """Normalised slices on one working grid: what to fit on and what to evaluate on."""

    normals: np.ndarray
    normal_sources: dict[str, int]
    case_normals: np.ndarray
    calibration: np.ndarray
    eval_slices: np.ndarray
    eval_masks: np.ndarray
    eval_foreground: np.ndarray
    split: SliceSplit
    volume: Volume
    grid: WorkingGrid
    placement: Placement  # where the case's grid lies in the working grid
    info: dict[str, Any] = field(default_factory=dict)


def _healthy_scan(spec: str, orientation: str | None, min_tissue: float,
                  max_slices: int) -> tuple[PreparedScan, np.ndarray]:
    """A healthy scan prepared for fitting, and the indices of its slices with enough tissue (subsampled)."""
    from .pipeline import load_volume, prepare
    from .preprocess.orient import reorient

    vol = load_volume(spec)
    if orientation:
        vol = reorient(vol, orientation)
    prepared = prepare(vol)
    keep = np.flatnonzero(prepared.foreground.reshape(prepared.n_slices, -1).mean(1) >= min_tissue)
    if keep.size > max_slices:
        keep = keep[np.linspace(0, keep.size - 1, max_slices).round().astype(int)]
    return prepared, keep


def healthy_slices(spec: str, size: int, orientation: str | None = None, min_tissue: float = 0.15,
                   max_slices: int = 40) -> np.ndarray:
    """Axial slices of a healthy scan with enough tissue, evenly subsampled, on a working grid of its own."""
    from .pipeline import scans_grid, working_slices

    prepared, keep = _healthy_scan(spec, orientation, min_tissue, max_slices)
    if keep.size == 0:
        return np.zeros((0, size, size), np.float32)
    return working_slices(prepared, keep, scans_grid([prepared], size))[0]


def onsite_data(sample: str = "brain1", healthy: Sequence[str] = ("mni152",), margin: int = 2, size: int = 256,
                max_healthy: int = 40, hold_out: bool = True) -> OnsiteData:
    """The on-site split of a sample with a lesion mask, plus healthy sources, on one working grid.

    The grid (``engine.preprocess.fov``) comes from the case and the healthy scans together, and each scan
    is placed by its whole tissue, as ``anomalens train`` does, so brain1's 0.78 mm pixels and MNI152's
    1 mm ones show anatomy at one scale.

    ``hold_out`` keeps every other lesion-free slice of the case out of fitting, for calibration (our
    operating-point metrics need normals never fitted on). False is the issue's protocol to the letter:
    every lesion-free slice ≥ ``margin`` slices from the lesion is fitted on, and there is nothing left to
    calibrate on. On brain1 it matters: PatchCore's pixel AUROC is 0.965 with all 16 case slices fitted
    and 0.951 with 8 (seed 0; bench/bench_brain1.py --protocol issue|calibrated).
    """
    from .io import read_scan
    from .pipeline import load_volume, prepare, scan_placement, scans_grid, working_slices
    from .preprocess.orient import orientation_of
    from .samples import fetch_sample

    paths = fetch_sample(sample)
    if paths.mask is None:
        raise ConfigError(f"sample {sample!r} has no lesion mask; the on-site protocol needs one")
    vol = load_volume(f"sample:{sample}")
    mask = read_scan(paths.mask).array > 0
    if mask.shape != vol.shape:
        raise ConfigError(f"the mask grid {mask.shape} does not match the image {vol.shape}")
    split = onsite_split(mask, margin)
    case = prepare(vol)
    scans = [_healthy_scan(f"sample:{spec}" if ":" not in spec else spec, orientation_of(vol), 0.15, max_healthy)
             for spec in healthy]
    grid = scans_grid([case] + [p for p, k in scans if k.size], size)
    placement = scan_placement(case, grid)
    slices = to_working(case.slices, placement)
    masks = mask_to_working(mask, placement)
    fg = foreground_mask(slices)
    case_normals = slices[split.train]
    case_normals = case_normals[fg[split.train].reshape(len(split.train), -1).mean(1) > 0.02]
    # Every other lesion-free slice is held out of fitting for calibration: a model's own training slices
    # score too low (a memory bank holds them exactly), which would make thresholds far too permissive.
    if hold_out:
        fit_part, calib_part = case_normals[0::2], case_normals[1::2]
    else:
        fit_part, calib_part = case_normals, case_normals[:0]
    parts, sources = [fit_part], {f"{sample} lesion-free (fit)": len(fit_part),
                                  f"{sample} lesion-free (calibration)": len(calib_part)}
    for spec, (prepared, keep) in zip(healthy, scans, strict=True):
        h = working_slices(prepared, keep, grid)[0] if keep.size else np.zeros((0, size, size), np.float32)
        parts.append(h)
        sources[spec] = len(h)
    return OnsiteData(normals=np.concatenate(parts), normal_sources=sources, case_normals=case_normals,
                      calibration=calib_part,
                      eval_slices=slices[split.evaluate], eval_masks=masks[split.evaluate],
                      eval_foreground=fg[split.evaluate], split=split, volume=vol, grid=grid, placement=placement,
                      info={"sample": sample, "margin": margin, "size": size, "grid": grid.to_dict(),
                            "hold_out": hold_out})


def run_onsite(detector: str, data: OnsiteData, config: dict[str, Any] | None = None, device: str = "cpu",
               seed: int = 0, target_fpr: float = 0.01,
               progress: ProgressCallback | None = None, cancel: CancelToken | None = None) -> dict[str, Any]:
    """Fit, calibrate (normals only), score the held-out slices and compute every metric.

    Calibration uses the held-out half of the case's lesion-free slices (never fitted on); without a
    held-out half (``onsite_data(hold_out=False)``) the operating-point metrics are None.
    """
    from .detectors import create_detector

    det = create_detector(detector, config=config, device=device, seed=seed)
    t0 = time.perf_counter()
    det.fit(data.normals, progress=lambda f, m: report(progress, 0.7 * f, m), cancel=cancel)
    fit_s = time.perf_counter() - t0
    metrics = assess_onsite(det, data, target_fpr, lambda f, m: report(progress, 0.7 + 0.3 * f, m), cancel)
    metrics["fit_seconds"] = fit_s
    return metrics


def assess_onsite(det: Detector, data: OnsiteData, target_fpr: float = 0.01,
                  progress: ProgressCallback | None = None, cancel: CancelToken | None = None) -> dict[str, Any]:
    """Calibrate a fitted detector (when held-out normals exist), score the evaluated slices, measure."""
    from .metrics import evaluate
    from .recalibration import calibrate_detector
    from .scoring import apply_calibration

    check(cancel)
    cal_slices = data.calibration
    if len(cal_slices):
        report(progress, 0.0, "calibrating on held-out normals")
        calibrate_detector(det, cal_slices, target_fpr=target_fpr, cancel=cancel)
    report(progress, 0.5, "scoring held-out slices")
    t0 = time.perf_counter()
    result = det.score(data.eval_slices, cancel=cancel)
    score_s = (time.perf_counter() - t0) / len(data.eval_slices)
    cal = None
    if len(cal_slices):
        assert det.calibration is not None
        cal = apply_calibration(det.calibration, result, data.eval_slices, data.eval_foreground)
        metrics = evaluate(cal.maps, data.eval_masks, data.eval_foreground, threshold=cal.threshold,
                           scr_masks=cal.scr_mask)
        metrics["calibration"] = det.calibration.summary()
        metrics["calibrated_on"] = f"{len(cal_slices)} held-out lesion-free slices of the case (not fitted on)"
    else:
        metrics = evaluate(result.heatmaps, data.eval_masks, data.eval_foreground)
        metrics["calibrated_on"] = "nothing: every lesion-free slice was fitted on (no operating point)"
    metrics["seconds_per_slice"] = score_s
    metrics["evaluated_on"] = f"slices {data.split.spec_suffix('evaluate')} (never fitted or calibrated on)"
    report(progress, 1.0, "done")
    metrics["_detector"] = det
    metrics["_result"] = result
    metrics["_calibrated"] = cal
    return metrics


# -- anomalens eval -----------------------------------------------------------------------------------

@dataclass
class Evaluation:
    """Metrics of a model on labelled scans, with the stacks they were computed from (for reports).

    Stacks hold every evaluated slice on one in-plane grid (2-D images of other sizes are padded with
    background): ``slices`` the model's normalised intensities, ``maps`` the result's map (normal-quantile
    units when calibrated, raw otherwise), ``mask`` / ``scr_mask`` the calibrated operating point without and
    with SCR (None when unavailable), ``truth`` and ``foreground`` the ground truth and the tissue.
    """

    metrics: dict[str, Any]
    slices: np.ndarray
    maps: np.ndarray
    mask: np.ndarray | None
    scr_mask: np.ndarray | None
    truth: np.ndarray
    foreground: np.ndarray
    names: list[str]


def evaluate_model(detector: Detector, data: EvalData, scr: bool = True, reduce: str = "max", n_boot: int = 1000,
                   progress: ProgressCallback | None = None, cancel: CancelToken | None = None,
                   include_seen: bool = False) -> Evaluation:
    """Score labelled scans with ``score_scan`` and compute every metric at the calibrated operating point.

    Dice and precision need an operating point that was not tuned on the test data, so they come from
    the model's calibration (normals only); an uncalibrated model gets None for them, with a note.
    ``best_dice`` is tuned on this very data and is labelled as an upper bound wherever it is shown.
    Slices the model records as fitted or calibrated on (``engine.provenance``) are left out of every metric
    unless ``include_seen``: a score there is no test of the model, and an evaluation must not count it.
    """
    from .metrics import evaluate
    from .scoring import score_scan

    notes: list[str] = list(data.notes)
    cal = detector.calibration
    if data.n_slices == 0:
        raise ConfigError("no slices to evaluate")
    if cal is not None and cal.scr.mode == "3d" and not data.is_stack:
        notes.append("the model was calibrated for 3-D SCR, but these are separate 2-D images: SCR ran in 2-D")
    parts: list[tuple[np.ndarray, ...]] = []
    names: list[str] = []
    left_out: list[str] = []
    seconds, done = 0.0, 0
    for scan in data.scans:
        check(cancel)
        n = scan.volume.n_slices
        r = score_scan(detector, scan.volume, scr=scr, detail=False, cancel=cancel,
                       progress=stage(progress, 0.85 * done / data.n_slices, 0.85 * (done + n) / data.n_slices))
        seconds += r.seconds_per_slice * n
        done += n
        seen = sorted(z for z in r.seen_slices if 0 <= z < n)
        keep = np.ones(n, bool)
        if seen and not include_seen:
            keep[seen] = False
            left_out += [scan.names[z] for z in seen]
        notes += [w for w in r.warnings if w not in notes and not (seen and not include_seen and _is_seen_warning(w))]
        if not keep.any():
            continue
        arrays = (r.prepared.slices, r.map, r.mask, r.mask_scr, scan.truth, r.prepared.foreground)
        parts.append(tuple(None if a is None else a[keep] for a in arrays))
        names += [name for name, k in zip(scan.names, keep, strict=True) if k]
    if not parts:
        raise ConfigError(f"every slice of this data ({len(left_out)}) was used to fit or calibrate the model, so "
                          "nothing here tests it: evaluate on other slices or scans (--include-seen counts them "
                          "anyway, with optimistic numbers)")
    if left_out:
        notes.insert(0, f"left out {len(left_out)} slice{'s' * (len(left_out) != 1)} the model was fitted or "
                        f"calibrated on ({_short_list(left_out)}): the metrics are on the other {len(names)}; "
                        "--include-seen counts them too")
    slices, maps, mask, scr_mask, truth, fg = (_stack([p[i] for p in parts]) for i in range(6))
    if cal is not None:
        if not scr:
            notes.append("SCR was switched off (--no-scr), so dice_scr and precision_scr are null")
        elif scr_mask is None:
            notes.append("the calibration has no SCR λ (no features or intensities at calibration time), "
                         "so dice_scr and precision_scr are null")
    else:
        notes.append("the model is not calibrated, so Dice and precision (with and without SCR) have no operating "
                     "point and are null: run 'anomalens calibrate --model MODEL --normals SPEC... --out NEW' "
                     "with held-out normal scans")
    notes += _overlap_notes(detector, data)
    report(progress, 0.9, "computing metrics")
    metrics = evaluate(maps, truth, fg, threshold=None if cal is None else cal.threshold, scr_masks=scr_mask,
                       reduce=reduce, n_boot=n_boot, seed=detector.seed)
    metrics["notes"] = notes + [n for n in metrics.get("notes", []) if n not in notes]
    metrics["seconds_per_slice"] = float(seconds / data.n_slices)
    metrics["calibrated"] = cal is not None
    metrics["scr"] = scr_mask is not None
    metrics["unit"] = "normal-quantile" if cal is not None else "raw"
    metrics["n_left_out_seen"] = len(left_out)
    report(progress, 1.0, "done")
    return Evaluation(metrics=metrics, slices=slices, maps=maps, mask=mask, scr_mask=scr_mask, truth=truth,
                      foreground=fg, names=names)


def _is_seen_warning(text: str) -> bool:
    """``score_scan``'s warning that fitted or calibrated slices were scored (moot once they are left out)."""
    return text.endswith(SEEN_WARNING_TAIL)


def _short_list(names: list[str], most: int = 8) -> str:
    """``z=0, z=1, … (12 in all)``: a note stays one readable line however many slices it names."""
    shown = ", ".join(names[:most])
    return shown if len(names) <= most else f"{shown}, … ({len(names)} in all)"


def _overlap_notes(detector: Detector, data: EvalData) -> list[str]:
    """Warnings when the evaluated scans are the ones the model was fitted, fine-tuned or calibrated on."""
    from .pipeline import model_grid

    training = detector.training or {}
    fps = data.fingerprints((detector.preprocessing or {}).get("intensity"), model_grid(detector))
    notes = []
    if training.get("fingerprint") in fps:
        notes.append("this data is the data the model was fitted on: every metric is optimistic; evaluate on "
                     "held-out scans")
    elif (training.get("fine_tuned_on") or {}).get("fingerprint") in fps:
        notes.append("this data is the data the model was fine-tuned on: every metric is optimistic")
    cal = detector.calibration
    if cal is not None and cal.fingerprint in fps:
        notes.append("this data is the data the model was calibrated on: the operating point is tuned to it")
    return notes


def _stack(arrays: list[np.ndarray | None]) -> Any:
    """Concatenate per-scan (z, y, x) stacks, padding smaller in-plane grids with zeros (background)."""
    if any(a is None for a in arrays):
        return None
    h = max(a.shape[1] for a in arrays)
    w = max(a.shape[2] for a in arrays)
    padded = [a if a.shape[1:] == (h, w) else
              np.pad(a, ((0, 0), (0, h - a.shape[1]), (0, w - a.shape[2]))) for a in arrays]
    return np.concatenate(padded)
