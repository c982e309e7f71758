"""Lorentz vs. its Euclidean ablation when few normal slices are at hand, on sample:brain1.

The paper reports its clearest gain over Euclidean in the few-shot regime (1–25 normal images), which is
also the calibration panel's: a site marks a handful of normals. Each seed draws K of the issue
protocol's 56 normal slices (MNI152 + brain1's far lesion-free slices; the draw is the same for both
geometries), fits both, and scores the slices the issue evaluates on (never among the normals). It prints
pixel AUROC and best Dice (threshold tuned on the evaluated slices: an upper bound) of the fused map and of
the heads alone, per K the means over seeds and on how many seeds Lorentz is ahead.

    .venv/bin/python bench/bench_lorentz_fewshot.py [--k 1,3,5,10,25] [--seeds 0,1,2,3,4,5] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from anomalens.engine.detectors import create_detector
from anomalens.engine.evaluation import onsite_data
from anomalens.engine.metrics import evaluate

GEOMETRIES = ("lorentz", "euclidean")


def measure(k: int, seed: int, data) -> dict:
    """Both geometries fitted on the same K normals; fused and heads-alone metrics of each."""
    pick = np.sort(np.random.default_rng(1000 + seed).choice(len(data.normals), k, replace=False))
    normals = np.ascontiguousarray(data.normals[pick])
    n_case = next(iter(data.normal_sources.values()))  # the case's own slices come first
    row: dict = {"k": k, "seed": seed, "normals": pick.tolist(), "case_slices": int((pick < n_case).sum())}
    for geometry in GEOMETRIES:
        t0 = time.perf_counter()
        det = create_detector("lorentz", config={"geometry": geometry}, seed=seed).fit(normals)
        fit_s = time.perf_counter() - t0
        for part, fuse in (("fused", True), ("heads", False)):
            det.config.fuse_memory = fuse
            m = evaluate(det.score(data.eval_slices).heatmaps, data.eval_masks, data.eval_foreground, n_boot=0)
            row[f"{geometry}.{part}"] = {"pixel_auroc": float(m["pixel_auroc"]), "best_dice": float(m["best_dice"])}
        row[f"{geometry}.fit_s"] = round(fit_s, 1)
    return row


def summary(rows: list[dict], k: int) -> str:
    sel = [r for r in rows if r["k"] == k]
    parts = []
    for part in ("fused", "heads"):
        cells = []
        for geometry in GEOMETRIES:
            au = [r[f"{geometry}.{part}"]["pixel_auroc"] for r in sel]
            dc = [r[f"{geometry}.{part}"]["best_dice"] for r in sel]
            sd = f" ± {statistics.stdev(au):.3f}" if len(au) > 1 else ""
            cells.append(f"{geometry} {statistics.mean(au):.3f}{sd} (Dice {statistics.mean(dc):.3f})")
        ahead = sum(r[f"lorentz.{part}"]["pixel_auroc"] > r[f"euclidean.{part}"]["pixel_auroc"] for r in sel)
        parts.append(f"{part}: {', '.join(cells)}; Lorentz ahead on {ahead} of {len(sel)}")
    return f"K = {k}: " + " | ".join(parts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--k", default="1,3,5,10,25", help="numbers of normal slices")
    ap.add_argument("--seeds", default="0,1,2,3,4,5")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    data = onsite_data("brain1", max_healthy=40, hold_out=False)
    ks = [int(k) for k in args.k.split(",")]
    if not all(1 <= k <= len(data.normals) for k in ks):
        raise SystemExit(f"K must be between 1 and {len(data.normals)}")
    rows = []
    for k in ks:
        for seed in (int(s) for s in args.seeds.split(",")):
            rows.append(measure(k, seed, data))
            r = rows[-1]
            print(f"K {k} seed {seed} ({r['case_slices']} of them brain1's): " + ", ".join(
                f"{g}.{p} {r[f'{g}.{p}']['pixel_auroc']:.4f}/{r[f'{g}.{p}']['best_dice']:.3f}"
                for g in GEOMETRIES for p in ("fused", "heads")), flush=True)
            if args.json:
                args.json.write_text(json.dumps(rows, indent=1))
        print(summary(rows, k), flush=True)


if __name__ == "__main__":
    main()
