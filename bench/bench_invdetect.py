"""InvDetect numbers: seconds per 128² slice, and pixel AUROC on sample:brain1 (on-site protocol).

    nice -n 5 .venv/bin/python bench/bench_invdetect.py latency [--threads 1,2] [--steps 10,20]
    nice -n 5 .venv/bin/python bench/bench_invdetect.py train --train-steps 1000 --out unet.safetensors
    nice -n 5 .venv/bin/python bench/bench_invdetect.py onsite --load-unet unet.safetensors --steps 10 \
        [--with lorentz] [--json row.json]
    nice -n 5 .venv/bin/python bench/bench_invdetect.py onsite [--train-steps 1000] [--steps 10,20,50] [--size 128]

latency: ``InvDetectDetector.score`` on one 128² slice (49 patches of 32², all inverted in one batch per
step, SVM, Gaussian aggregation, features), the median of repeated runs, at the default U-Net. Weights and
SVM are untrained stand-ins: the time does not depend on their values.

onsite: fit on MNI152 + brain1's lesion-free slices far from the lesion (``engine.evaluation``), calibrate
on the held-out lesion-free half, evaluate on the held-out slices. The U-Net is trained once (in the run,
or by ``train`` and loaded with ``--load-unet``); for each number of inversion steps the normal latents
are re-inverted and the SVM refitted, so the AUROC-vs-steps curve compares like with like. ``train`` uses
only ``onsite_data(...).normals`` (the fit set) and stores a fingerprint of them; ``--load-unet`` refuses a
U-Net trained on other slices, so no number is measured on a slice the U-Net or the SVM has seen.

``--with lorentz`` also runs ``engine.evaluation.run_onsite("lorentz", ...)`` at its default config on the
same ``onsite_data`` (same grid, same fit / calibration / evaluation slices) in the same process, so both
detectors' rows come from one run under the same load.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import time
from typing import Any

import numpy as np
import torch

from anomalens.plugins.invdetect import InvDetectDetector
from anomalens.plugins.invdetect.ocsvm import fit_ocsvm

ROW_KEYS = ("pixel_auroc", "pixel_auroc_ci", "pixel_ap", "best_dice", "dice", "dice_scr", "image_auroc", "fpr95")


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


def _fingerprint(normals: np.ndarray) -> str:
    """Identifies the fit slices a saved U-Net was trained on (shape and bytes)."""
    return hashlib.sha256(np.ascontiguousarray(normals, np.float32).tobytes()).hexdigest()[:16] + str(normals.shape)


def _data(args: argparse.Namespace) -> Any:
    from anomalens.engine.evaluation import onsite_data

    data = onsite_data("brain1", size=args.size)
    print(f"grid {args.size}², normals {len(data.normals)} {data.normal_sources}, calibration "
          f"{len(data.calibration)}, eval {len(data.eval_slices)} (slices {data.split.spec_suffix('evaluate')})",
          flush=True)
    return data


def _log(f: float, m: str) -> None:
    if "step" not in m and ("epoch" not in m or m.endswith("1/1")):
        print(f"  {f:.2f} {m}", flush=True)


def _training(args: argparse.Namespace) -> dict[str, Any]:
    """The detector options that set how long the U-Net trains."""
    return {"epochs": args.epochs, "train_steps": args.train_steps}


def train(args: argparse.Namespace) -> None:
    """Train the U-Net once on the fit set and save it, so each step count can run as its own process."""
    from anomalens.plugins.invdetect.patches import extract_patches

    torch.set_num_threads(args.threads)
    data = _data(args)
    det = InvDetectDetector(_training(args), seed=args.seed)
    patches, _ = extract_patches(det._grid(data.normals), det.cfg.patch_size, det.stride)
    t0 = time.perf_counter()
    last = [0.0]

    def log(f: float, m: str) -> None:
        if time.perf_counter() - last[0] > 30:
            last[0] = time.perf_counter()
            print(f"  {time.perf_counter() - t0:.0f} s {m}", flush=True)

    loss = det._train_unet(patches, log, None)
    sec = time.perf_counter() - t0
    meta = save_unet(det, args.out, data.normals, {"seed": str(args.seed), "size": str(args.size),
                                                   "final_loss": f"{loss:.5f}", "train_seconds": f"{sec:.0f}",
                                                   "threads": str(args.threads), "n_patches": str(len(patches))})
    print(json.dumps(meta), flush=True)


def save_unet(det: InvDetectDetector, path: str, normals: np.ndarray, meta: dict[str, str]) -> dict[str, str]:
    """The trained U-Net as safetensors, with the fingerprint of the slices it was trained on."""
    from safetensors.torch import save_file

    from anomalens.engine.fileio import atomic_path

    meta = {**meta, "epochs": str(det.cfg.epochs), "train_steps": str(det.cfg.train_steps),
            "normals": _fingerprint(normals),
            "channels": json.dumps(list(det.cfg.channels))}
    state = {k: v.detach().cpu().contiguous() for k, v in det.unet.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=meta)
    return meta


def load_unet(det: InvDetectDetector, path: str, normals: np.ndarray) -> dict[str, str]:
    """Load a U-Net saved by ``save_unet``; refuse one trained on other slices than ``normals``."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(path, "pt") as fh:
        meta = dict(fh.metadata() or {})
    if meta.get("normals") != _fingerprint(normals):
        raise SystemExit(f"{path} was trained on other slices than this run's fit set; retrain with 'train'")
    if json.loads(meta["channels"]) != list(det.cfg.channels):
        raise SystemExit(f"{path} has channels {meta['channels']}, the config {det.cfg.channels}")
    det.config.epochs = int(meta["epochs"])  # type: ignore[attr-defined]
    det.config.train_steps = int(meta.get("train_steps", det.cfg.train_steps))  # type: ignore[attr-defined]
    unet = det._new_unet()
    unet.load_state_dict(load_file(path))
    unet.eval().requires_grad_(False)
    det.unet = unet
    return meta


