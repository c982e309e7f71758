"""Evaluation datasets and the on-site protocol run shared by ``anomalens eval``, the bench and the demo.

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
from .progress import CancelToken, ProgressCallback, check, report
from .protocol import SliceSplit, onsite_split
from .volume import Volume

if TYPE_CHECKING:
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
    from .calibration import apply_calibration, calibrate_detector
    from .metrics import evaluate

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
        cal = apply_calibration(det, result, data.eval_slices, data.eval_foreground)
        metrics = evaluate(cal.maps, data.eval_masks, data.eval_foreground, threshold=cal.threshold,
                           scr_masks=cal.scr_mask)
        metrics["calibration"] = {k: v for k, v in det.calibration.items() if k != "normaliser"}
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
