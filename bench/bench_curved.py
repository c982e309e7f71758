"""sample:brain1 under the on-site protocol: the curved-geometry heads (all six variants + the Euclidean
baseline) next to the Lorentz detector (and the PatchCore reference), in one run.

Same protocol as ``bench_brain1.py`` (``anomalens.engine.evaluation.run_onsite``): fit on MNI152 + brain1's
lesion-free slices ≥ 2 slices from any lesion, calibrate on held-out lesion-free slices, evaluate on the
rest. Each curved model is scored twice from the same fit: on the unrotated slice (``score_rotations=1``)
and averaged over the four rotations (``=4``, re-calibrated), which is how the README's scoring choice
was measured.

    .venv/bin/python bench/bench_curved.py [--variants euclidean,SiO,...] [--references lorentz,patchcore]
        [--set key=json] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import torch

from anomalens.engine.evaluation import OnsiteData, onsite_data, run_onsite
from anomalens.plugins.curved_heads.heads import VARIANTS

KEYS = ("pixel_auroc", "image_auroc", "pixel_ap", "best_dice", "fpr95", "fit_seconds", "seconds_per_slice")


def _rescore(det: Any, data: OnsiteData, rotations: int) -> dict[str, Any]:
    """Calibrate and evaluate an already fitted curved model with another ``score_rotations``."""
    from anomalens.engine.metrics import evaluate
    from anomalens.engine.recalibration import calibrate_detector
    from anomalens.engine.scoring import apply_calibration

    det.config.score_rotations = rotations
    calibrate_detector(det, data.calibration)
    t0 = time.perf_counter()
    result = det.score(data.eval_slices)
    per_slice = (time.perf_counter() - t0) / len(data.eval_slices)
    cal = apply_calibration(det.calibration, result, data.eval_slices, data.eval_foreground)
    m = evaluate(cal.maps, data.eval_masks, data.eval_foreground, threshold=cal.threshold, scr_masks=cal.scr_mask)
    m["seconds_per_slice"] = per_slice
    return m


def _fmt(v: Any) -> str:
    return "–" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--references", default="lorentz,patchcore", help="other detectors, default configs")
    ap.add_argument("--set", action="append", default=[], help="key=json applied to every curved variant")
    ap.add_argument("--no-tta", action="store_true", help="skip the 4-rotation re-scoring")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--healthy", default="mni152")
    ap.add_argument("--json", default=None)
    ap.add_argument("--threads", type=int, default=2, help="torch threads (1 when another bench shares the CPU)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    extra = {k: json.loads(v) for k, v in (s.split("=", 1) for s in args.set)}
    t_all = time.perf_counter()
    data = onsite_data("brain1", healthy=[h for h in args.healthy.split(",") if h], size=args.size)
    print(f"normals: {data.normal_sources} ({len(data.normals)} slices); evaluated slices "
          f"{data.split.spec_suffix('evaluate')} ({len(data.eval_slices)}), lesion slices "
          f"{data.split.lesion.tolist()}; calibration {len(data.calibration)} slices", flush=True)
    rows: dict[str, dict[str, Any]] = {}
    for variant in [v for v in args.variants.split(",") if v]:
        cfg = {"variant": variant, **extra}
        m = run_onsite("curved", data, config=cfg, seed=args.seed)
        det = m["_detector"]
        row = {k: m.get(k) for k in KEYS}
        row["rotation_accuracy"] = det.training_log.get("rotation_accuracy")
        if not args.no_tta:
            m4 = _rescore(det, data, 4)
            row.update({"pixel_auroc_rot4": m4["pixel_auroc"], "image_auroc_rot4": m4["image_auroc"],
                        "pixel_ap_rot4": m4["pixel_ap"], "seconds_per_slice_rot4": m4["seconds_per_slice"]})
        rows[variant] = row
        print(variant, json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}),
              flush=True)
    for ref in [r for r in args.references.split(",") if r]:
        m = run_onsite(ref, data, seed=args.seed)
        rows[ref] = {k: m.get(k) for k in KEYS}
        print(ref, json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in rows[ref].items()}),
              flush=True)

    cols = ["pixel_auroc", "image_auroc", "pixel_ap", "best_dice", "fpr95"]
    if not args.no_tta:
        cols += ["pixel_auroc_rot4", "image_auroc_rot4"]
    cols += ["fit_seconds", "seconds_per_slice"]
    print("\n| detector | " + " | ".join(cols) + " |\n|" + "---|" * (len(cols) + 1))
    for name, row in rows.items():
        label = name if name not in VARIANTS else f"curved {name}"
        print(f"| {label} | " + " | ".join(_fmt(row.get(c)) for c in cols) + " |")
    print(f"\ntotal {time.perf_counter() - t_all:.0f}s")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=2)


if __name__ == "__main__":
    main()
