"""``anomalens demo``: the main job end to end on the embedded default case.

Fetches ``sample:brain1``, trains (first time; the bundle is cached in the user's model folder) and
calibrates the default detector on healthy sources plus the case's lesion-free slices, scores the held-out
slices, refines with SCR and writes everything to ``demo-output/``. This is the headless half of
``make demo``; the viewer (``anomalens-viewer --demo``) runs the same pipeline and shows it, because the
engine never imports the app.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from anomalens.engine.cli.main import emit
from anomalens.engine.cli.progressbar import terminal_progress

DEFAULT_DETECTOR = "lorentz"


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("demo", parents=[common], help="run the main job on sample:brain1 and show it")
    p.add_argument("--out", type=Path, default=Path("demo-output"), help="output folder (default demo-output)")
    p.add_argument("--detector", default=DEFAULT_DETECTOR)
    p.add_argument("--retrain", action="store_true", help="ignore the cached demo model")
    p.add_argument("--device", default="auto")
    p.set_defaults(handler=run_demo)


def model_dir(detector: str) -> Path:
    """Where the demo keeps its trained bundle between runs."""
    from anomalens.engine.paths import data_dir

    return data_dir() / "models" / f"demo-brain1-{detector}"


def run_demo(args: argparse.Namespace) -> int:
    import shutil

    import numpy as np

    from anomalens.engine.calibration import apply_calibration, calibrate_detector
    from anomalens.engine.detectors import create_detector, load_bundle
    from anomalens.engine.evaluation import onsite_data
    from anomalens.engine.fileio import atomic_write_text
    from anomalens.engine.io import write_like
    from anomalens.engine.metrics import evaluate

    data = onsite_data("brain1", healthy=["mni152"])
    path = model_dir(args.detector)
    with terminal_progress(f"demo: {args.detector} on brain1") as progress:
        if path.is_dir() and not args.retrain:
            det = load_bundle(path, device=args.device)
        else:
            det = create_detector(args.detector, device=args.device)
            det.fit(data.normals, progress=progress)
            calibrate_detector(det, data.calibration)
            if path.exists():
                shutil.rmtree(path)
            det.save(path)
        result = det.score(data.eval_slices)
    cal = apply_calibration(det, result, data.eval_slices, data.eval_foreground)
    metrics = evaluate(cal.maps, data.eval_masks, data.eval_foreground, threshold=cal.threshold,
                       scr_masks=cal.scr_mask, n_boot=200)
    metrics["evaluated_on"] = f"brain1 slices {data.split.spec_suffix('evaluate')} (never fitted or calibrated on)"
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    vol = data.volume
    idx = data.split.evaluate
    heat = np.zeros(vol.shape, np.float32)
    mask = np.zeros(vol.shape, np.uint8)
    from anomalens.engine.preprocess import resize_slices

    heat[idx] = resize_slices(cal.maps, vol.shape[1:]) if cal.maps.shape[1:] != vol.shape[1:] else cal.maps
    best = cal.scr_mask if cal.scr_mask is not None else cal.mask
    m = resize_slices(best.astype(np.float32), vol.shape[1:]) > 0.5 if best.shape[1:] != vol.shape[1:] else best
    mask[idx] = m
    files = {"heatmap": write_like(vol, heat, out / "heatmap.nii.gz"),
             "mask": write_like(vol, mask, out / "mask_scr.nii.gz")}
    files["metrics"] = atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2, default=str))
    summary = {k: metrics.get(k) for k in ("pixel_auroc", "pixel_ap", "best_dice", "dice", "dice_scr")}
    emit(args, {"files": {k: str(v) for k, v in files.items()}, "metrics": summary, "model": str(path)},
         "\n".join([f"demo outputs in {out.resolve()}:"] + [f"  {k}: {v}" for k, v in files.items()]
                   + [f"  {k}: {v if v is None else round(v, 3)}" for k, v in summary.items()]
                   + [f"model: {path}"]))
    return 0