def _row(m: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {**extra, **{k: m.get(k) for k in ROW_KEYS}}


def _lorentz(data: Any) -> dict[str, Any]:
    from anomalens.engine.evaluation import run_onsite

    m = run_onsite("lorentz", data, config=None, progress=_log)
    det = m["_detector"]
    return _row(m, detector="lorentz", grid=int(data.info["size"]), input_size=det.config.input_size,
                seconds_per_slice=m["seconds_per_slice"], fit_seconds=m["fit_seconds"])


def onsite(args: argparse.Namespace) -> None:
    from anomalens.engine.metrics import evaluate
    from anomalens.engine.recalibration import calibrate_detector
    from anomalens.engine.scoring import apply_calibration

    torch.set_num_threads(args.threads)
    data = _data(args)
    steps = [int(s) for s in args.steps.split(",") if s]
    rows: list[dict[str, Any]] = []

    def save() -> None:
        if args.json:
            from anomalens.engine.fileio import atomic_write_text

            atomic_write_text(args.json, json.dumps(rows, indent=1))

    if "lorentz" in args.with_:
        t0 = time.perf_counter()
        rows.append(_lorentz(data))
        print(json.dumps(rows[-1]), f"({time.perf_counter() - t0:.0f} s)", flush=True)
        save()
    if not steps:
        return
    det = InvDetectDetector(_training(args) | {"inversion_steps": steps[0]}, seed=args.seed)
    if args.load_unet:
        meta = load_unet(det, args.load_unet, data.normals)
        print(f"U-Net from {args.load_unet}: {meta}", flush=True)
        fit_info = {"epochs": int(meta["epochs"]), "train_steps": int(meta.get("train_steps", 0)),
                    "train_seconds": float(meta["train_seconds"]),
                    "final_loss": float(meta["final_loss"])}
    else:
        t0 = time.perf_counter()
        det.fit(data.normals, progress=_log)
        fit_info = {**_training(args), "fit_seconds": time.perf_counter() - t0, **det.training_log}
        print(f"fit {fit_info}", flush=True)
    for k, s in enumerate(steps):
        det.config.inversion_steps = s  # type: ignore[attr-defined]
        t0 = time.perf_counter()
        if args.load_unet or k:  # normals re-inverted at this step count, SVM and PCA refitted on them only
            z, _, _ = det.latents(data.normals)
            det._fit_normality(z)
            det.fitted = True
        normals_s = time.perf_counter() - t0
        calibrate_detector(det, data.calibration)  # held-out lesion-free slices, never fitted on
        t0 = time.perf_counter()
        res = det.score(data.eval_slices)  # never fitted or calibrated on
        sec = (time.perf_counter() - t0) / len(data.eval_slices)
        cal = apply_calibration(det.calibration, res, data.eval_slices, data.eval_foreground)
        m = evaluate(cal.maps, data.eval_masks, data.eval_foreground, threshold=cal.threshold,
                     scr_masks=cal.scr_mask)
        rows.append(_row(m, detector="invdetect", grid=args.size, steps=s, seconds_per_slice=sec,
                         normals_invert_seconds=normals_s, threads=args.threads, **fit_info))
        print(json.dumps(rows[-1]), flush=True)
        save()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("latency")
    a.add_argument("--threads", default="1,2")
    a.add_argument("--steps", default="10,20")
    a.add_argument("--reps", type=int, default=3)
    for name in ("train", "onsite"):
        p = sub.add_parser(name)
        p.add_argument("--epochs", type=int, default=InvDetectDetector.config_class().epochs,
                       help="passes over the patches (version 1's count); 0: count --train-steps")
        p.add_argument("--train-steps", type=int, default=InvDetectDetector.config_class().train_steps,
                       help="the U-Net's Adam steps (default: the detector's, ~6,000 s on this 2-core CPU)")
        p.add_argument("--size", type=int, default=128)
        p.add_argument("--threads", type=int, default=1)
        p.add_argument("--seed", type=int, default=0)
        if name == "train":
            p.add_argument("--out", required=True, help="safetensors file for the trained U-Net")
        else:
            p.add_argument("--steps", default="10,20,50", help="comma-separated; empty: only --with detectors")
            p.add_argument("--load-unet", default=None, help="a U-Net saved by 'train' (same --size/--seed)")
            p.add_argument("--with", dest="with_", default="", help="also run these detectors (lorentz)")
            p.add_argument("--json", default=None, help="rows written after each point")
    args = ap.parse_args()
    {"latency": latency, "train": train, "onsite": onsite}[args.cmd](args)


if __name__ == "__main__":
    main()
