"""sample:brain1 under the on-site protocol: Lorentz vs. its Euclidean ablation vs. the PatchCore reference.

Normals = healthy MR sources (MNI152) + brain1's lesion-free slices ≥ 2 slices from any lesion slice;
evaluation on the remaining slices only. ``--protocol issue`` (default) fits on every such case slice, as
the issue words it, and has no operating point; ``--protocol calibrated`` holds every other one out of
fitting and calibrates on those (normals only), which gives Dice at the calibrated operating point at the
cost of half the case's normals. Best Dice is threshold-tuned on the evaluated slices (an upper bound,
labelled as such); Dice at the calibrated operating point is not.

``lorentz`` and ``euclidean`` are the detector with its default memory-bank fusion; ``lorentz-head`` and
``euclidean-head`` are the same fitted models scored by their classifier heads alone (``fuse_memory`` off:
the paper's method, and its Euclidean ablation), so the fusion's share is measured on identical heads.
Each detector is fitted once per seed (the seed draws the synthetic anomalies, the head's initial
weights and the coreset); the table gives mean ± standard deviation over seeds, because the Lorentz
classifier's pixel AUROC on this case moves by a few hundredths from seed to seed. All slices are on one
working grid (``engine.preprocess.fov``), so brain1 and MNI152 show anatomy at one physical scale.

    .venv/bin/python bench/bench_brain1.py [--detectors lorentz,euclidean,patchcore] [--seeds 0,1,2]
        [--protocol issue|calibrated] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from anomalens.engine.evaluation import assess_onsite, onsite_data, run_onsite

VARIANTS = {
    "lorentz": ("lorentz", {"geometry": "lorentz"}),
    "euclidean": ("lorentz", {"geometry": "euclidean"}),
    "patchcore": ("patchcore", {}),
    # The reference at the Lorentz detector's input size, so a resolution gain is not credited to the head.
    "patchcore320": ("patchcore", {"input_size": 320}),
}
KEYS = ("pixel_auroc", "pixel_ap", "image_auroc", "best_dice", "dice", "dice_scr", "precision", "precision_scr",
        "fpr95", "seconds_per_slice", "fit_seconds")


def _mean_sd(values: list) -> str:
    vals = [v for v in values if v is not None]
    if not vals:
        return "–"
    if len(vals) == 1:
        return f"{vals[0]:.3f}"
    return f"{statistics.mean(vals):.3f} ± {statistics.stdev(vals):.3f}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--detectors", default="lorentz,euclidean,patchcore,patchcore320")
    ap.add_argument("--set", action="append", default=[], help="key=json applied to the lorentz variants")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--seeds", default="0,1,2", help="comma-separated seeds; the table is mean ± sd over them")
    ap.add_argument("--healthy", default="mni152")
    ap.add_argument("--max-healthy", type=int, default=40, help="at most this many slices per healthy source")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads; on a shared 2-core machine 2 threads spin against other jobs")
    ap.add_argument("--protocol", choices=("issue", "calibrated"), default="issue",
                    help="issue: fit on every far lesion-free slice; calibrated: hold half out to calibrate on")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    extra = {k: json.loads(v) for k, v in (s.split("=", 1) for s in args.set)}
    t0 = time.perf_counter()
    data = onsite_data("brain1", healthy=[h for h in args.healthy.split(",") if h], size=args.size,
                       max_healthy=args.max_healthy, hold_out=args.protocol == "calibrated")
    print(f"normals: {data.normal_sources} ({len(data.normals)} slices); evaluated slices "
          f"{data.split.spec_suffix('evaluate')} ({len(data.eval_slices)}), "
          f"lesion slices {data.split.lesion.tolist()}; working grid {data.grid.fov_mm:g} mm on "
          f"{data.grid.size}² px; data {time.perf_counter() - t0:.1f}s")
    seeds = [int(s) for s in args.seeds.split(",")]
    runs: dict[str, list[dict]] = {}
    for name in args.detectors.split(","):
        det, cfg = VARIANTS[name]
        cfg = dict(cfg, **(extra if det == "lorentz" else {}))
        for seed in seeds:
            m = run_onsite(det, data, config=cfg, seed=seed)
            measured = [(name, m)]
            if det == "lorentz" and m["_detector"].config.fuse_memory:
                # The same heads without the memory bank: the paper's classifier alone.
                m["_detector"].config.fuse_memory = False
                alone = assess_onsite(m["_detector"], data)
                alone["fit_seconds"] = None
                measured.append((f"{name}-head", alone))
            for label, mm in measured:
                row = {k: mm.get(k) for k in KEYS}
                head = getattr(mm["_detector"], "head", None)
                row["curvature"] = None if head is None else head.curvature
                runs.setdefault(label, []).append(row)
                print(label, f"seed={seed}", json.dumps({k: (round(v, 4) if isinstance(v, float) else v)
                                                         for k, v in row.items()}), flush=True)
    print(f"\nprotocol {args.protocol}; mean ± sd over seeds {seeds}")
    print("| metric | " + " | ".join(runs) + " |\n|" + "---|" * (len(runs) + 1))
    for k in KEYS:
        print(f"| {k} | " + " | ".join(_mean_sd([r[k] for r in runs[name]]) for name in runs) + " |")
    if "patchcore" in runs:
        ref = statistics.mean(r["seconds_per_slice"] for r in runs["patchcore"])
        for name in runs:
            ratio = statistics.mean(r["seconds_per_slice"] for r in runs[name]) / ref
            print(f"speed ratio {name}/patchcore: {ratio:.2f}")
    rows = {name: {"seeds": seeds, "protocol": args.protocol, "runs": rs} for name, rs in runs.items()}
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=2)


if __name__ == "__main__":
    main()
