"""SCR that keeps lesions (issue #20): SCR's point with and without the synthetic-lesion check, on sample:brain1.

On-site protocol (``engine.protocol``, ``engine.evaluation.onsite_data``): fitted on MNI152 plus every other
lesion-free slice of brain1 far from the lesion, calibrated on the other lesion-free ones (normals only,
never fitted on), evaluated on the lesion slices and their neighbours (never fitted or calibrated on). Per
detector and seed the model is fitted and scored once, then calibrated twice:

- ``area rule``: the false-positive rule with the ladder's area test against erasing (before #20);
- ``lesion check`` (default now): the same false-positive rule, and SCR must keep 90 % of the synthetic
  5–10 mm lesions (``engine.synthesis.lesion``) that plain thresholding finds in copies of the calibration
  normals (``engine.postprocess.survival``).

It prints, for each: SCR's unary rate and λ, the false-positive area SCR leaves on the calibration normals,
the synthetic-lesion survival, and the Dice of the plain and the SCR masks on the evaluated slices.

    .venv/bin/python bench/bench_scr_survival.py [--detectors patchcore,lorentz] [--seeds 0,1,2] [--threads 1]

Nothing here is tuned on the evaluated slices: both rules look only at the normals (and lesions put into them).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from anomalens.engine.detectors import create_detector
from anomalens.engine.evaluation import onsite_data
from anomalens.engine.metrics import dice
from anomalens.engine.preprocess.foreground import foreground_mask
from anomalens.engine.recalibration import calibrate_detector
from anomalens.engine.scoring import apply_calibration

TARGET_FPR = 0.01


def _fmt(v: float | None, spec: str = ".3f") -> str:
    return "–" if v is None else format(v, spec)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--detectors", default="patchcore,lorentz")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    data = onsite_data("brain1", healthy=["mni152"])
    fg_cal, fg_test, truth = foreground_mask(data.calibration), data.eval_foreground, data.eval_masks
    print(f"brain1 on-site: fitted on {len(data.normals)} slices, calibrated on {len(data.calibration)}, evaluated "
          f"on {len(data.eval_slices)}; working grid {data.grid.pixel_mm:.3f} mm pixels")
    print("| detector | seed | rule | unary FP rate | λ | SCR FP area on normals | lesion survival | Dice plain "
          "| Dice SCR | calibration s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in [d for d in args.detectors.split(",") if d]:
        for seed in [int(s) for s in args.seeds.split(",") if s]:
            t0 = time.perf_counter()
            det = create_detector(name, seed=seed).fit(data.normals)
            normal, test = det.score(data.calibration), det.score(data.eval_slices)
            fit_s = time.perf_counter() - t0
            for rule, check in (("area rule", False), ("lesion check", True)):
                t1 = time.perf_counter()
                cal = calibrate_detector(det, data.calibration, fg_cal, target_fpr=TARGET_FPR, result=normal,
                                         lesion_check=check, pixel_mm=data.grid.pixel_mm)
                cal_s = time.perf_counter() - t1
                ev = apply_calibration(cal, test, data.eval_slices, fg_test)
                les = cal.lesions
                surv = "–" if les is None or les.rate is None else f"{les.rate:.0%} ({les.kept}/{les.seen} of " \
                    f"{les.inserted})"
                print(f"| {name} | {seed} | {rule} | {cal.scr_threshold_fpr:.1%} | {_fmt(cal.scr.lam, '.3g')} "
                      f"| {_fmt(cal.fp_area_scr, '.3%')} | {surv} "
                      f"| {_fmt(dice(ev.mask, truth, foreground=fg_test))} "
                      f"| {_fmt(dice(ev.scr_mask, truth, foreground=fg_test))} | {cal_s:.0f} |", flush=True)
            print(f"<!-- {name} seed {seed}: fitted and scored in {fit_s:.0f} s -->", flush=True)


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
