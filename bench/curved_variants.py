"""The curved heads' variants on each base, under the on-site protocol of a sample case (issue #20).

For every (base, compare, variant) asked for: fit on the case's lesion-free slices far from the lesion plus
the healthy sample, calibrate on the other lesion-free slices, evaluate on the held-out slices
(``anomalens.engine.evaluation.run_onsite``), and print one table row. This is how the defaults in
``plugins/curved_heads/README.md`` were chosen.

    .venv/bin/python bench/curved_variants.py [--sample brain1] [--bases rotation,patchsvdd,patchsvdd+compare]
        [--variants euclidean,SiO,...] [--seeds 0,1] [--set key=json] [--json out.json] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import torch

from anomalens.engine.evaluation import onsite_data, run_onsite
from anomalens.plugins.curved_heads.heads import VARIANTS

KEYS = ("pixel_auroc", "image_auroc", "pixel_ap", "best_dice", "fpr95", "fit_seconds", "seconds_per_slice")
#: The healthy source whose anatomy matches each sample case (none for the breast crop).
HEALTHY = {"brain1": "mni152", "lung1": "", "breast1": ""}


def _base_config(spec: str) -> dict[str, Any]:
    """``rotation``, ``patchsvdd`` or ``patchsvdd+compare`` → the detector options it stands for."""
    base, _, extra = spec.partition("+")
    if extra not in ("", "compare"):
        raise SystemExit(f"unknown base suffix {extra!r} (only +compare)")
    cfg: dict[str, Any] = {"base": base}
    if base == "patchsvdd":
        cfg["compare"] = extra == "compare"  # explicit both ways: the detector's default is on
    return cfg


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sample", default="brain1")
    ap.add_argument("--healthy", default=None, help="comma-separated healthy sources (default: per sample)")
    ap.add_argument("--bases", default="rotation,patchsvdd,patchsvdd+compare")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--set", action="append", default=[], help="key=json applied to every run")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--json", default=None)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 when another job shares the CPU)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    extra = {k: json.loads(v) for k, v in (s.split("=", 1) for s in args.set)}
    healthy = HEALTHY.get(args.sample, "") if args.healthy is None else args.healthy
    t_all = time.perf_counter()
    data = onsite_data(args.sample, healthy=[h for h in healthy.split(",") if h], size=args.size)
    print(f"{args.sample}: normals {data.normal_sources} ({len(data.normals)} slices); evaluated slices "
          f"{data.split.spec_suffix('evaluate')} ({len(data.eval_slices)}); calibration {len(data.calibration)}",
          flush=True)
    rows: list[dict[str, Any]] = []
    for base in [b for b in args.bases.split(",") if b]:
        for variant in [v for v in args.variants.split(",") if v]:
            for seed in [int(s) for s in args.seeds.split(",") if s]:
                cfg = {**_base_config(base), "variant": variant, **extra}
                m = run_onsite("curved", data, config=cfg, seed=seed)
                row = {"base": base, "variant": variant, "seed": seed, **{k: m.get(k) for k in KEYS}}
                log = m["_detector"].training_log
                row["pretext_accuracy"] = log.get("position_accuracy") or log.get("rotation_accuracy")
                rows.append(row)
                print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
    cols = ["pixel_auroc", "image_auroc", "pixel_ap", "best_dice", "fpr95", "fit_seconds"]
    print("\n| base | variant | seed | " + " | ".join(cols) + " |\n|" + "---|" * (len(cols) + 3))
    for r in rows:
        print(f"| {r['base']} | {r['variant']} | {r['seed']} | "
              + " | ".join("–" if r[c] is None else f"{r[c]:.3f}" for c in cols) + " |")
    print(f"\ntotal {time.perf_counter() - t_all:.0f}s")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=2)


if __name__ == "__main__":
    main()
