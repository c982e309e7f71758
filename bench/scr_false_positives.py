"""Where SCR's mask loses Dice to the plain one (issue #20's "SCR Dice ≥ plain Dice"): lesion or false positives?

On breast1 SCR's calibrated mask scores a lower Dice than plain thresholding (docs/results.md). Dice mixes
two failures: SCR cutting the lesion away (what the synthetic-lesion survival check guards against) and
SCR flagging more non-lesion tissue than the plain mask. This splits them, per case, detector and seed,
under the development table's protocol (``bench/dev_table.py``: fit, calibrate with the lesion check on
normals only, evaluate on slices never fitted or calibrated on):

* lesion pixels found (TP), missed (FN) and non-lesion pixels flagged (FP), plain and SCR;
* the share of the evaluated slices' non-lesion tissue each mask flags, against the 1 % both were
  calibrated to on the calibration normals (a share far above 1 % means the evaluated slices score
  higher than the calibration normals: a shift the calibration could not see);
* SCR's mask at ½, 1 and 2 × the calibrated λ (same unary threshold), and plain thresholding at SCR's
  looser unary threshold (λ 0), to show what the cut does to that shift;
* with ``--shift``, a check that was considered and not built: on the calibration normals, both thresholds
  lowered by the same amount (plain's to k × the 1 % target) as a uniform shift would, and the share each
  mask then flags: does a shift check on normals predict the evaluated slices' outcome?

Reading only: nothing here chooses a setting; the evaluated slices' labels are used to count, never to tune.

    OMP_NUM_THREADS=1 .venv/bin/python bench/scr_false_positives.py [--cases breast1] \
        [--detectors patchcore,lorentz] [--seeds 0,1,2] [--shift 3,5,10]
"""

from __future__ import annotations

import argparse
import dataclasses

import numpy as np
import torch

TARGET_FPR = 0.01


def _counts(mask: np.ndarray, truth: np.ndarray, tissue: np.ndarray) -> str:
    m = np.asarray(mask, bool) & tissue
    tp, fp, fn = int((m & truth).sum()), int((m & ~truth).sum()), int((~m & truth).sum())
    share = fp / max(1, int((tissue & ~truth).sum()))
    dice = 2 * tp / max(1, 2 * tp + fp + fn)
    return f"TP {tp:6d}  FN {fn:5d}  FP {fp:6d} ({100 * share:5.2f} % of non-lesion tissue)  Dice {dice:.3f}"


def run(case: str, detector: str, seed: int, shifts: tuple[float, ...] = ()) -> None:
    from anomalens.engine.detectors import create_detector
    from anomalens.engine.evaluation import onsite_data
    from anomalens.engine.preprocess.foreground import foreground_mask
    from anomalens.engine.recalibration import calibrate_detector
    from anomalens.engine.scoring import apply_calibration, cut_scr

    data = onsite_data(case, healthy=["mni152"] if case == "brain1" else [])
    det = create_detector(detector, seed=seed)
    det.fit(data.normals)
    normal = det.score(data.calibration)
    cal = calibrate_detector(det, data.calibration, foreground_mask(data.calibration), target_fpr=TARGET_FPR,
                             result=normal, lesion_check=True, pixel_mm=data.grid.pixel_mm)
    test = det.score(data.eval_slices)
    tissue = np.asarray(data.eval_foreground, bool)
    ev = apply_calibration(cal, test, data.eval_slices, tissue)
    truth = np.asarray(data.eval_masks, bool)
    point = cal.scr
    lam = float(point.lam or 0.0)
    print(f"\n{case} · {detector} · seed {seed}: {int(truth.sum())} lesion pixels on {len(truth)} evaluated slices; "
          f"plain threshold {cal.threshold:.3f}, SCR unary {point.threshold:.3f} "
          f"(at {100 * (cal.scr_threshold_fpr or TARGET_FPR):.1f} % of normals), λ {lam:.3g}")
    print(f"  plain (calibrated)          {_counts(ev.mask, truth, tissue)}")
    if ev.scr_mask is not None:
        print(f"  SCR (calibrated)            {_counts(ev.scr_mask, truth, tissue)}")
    if lam > 0:
        for factor in (0.5, 2.0):
            mask = cut_scr(ev.maps, tissue, dataclasses.replace(point, lam=factor * lam), features=test.features,
                           intensities=None if test.features is not None else data.eval_slices)
            print(f"  SCR at {factor:g} × λ ({factor * lam:7.3g}) {_counts(mask, truth, tissue)}")
        print(f"  plain at SCR's unary t      {_counts(ev.maps > point.threshold, truth, tissue)}")
    if shifts and lam > 0:
        maps = cal.normalise(normal.heatmaps)
        fg = foreground_mask(data.calibration)
        for k in shifts:
            t_k = float(np.quantile(maps[fg], 1 - k * TARGET_FPR))
            shifted = dataclasses.replace(point, threshold=point.threshold - (cal.threshold - t_k))
            scr = cut_scr(maps, fg, shifted, features=normal.features,
                          intensities=None if normal.features is not None else data.calibration)
            print(f"  calibration normals, both thresholds lowered (plain to {k:g} × target): plain "
                  f"{100 * np.mean(maps[fg] > t_k):.2f} %, SCR {100 * np.count_nonzero(scr & fg) / fg.sum():.2f} %")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", default="breast1")
    ap.add_argument("--detectors", default="patchcore,lorentz")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--shift", default="", help="comma-separated k: the uniform-shift check on the normals")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    for seed in (int(s) for s in args.seeds.split(",")):
        for detector in args.detectors.split(","):
            for case in args.cases.split(","):
                run(case, detector, seed, tuple(float(k) for k in args.shift.split(",") if k))


if __name__ == "__main__":
    main()
