"""sample:brain1 under the on-site protocol: Lorentz vs. its Euclidean ablation vs. the PatchCore reference.

Normals = healthy MR sources (MNI152) + brain1's lesion-free slices ≥ 2 slices from any lesion slice;
evaluation on the remaining slices only. Calibration uses normals only. Best Dice is threshold-tuned on
the evaluated slices (an upper bound, labelled as such); Dice at the calibrated operating point is not.

    .venv/bin/python bench/bench_brain1.py [--detectors lorentz,euclidean,patchcore] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from anomalens.engine.evaluation import onsite_data, run_onsite

VARIANTS = {
    "lorentz": ("lorentz", {"geometry": "lorentz"}),
    "euclidean": ("lorentz", {"geometry": "euclidean"}),
    "patchcore": ("patchcore", {}),
}
KEYS = ("pixel_auroc", "pixel_ap", "image_auroc", "best_dice", "dice", "dice_scr", "precision", "precision_scr",
        "fpr95", "seconds_per_slice", "fit_seconds")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--detectors", default="lorentz,euclidean,patchcore")
    ap.add_argument("--set", action="append", default=[], help="key=json applied to the lorentz variants")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--healthy", default="mni152")
    ap.add_argument("--max-healthy", type=int, default=40, help="at most this many slices per healthy source")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(2)
    extra = {k: json.loads(v) for k, v in (s.split("=", 1) for s in args.set)}
    t0 = time.perf_counter()
    data = onsite_data("brain1", healthy=[h for h in args.healthy.split(",") if h], size=args.size,
                       max_healthy=args.max_healthy)
    print(f"normals: {data.normal_sources} ({len(data.normals)} slices); evaluated slices "
          f"{data.split.spec_suffix('evaluate')} ({len(data.eval_slices)}), "
          f"lesion slices {data.split.lesion.tolist()}; "
          f"data {time.perf_counter() - t0:.1f}s")
    rows = {}
    for name in args.detectors.split(","):
        det, cfg = VARIANTS[name]
        cfg = dict(cfg, **(extra if det == "lorentz" else {}))
        m = run_onsite(det, data, config=cfg, seed=args.seed)
        rows[name] = {k: m.get(k) for k in KEYS}
        head = getattr(m["_detector"], "head", None)
        rows[name]["curvature"] = None if head is None else head.curvature
        print(name, json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in rows[name].items()}),
              flush=True)
    header = "| metric | " + " | ".join(rows) + " |"
    print("\n" + header + "\n|" + "---|" * (len(rows) + 1))
    for k in KEYS:
        vals = [rows[r][k] for r in rows]
        print(f"| {k} | " + " | ".join("–" if v is None else f"{v:.3f}" for v in vals) + " |")
    if "patchcore" in rows:
        ref = rows["patchcore"]["seconds_per_slice"]
        for r in rows:
            print(f"speed ratio {r}/patchcore: {rows[r]['seconds_per_slice'] / ref:.2f}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=2)


if __name__ == "__main__":
    main()
