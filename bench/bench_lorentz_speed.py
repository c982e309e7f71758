"""Lorentz detector speed on this machine: scoring slices/s at 224² and training time on 200 normal slices.

Targets (issue): scoring ≥ 20 slices/s with Lite0 on the 2-core CPU; training on ~200 normal slices with the
default config ≤ 10 minutes. Both are printed as ratios to their targets, measured in one run; PatchCore's
scoring rate is printed beside them for scale.

    .venv/bin/python bench/bench_lorentz_speed.py [--n 200] [--threads 1]
"""

from __future__ import annotations

import argparse
import time

import torch

from anomalens.engine.detectors import create_detector
from anomalens.engine.evaluation import healthy_slices


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    normals = healthy_slices("sample:mni152", 224, max_slices=args.n, min_tissue=0.02)
    print(f"{len(normals)} normal MNI152 slices at 224²")
    rows = {}
    for name in ("lorentz", "patchcore"):
        det = create_detector(name, seed=0)
        t0 = time.perf_counter()
        det.fit(normals)
        fit_s = time.perf_counter() - t0
        batch = normals[:64]
        det.score(batch[:8])  # warm-up
        t0 = time.perf_counter()
        det.score(batch)
        rate = len(batch) / (time.perf_counter() - t0)
        rows[name] = (fit_s, rate)
        print(f"{name}: training {fit_s:.0f} s on {len(normals)} slices, scoring {rate:.1f} slices/s", flush=True)
    fit_s, rate = rows["lorentz"]
    print(f"lorentz scoring rate / 20 slices/s target: {rate / 20:.2f} (≥ 1 meets it)")
    print(f"lorentz training time / 600 s target: {fit_s / 600:.2f} (≤ 1 meets it)")
    print(f"lorentz / patchcore scoring rate: {rate / rows['patchcore'][1]:.2f}")


if __name__ == "__main__":
    main()
