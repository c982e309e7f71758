"""InvDetect as in the paper on sample:brain1 (on-site protocol): U-Net trained in optimiser steps, then a sweep.

    .venv/bin/python bench/invdetect_paper.py train --train-steps 10000 --snapshots 2500,5000 --out DIR
    .venv/bin/python bench/invdetect_paper.py sweep --unet DIR/unet_10000.safetensors --steps 5,10,20,50 \
        --json DIR/sweep.json
    .venv/bin/python bench/invdetect_paper.py phantom --train-steps 1000,3000 --steps 10

train: ``onsite_data("brain1", size=128)`` (fit on MNI152 + brain1's lesion-free slices ≥ 2 slices from the
lesion, every other one held out for calibration), ``InvDetectDetector._train_unet`` for ``--train-steps``
Adam steps on the fit slices' 32² patches; the U-Net is saved after the last step and at every
``--snapshots`` step count (the same run, not a restart), each with a fingerprint of the fit slices.

sweep: for every saved U-Net given and every DDIM inversion step count S: the fit slices' patches are
inverted at S steps and the one-class SVM, PCA and paper-SCR calibration (τ, λ) refitted on them only
(``fit_latent_model``), the product calibration is made on the held-out lesion-free slices, and the
evaluated slices (never fitted or calibrated on) are scored once; from that one scoring come the pixel
metrics, the product's calibrated masks (threshold and engine SCR), the paper's SCR (raw −f(z), t = 0, T = 1,
full latents) and its "w/o SCR" (A > 0). A row is written after each point (a crash loses one point only).

phantom: a sanity check of the implementation where the paper's premise holds by construction: the fit set
and the evaluated slices come from one distribution (``tests.phantoms``: textured ellipses, 128²; the
evaluated ones carry a bright disk). The default detector is fitted once per ``--train-steps`` value, and
the pixel AUROC inside the ellipse is reported per inversion step count.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from anomalens.plugins.invdetect import InvDetectDetector

KEYS = ("pixel_auroc", "pixel_auroc_ci", "pixel_ap", "best_dice", "fpr95", "dice", "dice_scr", "image_auroc")


def _fingerprint(normals: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(normals, np.float32).tobytes()).hexdigest()[:16] + str(normals.shape)


def _data(size: int) -> Any:
    from anomalens.engine.evaluation import onsite_data

    data = onsite_data("brain1", size=size)
    print(f"grid {size}², fit {len(data.normals)} {data.normal_sources}, calibration {len(data.calibration)}, "
          f"eval {len(data.eval_slices)} (slices {data.split.spec_suffix('evaluate')})", flush=True)
    return data


def _save(det: InvDetectDetector, state: dict[str, torch.Tensor], path: Path, meta: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    from anomalens.engine.fileio import atomic_path

    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={k: json.dumps(v) for k, v in meta.items()})
    print(f"saved {path}", flush=True)


def train(args: argparse.Namespace) -> None:
    from anomalens.plugins.invdetect.patches import extract_patches

    torch.set_num_threads(args.threads)
    data = _data(args.size)
    det = InvDetectDetector({"train_steps": args.train_steps, "batch_size": args.batch_size}, seed=args.seed)
    patches, _ = extract_patches(det._grid(data.normals), det.cfg.patch_size, det.stride)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    snaps = sorted({int(s) for s in args.snapshots.split(",") if s} - {args.train_steps})
    base = {"normals": _fingerprint(data.normals), "size": args.size, "seed": args.seed,
            "batch_size": args.batch_size, "channels": list(det.cfg.channels), "n_patches": len(patches),
            "threads": args.threads}
    t0 = time.perf_counter()
    last = [0.0]

    def log(f: float, m: str) -> None:
        hit = re.match(r"U-Net step (\d+)/", m)
        step = int(hit.group(1)) if hit else -1
        if step in snaps:  # reported after that optimiser step: the weights are those of `step` steps
            snaps.remove(step)
            state = {k: v.detach().cpu().clone() for k, v in det.unet.state_dict().items()}
            _save(det, state, out / f"unet_{step}.safetensors",
                  {**base, "train_steps": step, "train_seconds": round(time.perf_counter() - t0, 1),
                   "recent_loss": m.split("loss ")[-1]})
        if time.perf_counter() - last[0] > 60:
            last[0] = time.perf_counter()
            print(f"  {time.perf_counter() - t0:.0f} s {m}", flush=True)

    loss = det._train_unet(patches, log, None)
    sec = time.perf_counter() - t0
    state = {k: v.detach().cpu().contiguous() for k, v in det.unet.state_dict().items()}
    meta = {**base, "train_steps": det.training_log["optimiser_steps"], "train_seconds": round(sec, 1),
            "final_loss": round(loss, 5), "loss_log": det.training_log["loss_log"]}
    _save(det, state, out / f"unet_{args.train_steps}.safetensors", meta)
    print(json.dumps({k: v for k, v in meta.items() if k != "loss_log"}), flush=True)


def _load(det: InvDetectDetector, path: str, normals: np.ndarray) -> dict[str, Any]:
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(path, "pt") as fh:
        meta = {k: json.loads(v) for k, v in (fh.metadata() or {}).items()}
    if meta.get("normals") != _fingerprint(normals):
        raise SystemExit(f"{path} was trained on other slices than this run's fit set; train again")
    if meta["channels"] != list(det.cfg.channels):
        raise SystemExit(f"{path} has channels {meta['channels']}, the config {det.cfg.channels}")
    unet = det._new_unet()
    unet.load_state_dict(load_file(path))
    unet.eval().requires_grad_(False)
    det.unet = unet
    return meta


def _segment_metrics(masks: np.ndarray, data: Any) -> dict[str, Any]:
    from anomalens.engine.metrics.core import dice, precision

    fg = data.eval_foreground
    return {"dice": dice(masks, data.eval_masks, None, fg), "precision": precision(masks, data.eval_masks, None, fg),
            "flagged": float(masks[fg].mean())}


def sweep(args: argparse.Namespace) -> None:
    from anomalens.engine.metrics import evaluate
    from anomalens.engine.recalibration import calibrate_detector
    from anomalens.engine.scoring import apply_calibration
    from anomalens.plugins.invdetect.scr_paper import neighbour_sq_distances, paper_scr, paper_weights

    torch.set_num_threads(args.threads)
    data = _data(args.size)
    rows: list[dict[str, Any]] = []
    for unet_path in args.unet.split(","):
        for s in [int(v) for v in args.steps.split(",") if v]:
            det = InvDetectDetector({"inversion_steps": s}, seed=args.seed)
            meta = _load(det, unet_path, data.normals)
            t0 = time.perf_counter()
            det.fit_latent_model(data.normals)
            det.fitted = True
            fit_s = time.perf_counter() - t0
            calibrate_detector(det, data.calibration)  # held-out lesion-free slices, never fitted on
            t0 = time.perf_counter()
            with torch.inference_mode():
                res, z, grid, padded = det._score_latents(data.eval_slices, None, None)
            sec = (time.perf_counter() - t0) / len(data.eval_slices)
            cal = apply_calibration(det.calibration, res, data.eval_slices, data.eval_foreground)
            m = evaluate(cal.maps, data.eval_masks, data.eval_foreground, threshold=cal.threshold,
                         scr_masks=cal.scr_mask)
            n = len(data.eval_slices)
            raw = det._raw_map(z, n, grid, padded)
            scr = det.training_log["paper_scr"]
            down, right = neighbour_sq_distances(z, n, grid, padded, det.cfg.patch_size, det.stride, det.omega)
            paper = paper_scr(raw, paper_weights(down, right, scr["tau"]), scr["lam"])
            row = {"unet": Path(unet_path).name, "train_steps": meta["train_steps"],
                   "train_seconds": meta["train_seconds"], "inversion_steps": s,
                   **{k: m.get(k) for k in KEYS}, "seconds_per_slice": round(sec, 3),
                   "normals_invert_svm_scr_seconds": round(fit_s, 1),
                   "paper_scr": {"tau": scr["tau"], "lam": scr["lam"], "train_flagged": scr["flagged"],
                                 "train_flagged_without": scr["flagged_without"], **_segment_metrics(paper, data)},
                   "paper_threshold": _segment_metrics(raw > 0, data), "threads": args.threads}
            rows.append(row)
            print(json.dumps(row), flush=True)
            if args.json:
                from anomalens.engine.fileio import atomic_write_text

                atomic_write_text(args.json, json.dumps(rows, indent=1))


def phantom(args: argparse.Namespace) -> None:
    import sys

    from anomalens.engine.metrics.core import pixel_auroc
    from anomalens.engine.preprocess import foreground_mask

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.phantoms when run as a script
    from tests.phantoms import phantom_slices

    torch.set_num_threads(args.threads)
    normals, _ = phantom_slices(args.normals, 128, seed=1)
    tests, masks = phantom_slices(args.tests, 128, seed=2, lesion=True)
    fg = foreground_mask(tests)
    for total in [int(v) for v in args.train_steps.split(",")]:
        det = InvDetectDetector({"train_steps": total}, seed=args.seed)
        t0 = time.perf_counter()
        det.fit(normals)
        fit_s = time.perf_counter() - t0
        for s in [int(v) for v in args.steps.split(",")]:
            det.config.inversion_steps = s  # type: ignore[attr-defined]
            det.fit_latent_model(normals)
            res = det.score(tests)
            print(json.dumps({"train_steps": total, "inversion_steps": s, "fit_seconds": round(fit_s, 1),
                              "final_loss": det.training_log["final_loss"],
                              "pixel_auroc": pixel_auroc(res.heatmaps, masks, fg)}), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("train", "sweep", "phantom"):
        p = sub.add_parser(name)
        p.add_argument("--size", type=int, default=128)
        p.add_argument("--threads", type=int, default=1)
        p.add_argument("--seed", type=int, default=0)
        if name == "train":
            p.add_argument("--train-steps", type=int, default=InvDetectDetector.config_class().train_steps)
            p.add_argument("--batch-size", type=int, default=InvDetectDetector.config_class().batch_size)
            p.add_argument("--snapshots", default="", help="also save the U-Net after these step counts")
            p.add_argument("--out", required=True, help="folder for unet_<steps>.safetensors")
        elif name == "phantom":
            p.add_argument("--train-steps", default="1000,3000", help="comma-separated; one fit each")
            p.add_argument("--steps", default="10", help="DDIM inversion step counts")
            p.add_argument("--normals", type=int, default=40)
            p.add_argument("--tests", type=int, default=10)
        else:
            p.add_argument("--unet", required=True, help="comma-separated U-Nets saved by 'train'")
            p.add_argument("--steps", default="5,10,20,50", help="DDIM inversion step counts")
            p.add_argument("--json", default=None, help="rows written after each point")
    args = ap.parse_args()
    {"train": train, "sweep": sweep, "phantom": phantom}[args.cmd](args)


if __name__ == "__main__":
    main()
