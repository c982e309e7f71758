"""The main job on the embedded default case, shared by ``anomalens demo`` and ``anomalens-viewer --demo``.

Fetch ``sample:brain1``; train the default detector on healthy sources plus the case's lesion-free slices
(first time only: the bundle is cached in the user's model folder) and calibrate it on held-out lesion-free
slices; score the remaining slices (never fitted or calibrated on) with ``engine.scoring.score_scan``, and
write its files (those of ``anomalens score``) and the metrics to ``demo-output/``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .progress import CancelToken, ProgressCallback, report, stage
from .scoring import ScanResult
from .volume import Volume

# The paper method the product is named for, now that its fit on the demo's data takes 43-50 s on a 2-core CPU
# (bench/lorentz_fit_speed.py; 6 epochs at lr 5e-3): on the development table (docs/results.md) the Lorentz
# detector (fused with a memory bank) is ahead of the PatchCore-kind reference on brain1, lung1 and breast1
# in pixel AUROC and calibrated Dice. PatchCore, which fits in seconds, is one flag away (--detector patchcore).
DEFAULT_DETECTOR = "lorentz"
DEFAULT_CONFIG: dict[str, Any] = {}
#: Healthy scans the demo's model is fitted on beside brain1's own lesion-free slices.
HEALTHY = ("mni152",)


@dataclass
class DemoOutput:
    """What the demo produced: the scan's result (held-out slices), its metrics, the model and the files."""

    result: ScanResult
    metrics: dict[str, Any]
    model: Path
    files: dict[str, Path] = field(default_factory=dict)
    #: The scan's slices the model was fitted or calibrated on: never where a reader starts (a calibration
    #: slice's top pixel is the top of the normal range by construction, so it ranks with the lesion).
    normal_slices: tuple[int, ...] = ()

    @property
    def volume(self) -> Volume:
        return self.result.volume

    @property
    def evaluated(self) -> np.ndarray:
        return self.result.indices


def model_dir(detector: str) -> Path:
    """Where the demo keeps its trained bundle between runs."""
    from .paths import data_dir

    return data_dir() / "models" / f"demo-brain1-{detector}"


def run_demo(out: str | Path = "demo-output", detector: str = DEFAULT_DETECTOR, device: str = "auto",
             retrain: bool = False, progress: ProgressCallback | None = None,
             cancel: CancelToken | None = None) -> DemoOutput:
    """Run the whole job and write the result's files and ``metrics.json`` to ``out``.

    The held-out slices are scored by ``score_scan`` on the scan's own grid, exactly as ``anomalens score
    --slices`` would, and measured against the expert mask there.
    """
    from .detectors import create_detector, load_bundle
    from .domain import TRAINING_KEY, describe_scans
    from .evaluation import onsite_data
    from .fileio import atomic_write_text
    from .io import read_scan
    from .metrics import evaluate
    from .modelstore import ModelStore
    from .outputs import write_scan_result
    from .pipeline import load_volume, model_grid
    from .provenance import record_seen
    from .recalibration import calibrate_detector
    from .samples import fetch_sample
    from .scoring import score_scan

    report(progress, 0.0, "fetching sample:brain1")
    data = onsite_data("brain1", healthy=list(HEALTHY))
    path = model_dir(detector)
    det = load_bundle(path, device=device) if path.is_dir() and not retrain else None
    if det is not None and model_grid(det) != data.grid:
        det = None  # kept from a version that placed scans differently: its scale would not match
    if det is None:
        det = create_detector(detector, config=DEFAULT_CONFIG, device=device)
        det.preprocessing = {"grid": data.grid.to_dict()}
        det.fit(data.normals, progress=lambda f, m: report(progress, 0.05 + 0.8 * f, m), cancel=cancel)
        domain = describe_scans([data.volume, *(load_volume(f"sample:{h}") for h in HEALTHY)])
        det.training.update({TRAINING_KEY: domain.to_dict(), "modality": data.volume.modality})
        record_seen(det.training, data.volume, data.split.train)  # fitted or calibrated on: never a test
        calibrate_detector(det, data.calibration, cancel=cancel)
        ModelStore(path.parent).move_versions_out(path)  # a site's fine-tunes saved inside it stay
        det.save(path, overwrite=True)  # the old demo model stays whole until the new one is in place
        det = load_bundle(path, device=device)  # what every later run scores with, version and all
    report(progress, 0.9, "scoring held-out slices")
    idx = data.split.evaluate
    result = score_scan(det, data.volume, idx, progress=stage(progress, 0.9, 0.97), cancel=cancel)
    paths = fetch_sample("brain1")
    assert paths.mask is not None
    truth = read_scan(paths.mask).array[idx] > 0
    metrics = evaluate(result.map[idx], truth, result.prepared.foreground[idx], threshold=result.threshold,
                       scr_masks=None if result.mask_scr is None else result.mask_scr[idx], n_boot=200)
    metrics["evaluated_on"] = f"brain1 slices {data.split.spec_suffix('evaluate')} (never fitted or calibrated on)"
    metrics["detector"] = detector
    metrics["unit"] = result.unit.value
    metrics["model"] = result.model.to_dict()
    out = Path(out)
    files = write_scan_result(result, out)
    files["metrics"] = atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2, default=str))
    report(progress, 1.0, "done")
    return DemoOutput(result=result, metrics=metrics, model=path, files=files,
                      normal_slices=tuple(int(z) for z in data.split.train))
