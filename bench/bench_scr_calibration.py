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

from anomalens.engine.detectors import create_detector
from anomalens.engine.evaluation import onsite_data
from anomalens.engine.metrics import dice, precision
from anomalens.engine.preprocess.foreground import foreground_mask
from anomalens.engine.recalibration import calibrate_detector
from anomalens.engine.scoring import apply_calibration

TARGET_FPR = 0.01
RULES = {"fixed 5x": 5 * TARGET_FPR, "ladder (default)": None}  # SCR's unary false-positive rate
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
    fg_cal, fg_test, truth = foreground_mask(data.calibration), data.eval_foreground, data.eval_masks
    for name in [d for d in args.detectors.split(",") if d]:
        t0 = time.perf_counter()
        det = create_detector(name, seed=args.seed).fit(data.normals)
        normal, test = det.score(data.calibration), det.score(data.eval_slices)
        print(f"\n{name} (seed {args.seed}, fitted and scored in {time.perf_counter() - t0:.0f} s)")
        rows = []
        for rule, rate in RULES.items():
            cal = calibrate_detector(det, data.calibration, fg_cal, target_fpr=TARGET_FPR, threshold_fpr=rate)
            if rule == "fixed 5x":
                areas = [np.count_nonzero(apply_calibration(cal, normal, data.calibration, fg_cal,
                                                            settings=cal.scr.replace(lam=lam)).scr_mask)
                         / np.count_nonzero(fg_cal) for lam in LAMBDAS]
                print("  FP area on the calibration normals at the 5x unary threshold: "
                      + ", ".join(f"λ={lam:g}: {a:.3%}" for lam, a in zip(LAMBDAS, areas, strict=True)))
            ev = apply_calibration(cal, test, data.eval_slices, fg_test)
            rows.append(f"  | {rule} | {cal.scr_threshold_fpr:.1%} | {cal.scr.lam:.3g} | {cal.fp_area_scr:.3%} "
                        f"| {_fmt(dice(ev.mask, truth, foreground=fg_test))} "
                        f"| {_fmt(dice(ev.scr_mask, truth, foreground=fg_test))} "
                        f"| {_fmt(precision(ev.scr_mask, truth, foreground=fg_test))} |")
        print("  | rule | unary FP rate | λ | FP area left on normals | Dice plain | Dice SCR | precision SCR |")
        print("  |---|---|---|---|---|---|---|")
        print("\n".join(rows), flush=True)


if __name__ == "__main__":
    main()
