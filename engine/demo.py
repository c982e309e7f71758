"""The main job on the embedded default case, shared by ``anomalens demo`` and ``anomalens-viewer --demo``.

Fetch ``sample:brain1``; train the default detector on healthy sources plus the case's lesion-free slices
(first time only: the bundle is cached in the user's model folder) and calibrate it on held-out lesion-free
slices; score the remaining slices (never fitted or calibrated on), refine with SCR, and write the NIfTI
outputs and the metrics to ``demo-output/``.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .progress import CancelToken, ProgressCallback, report
from .volume import Volume

# The demo's first run trains its model, so it uses the detector that fits in seconds: the PatchCore-kind
# reference. The Lorentz detector (fused with a memory bank) measures better on brain1 (bench/
# bench_brain1.py: Dice 0.352 against 0.308 at the calibrated point) but trains for ~5 minutes on this
# CPU; it is one flag away (--detector lorentz).
DEFAULT_DETECTOR = "patchcore"
DEFAULT_CONFIG: dict[str, Any] = {}


@dataclass
class DemoOutput:
    """What the demo produced: the scan, maps on its grid, the model and the files written."""

    volume: Volume
    heatmap: np.ndarray
    mask: np.ndarray
    evaluated: np.ndarray
    metrics: dict[str, Any]
    model: Path
    files: dict[str, Path] = field(default_factory=dict)


def model_dir(detector: str) -> Path:
    """Where the demo keeps its trained bundle between runs."""
    from .paths import data_dir

    return data_dir() / "models" / f"demo-brain1-{detector}"


def run_demo(out: str | Path = "demo-output", detector: str = DEFAULT_DETECTOR, device: str = "auto",
             retrain: bool = False, progress: ProgressCallback | None = None,
             cancel: CancelToken | None = None) -> DemoOutput:
    """Run the whole job and write ``heatmap.nii.gz``, ``mask_scr.nii.gz`` and ``metrics.json`` to ``out``."""
    from .calibration import apply_calibration, calibrate_detector
    from .detectors import create_detector, load_bundle
    from .evaluation import onsite_data
    from .fileio import atomic_write_text
    from .io import write_like
    from .metrics import evaluate
    from .pipeline import model_grid
    from .preprocess.fov import from_working

    report(progress, 0.0, "fetching sample:brain1")
    data = onsite_data("brain1", healthy=["mni152"])
    path = model_dir(detector)
    det = load_bundle(path, device=device) if path.is_dir() and not retrain else None
    if det is not None and model_grid(det) != data.grid:
        det = None  # kept from a version that placed scans differently: its scale would not match
    if det is None:
        det = create_detector(detector, config=DEFAULT_CONFIG, device=device)
        det.preprocessing = {"grid": data.grid.to_dict()}
        det.fit(data.normals, progress=lambda f, m: report(progress, 0.05 + 0.8 * f, m), cancel=cancel)
        calibrate_detector(det, data.calibration, cancel=cancel)
        if path.exists():
            shutil.rmtree(path)
        det.save(path)
    report(progress, 0.9, "scoring held-out slices")
    result = det.score(data.eval_slices, cancel=cancel)
    cal = apply_calibration(det, result, data.eval_slices, data.eval_foreground)
    metrics = evaluate(cal.maps, data.eval_masks, data.eval_foreground, threshold=cal.threshold,
                       scr_masks=cal.scr_mask, n_boot=200)
    metrics["evaluated_on"] = f"brain1 slices {data.split.spec_suffix('evaluate')} (never fitted or calibrated on)"
    metrics["detector"] = detector
    vol, idx = data.volume, data.split.evaluate
    heat = np.zeros(vol.shape, np.float32)
    mask = np.zeros(vol.shape, np.uint8)
    # onsite_data resampled the case onto its working grid: bring the maps back to the scan's own grid.
    maps = from_working(cal.maps, data.placement)
    best = cal.scr_mask if cal.scr_mask is not None else cal.mask
    best = from_working(best.astype(np.float32), data.placement) > 0.5
    heat[idx], mask[idx] = maps, best
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = {"heatmap": write_like(vol, heat, out / "heatmap.nii.gz"),
             "mask": write_like(vol, mask, out / "mask_scr.nii.gz"),
             "metrics": atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2, default=str))}
    report(progress, 1.0, "done")
    return DemoOutput(volume=vol, heatmap=heat, mask=mask, evaluated=idx, metrics=metrics, model=path, files=files)
