"""SCR's calibrated operating point on sample:brain1: the fixed 5× unary threshold against the ladder.

``engine.postprocess.calibrate`` picks SCR's λ on normals only. With the unary threshold fixed at five times
the target false-positive rate (the rule before 2026-11-30), the smallest passing λ wiped whole regions on
smooth maps and the lesion with them. The default now tightens the threshold until λ trims instead. This
prints, per detector (on-site protocol, calibrated on the 8 held-out lesion-free slices, evaluated on
slices never fitted or calibrated on):

- the false-positive area on the calibration normals against λ, at the 5× unary threshold;
- both calibrations (rate, λ, area left on normals) and the Dice / precision of the plain and the SCR
  masks on the evaluated slices, at each calibration's own operating point.

    .venv/bin/python bench/bench_scr_calibration.py [--detectors patchcore,lorentz] [--seed 0] [--threads 1]

Nothing here is tuned on the evaluated slices: both rules look only at the normals.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from anomalens.engine.evaluation import onsite_data, run_onsite
from anomalens.engine.metrics import dice, precision
from anomalens.engine.postprocess.calibrate import calibrate
from anomalens.engine.postprocess.normalise import ScoreNormaliser
from anomalens.engine.postprocess.scr import scr_refine
from anomalens.engine.preprocess.foreground import foreground_mask

LAMBDAS = (0.0, 1.0, 3.0, 10.0, 20.0, 30.0, 100.0)


def _fmt(v: float | None) -> str:
    return "–" if v is None else f"{v:.3f}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--detectors", default="patchcore,lorentz")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    data = onsite_data("brain1", healthy=["mni152"])
    fg_cal = foreground_mask(data.calibration)
    for name in [d for d in args.detectors.split(",") if d]:
        t0 = time.perf_counter()
        det = run_onsite(name, data, seed=args.seed)["_detector"]
        normal = det.score(data.calibration)
        test = det.score(data.eval_slices)
        print(f"\n{name} (seed {args.seed}, fitted and scored in {time.perf_counter() - t0:.0f} s)")
        rules = {"fixed 5x": 5 * 0.01, "ladder (default)": None}
        cals = {rule: calibrate(normal.heatmaps, fg_cal, features=normal.features, intensities=data.calibration,
                                target_fpr=0.01, threshold_fpr=rate, seed=det.seed)
                for rule, rate in rules.items()}
        loose = cals["fixed 5x"]
        norm = ScoreNormaliser.from_dict(loose["normaliser"])
        nm_cal, nm_test = norm.transform(normal.heatmaps), norm.transform(test.heatmaps)
        curve = []
        for lam in LAMBDAS:
            m = scr_refine(nm_cal, loose["threshold"], lam, loose["tau"], features=normal.features,
                           intensities=None if normal.features is not None else data.calibration,
                           foreground=fg_cal)
            curve.append(f"λ={lam:g}: {np.count_nonzero(m) / np.count_nonzero(fg_cal):.3%}")
        print("  FP area on the calibration normals at the 5x unary threshold: " + ", ".join(curve))
        print("  | rule | unary FP rate | λ | FP area left on normals | Dice plain | Dice SCR | precision SCR |")
        print("  |---|---|---|---|---|---|---|")
        fg_test, truth = data.eval_foreground, data.eval_masks
        for rule, cal in cals.items():
            plain = (nm_test > cal["plain_threshold"]) & fg_test
            scr = scr_refine(nm_test, cal["threshold"], cal["lambda"], cal["tau"], features=test.features,
                             intensities=None if test.features is not None else data.eval_slices,
                             foreground=fg_test)
            print(f"  | {rule} | {cal['threshold_fpr']:.1%} | {cal['lambda']:.3g} | {cal['fp_area_scr']:.3%} "
                  f"| {_fmt(dice(plain, truth, foreground=fg_test))} | {_fmt(dice(scr, truth, foreground=fg_test))} "
                  f"| {_fmt(precision(scr, truth, foreground=fg_test))} |", flush=True)


if __name__ == "__main__":
    main()
