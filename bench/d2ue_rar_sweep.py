"""D2UE's Redundancy-Aware Repulsion swept over λ on sample:brain1 (on-site protocol), training in optimiser steps.

    .venv/bin/python bench/d2ue_rar_sweep.py --lams 0,0.1,1,10 --steps 3750 --cache DIR --json DIR/sweep.json

Data: ``onsite_data("brain1", size=256)`` as ``bench_d2ue.py ablation`` (fit on MNI152 + brain1's lesion-free
slices ≥ 2 slices from the lesion, every other one held out; evaluate on slices never fitted on). The default
configuration (AEU, 3 learners, 64², batch 64) with ``train_steps = --steps`` per learner.

Learner 1 has no repulsion and does not depend on λ (its weights and batch order are seeded by its index),
so it is trained once and shared by every λ; learners 2 and 3 are trained per λ (λ = 0 is the ensemble
without RAR). Every learner is cached in ``--cache`` under its λ, step count, seed and the fit slices'
fingerprint, so a stopped run resumes where it stopped. Per λ the row holds the pixel metrics of the three
maps (DSU "dual", output-space "Unc", reconstruction "Ens"), the image AUROC (mean of the map, the paper's
score) over the evaluated slices and with the held-out normals added, and the learners' latent CKA to
learner 1 on the fit slices and on the evaluated slices.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from anomalens.plugins.d2ue import D2UEDetector
from anomalens.plugins.d2ue.cka import linear_cka
from anomalens.plugins.d2ue.model import EnsembleAE, stack_members

KINDS = ("dual", "output", "reconstruction")


def _fingerprint(x: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(x, np.float32).tobytes()).hexdigest()[:16]


def _learner(det: D2UEDetector, k: int, x: torch.Tensor, seniors: list[EnsembleAE], path: Path,
             meta: dict[str, str]) -> tuple[EnsembleAE, dict[str, Any]]:
    """Learner k from the cache when it was trained on these slices with these settings, else trained now."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from anomalens.engine.fileio import atomic_path

    if path.exists():
        with safe_open(str(path), "pt") as fh:
            saved = dict(fh.metadata() or {})
        if {k2: saved.get(k2) for k2 in meta} == meta:
            learner = det._new_learner(k)
            learner.load_state_dict(load_file(str(path)))
            return learner, json.loads(saved["entry"])
    t0 = time.perf_counter()
    last = [0.0]

    def log(f: float, m: str) -> None:
        if time.perf_counter() - last[0] > 120:
            last[0] = time.perf_counter()
            print(f"  {time.perf_counter() - t0:.0f} s {m}", flush=True)

    learner, entry = det.train_learner(k, x, seniors, progress=log)
    entry["seconds"] = round(time.perf_counter() - t0, 1)
    with atomic_path(path) as tmp:
        save_file({n: v.detach().cpu().contiguous() for n, v in learner.state_dict().items()}, str(tmp),
                  metadata={**meta, "entry": json.dumps(entry)})
    print(f"  learner {k + 1}: {entry}", flush=True)
    return learner, entry


@torch.no_grad()
def _latent(learner: EnsembleAE, x: torch.Tensor) -> torch.Tensor:
    learner.eval()
    return learner(x, "latent")[2][:, 0]


def run(args: argparse.Namespace) -> None:
    from sklearn.metrics import roc_auc_score

    from anomalens.engine.evaluation import onsite_data
    from anomalens.engine.fileio import atomic_write_text
    from anomalens.engine.metrics import evaluate

    torch.set_num_threads(args.threads)
    data = onsite_data("brain1", healthy=["mni152"], size=args.size)
    labels = data.eval_masks.reshape(len(data.eval_masks), -1).any(1)
    ext = np.concatenate([labels, np.zeros(len(data.calibration), bool)])
    print(f"fit {data.normal_sources}; evaluated {data.split.spec_suffix('evaluate')} ({len(labels)} slices, "
          f"{int(labels.sum())} with lesion)", flush=True)
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    fp = _fingerprint(data.normals)
    rows: list[dict[str, Any]] = []
    first: tuple[EnsembleAE, dict[str, Any]] | None = None
    for lam in [float(v) for v in args.lams.split(",")]:
        det = D2UEDetector({"train_steps": args.steps, "lam": lam, "repulsion": lam > 0}, seed=args.seed)
        x = det.training_inputs(data.normals)
        base = {"steps": str(args.steps), "seed": str(args.seed), "normals": fp, "size": str(args.size)}
        if first is None:
            first = _learner(det, 0, x, [], cache / f"learner1_s{args.steps}_seed{args.seed}.safetensors",
                             {**base, "lam": "any"})
        learners, entries = [first[0]], [first[1]]
        for k in range(1, det.cfg.n_learners):
            name = f"learner{k + 1}_lam{lam:g}_s{args.steps}_seed{args.seed}.safetensors"
            learner, entry = _learner(det, k, x, learners, cache / name, {**base, "lam": f"{lam:g}"})
            learners.append(learner)
            entries.append(entry)
        with torch.inference_mode(False):
            det.model = det._freeze(stack_members(learners))
        det.fitted = True
        ev = det.raw_maps(data.eval_slices, KINDS)
        cal = det.raw_maps(data.calibration, KINDS)
        xe = det._inputs(data.eval_slices)
        z_fit = [_latent(lr, x) for lr in learners]
        z_ev = [_latent(lr, xe) for lr in learners]
        row: dict[str, Any] = {"lam": lam, "train_steps": args.steps, "seed": args.seed,
                               "learners": entries,
                               "cka_to_learner1_fit": [round(float(linear_cka(z_fit[0], z)), 4) for z in z_fit[1:]],
                               "cka_to_learner1_eval": [round(float(linear_cka(z_ev[0], z)), 4) for z in z_ev[1:]]}
        for kind in KINDS:
            r_ev = det.to_result(ev[kind], data.eval_slices.shape[1:], kind)
            r_cal = det.to_result(cal[kind], data.calibration.shape[1:], kind)
            m = evaluate(r_ev.heatmaps, data.eval_masks, data.eval_foreground, n_boot=args.bootstrap)
            row[kind] = {"pixel_auroc": m["pixel_auroc"], "pixel_auroc_ci": m.get("pixel_auroc_ci"),
                         "pixel_ap": m["pixel_ap"], "best_dice": m["best_dice"],
                         "image_auroc": float(roc_auc_score(labels, r_ev.scores)),
                         "image_auroc_ext": float(roc_auc_score(ext, np.concatenate([r_ev.scores, r_cal.scores])))}
        rows.append(row)
        print(json.dumps(row), flush=True)
        if args.json:
            atomic_write_text(args.json, json.dumps(rows, indent=1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lams", default="0,0.1,1,10", help="comma-separated λ; 0 is the ensemble without RAR")
    ap.add_argument("--steps", type=int, default=D2UEDetector.config_class().train_steps,
                    help="optimiser steps per learner (default: the paper-equivalent count)")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the pixel AUROC CI")
    ap.add_argument("--cache", required=True, help="folder for the trained learners (resumable)")
    ap.add_argument("--json", default=None, help="rows written after each λ")
    run(ap.parse_args())


if __name__ == "__main__":
    main()
