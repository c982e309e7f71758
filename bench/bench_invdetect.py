"""InvDetect numbers: seconds per 128² slice, and pixel AUROC on sample:brain1 (on-site protocol).

    nice -n 10 .venv/bin/python bench/bench_invdetect.py latency [--threads 1,2] [--steps 10,20]
    nice -n 10 .venv/bin/python bench/bench_invdetect.py onsite [--epochs 3] [--steps 10,20,50] [--size 128]

latency: ``InvDetectDetector.score`` on one 128² slice (49 patches of 32², all inverted in one batch per
step, SVM, Gaussian aggregation, features), the median of repeated runs, at the default U-Net. Weights and
SVM are untrained stand-ins: the time does not depend on their values.

onsite: fit on MNI152 + brain1's lesion-free slices far from the lesion (``engine.evaluation``), calibrate
on the held-out lesion-free half, evaluate on the held-out slices. The U-Net is trained once; for each
number of inversion steps the normal latents are re-inverted and the SVM refitted, so the AUROC-vs-steps
curve compares like with like.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch

from anomalens.plugins.invdetect import InvDetectDetector
from anomalens.plugins.invdetect.ocsvm import fit_ocsvm


def _stand_in(steps: int) -> InvDetectDetector:
    det = InvDetectDetector({"inversion_steps": steps})
    det.unet = det._new_unet().eval()
    dim = det.cfg.patch_size**2
    rng = np.random.default_rng(0)
    det.svm = fit_ocsvm(rng.standard_normal((500, dim)), nu=0.1)
    det.pca_mean = np.zeros(dim)
    det.pca_axes = np.linalg.qr(rng.standard_normal((dim, 8)))[0].T
    det.fitted = True
    return det


def latency(args: argparse.Namespace) -> None:
    x = np.random.default_rng(0).random((1, 128, 128), dtype=np.float32)
    for threads in [int(t) for t in args.threads.split(",")]:
        torch.set_num_threads(threads)
        for steps in [int(s) for s in args.steps.split(",")]:
            det = _stand_in(steps)
            det.score(x)  # warm-up: oneDNN builds its kernels for the batch shape on first use
            times = []
            for _ in range(args.reps):
                t0 = time.perf_counter()
                det.score(x)
                times.append(time.perf_counter() - t0)
            print(f"threads={threads} steps={steps}: {statistics.median(times):.2f} s per 128² slice "
                  f"(median of {args.reps})", flush=True)


def onsite(args: argparse.Namespace) -> None:
    from anomalens.engine.calibration import apply_calibration, calibrate_detector
    from anomalens.engine.evaluation import onsite_data
    from anomalens.engine.metrics import evaluate

    torch.set_num_threads(args.threads)
    data = onsite_data("brain1", size=args.size)
    steps = [int(s) for s in args.steps.split(",")]
    print(f"normals {len(data.normals)}, calibration {len(data.calibration)}, eval {len(data.eval_slices)}",
          flush=True)
    det = InvDetectDetector({"epochs": args.epochs, "inversion_steps": steps[0]}, seed=0)
    t0 = time.perf_counter()
    det.fit(data.normals, progress=lambda f, m: print(f"  {f:.2f} {m}", flush=True) if "step" not in m else None)
    print(f"fit {time.perf_counter() - t0:.0f} s, {det.training_log}", flush=True)
    rows = []
    for k, s in enumerate(steps):
        if k:
            det.config.inversion_steps = s  # type: ignore[attr-defined]
            z, _, _ = det.latents(data.normals)
            det._fit_normality(z)
        calibrate_detector(det, data.calibration)
        t0 = time.perf_counter()
        res = det.score(data.eval_slices)
        sec = (time.perf_counter() - t0) / len(data.eval_slices)
        cal = apply_calibration(det, res, data.eval_slices, data.eval_foreground)
        m = evaluate(cal.maps, data.eval_masks, data.eval_foreground, threshold=cal.threshold, scr_masks=cal.scr_mask)
        row = {"steps": s, "seconds_per_slice": sec,
               **{key: v for key, v in m.items() if isinstance(v, float | int) and not isinstance(v, bool)}}
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("latency")
    a.add_argument("--threads", default="1,2")
    a.add_argument("--steps", default="10,20")
    a.add_argument("--reps", type=int, default=3)
    b = sub.add_parser("onsite")
    b.add_argument("--epochs", type=int, default=3)
    b.add_argument("--steps", default="10,20,50")
    b.add_argument("--size", type=int, default=128)
    b.add_argument("--threads", type=int, default=1)
    b.add_argument("--json", default=None)
    args = ap.parse_args()
    {"latency": latency, "onsite": onsite}[args.cmd](args)


if __name__ == "__main__":
    main()
