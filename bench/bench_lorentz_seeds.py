"""Quick Lorentz variant sweeps on sample:brain1: pixel AUROC per seed and of the seed-averaged map.

Faster than ``bench_brain1.py`` (no calibration, no SCR, no bootstrap), for exploring options; the same
on-site data (fit on MNI152 + brain1's far lesion-free slices, evaluate on slices never fitted on). The
seed-averaged map ("ensemble") averages each seed's map after scaling it by its own held-out calibration
slices (median → 0, 99th percentile → 1), so seeds with different probability ranges weigh alike.

    .venv/bin/python bench/bench_lorentz_seeds.py [--set KEY=JSON ...] [--seeds 0,1,2] [--max-healthy 40] [--flip]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from anomalens.engine.detectors import create_detector
from anomalens.engine.evaluation import onsite_data
from anomalens.engine.metrics import evaluate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--detector", default="lorentz")
    ap.add_argument("--set", action="append", default=[], help="KEY=JSON detector option")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--max-healthy", type=int, default=40, help="MNI152 slices among the normals")
    ap.add_argument("--flip", action="store_true", help="add left–right mirrored copies of the normals")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--protocol", choices=("calibrated", "issue"), default="calibrated",
                    help="issue: fit on every far lesion-free case slice (the ensemble's scaling then uses "
                         "the fitted ones)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = {k: json.loads(v) for k, v in (s.split("=", 1) for s in args.set)}
    data = onsite_data("brain1", max_healthy=args.max_healthy, hold_out=args.protocol == "calibrated")
    ref_slices = data.calibration if len(data.calibration) else data.case_normals
    normals = data.normals[:, :, ::-1] if args.flip else None
    normals = np.ascontiguousarray(data.normals if normals is None else np.concatenate([data.normals, normals]))
    t0 = time.perf_counter()
    aurocs, dices, scaled = [], [], []
    for seed in (int(s) for s in args.seeds.split(",")):
        det = create_detector(args.detector, config=cfg, seed=seed).fit(normals)
        maps = det.score(data.eval_slices).heatmaps
        cal = det.score(ref_slices).heatmaps
        lo, hi = float(np.median(cal)), float(np.percentile(cal, 99))
        scaled.append((maps - lo) / (hi - lo + 1e-9))
        m = evaluate(maps, data.eval_masks, data.eval_foreground, n_boot=0)
        aurocs.append(m["pixel_auroc"])
        dices.append(m["best_dice"])
        print(f"seed {seed}: pixel AUROC {m['pixel_auroc']:.3f}, best Dice {m['best_dice']:.3f}", flush=True)
    ens = evaluate(np.mean(scaled, 0), data.eval_masks, data.eval_foreground, n_boot=0)
    sd = float(np.std(aurocs, ddof=min(1, len(aurocs) - 1)))
    print(f"{args.detector} {json.dumps(cfg)}: pixel AUROC {np.mean(aurocs):.3f} ± {sd:.3f} "
          f"(sample sd over {len(aurocs)} seeds), best Dice {np.mean(dices):.3f}; seed-averaged map: "
          f"pixel AUROC {ens['pixel_auroc']:.3f}, best Dice {ens['best_dice']:.3f} ({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
