"""Fast sweeps of the Lorentz detector's head options on sample:brain1 (issue protocol), from cached features.

A full fit spends about half its time in the frozen backbone: the normals' features and three synthetic
draws of patch features. None of that depends on the head's options (geometry, dim, curvature, epochs,
lr, …), so the first run of a seed caches it (``--cache``) and every later run calls the detector's own
``fit`` and ``score`` with those backbone passes served from the cache: about 3 minutes per seed on one
thread instead of about 6. The numbers are the detector's own (default options reproduce
``bench_brain1.py --protocol issue`` seed for seed); per seed it prints the fused map, the heads alone
and each head alone, so a variant's effect on the spread over synthetic draws shows.

The cache holds about 300 MB per seed (``--cache``, a temporary folder by default), keyed by the options
that shape the features; after changing feature-side code (backbone, synthesis, fusion bank), delete it.
Options that change the features (``input_size``, ``levels``, ``n_variants``, ``anomaly_*``, ``memory_*``,
``inputs``) are refused: they need a fresh cache, i.e. ``bench_brain1.py``.

    .venv/bin/python bench/sweep_lorentz_heads.py [--set KEY=JSON ...] [--seeds 0,1,2] [--json out.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from anomalens.engine.detectors import create_detector
from anomalens.engine.evaluation import onsite_data
from anomalens.engine.metrics import evaluate
from anomalens.plugins.lorentz.detector import LorentzDetector, _PatchSet

HEAD_OPTIONS = {"geometry", "dim", "curvature", "learn_curvature", "epochs", "lr",
                "batch_patches", "n_heads", "smoothing_sigma"}
CACHE_VERSION = 2


def _cache(det: LorentzDetector, normals: np.ndarray, eval_slices: np.ndarray, path: Path) -> dict:
    """The seed's backbone features (normals, evaluation slices) and synthetic draws; built once, reused."""
    if path.exists():
        return torch.load(path, weights_only=True)
    raw = det._raw_features(normals, None)
    det._fit_stats(raw)  # the draws are stored standardised, as fit() leaves them
    sets = []
    for k in range(det.config.n_heads):
        ps = det._patch_set(normals, det.config.n_variants, det._draw_rng(k, 0), None, None, None, 0.0, 1.0)
        sets.append({"feats": ps.feats, "labels": ps.labels})
    state = {"raw": raw, "eval_raw": det._raw_features(eval_slices, None),
             "sets": sets}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".part{os.getpid()}")  # two sweeps may build the same seed at once
    torch.save(state, tmp)
    tmp.replace(path)
    return state


def _use_cache(det: LorentzDetector, state: dict, data) -> None:
    """Serve the detector's backbone passes and synthetic draws from the cache, so its own ``fit`` runs.

    Everything else (statistics, fusion bank, the heads' training and batch seeds, their reference) is
    the detector's code, unchanged.
    """
    known = ((data.normals, state["raw"]), (data.eval_slices, state["eval_raw"]))

    def raw_features(slices, cancel):
        for images, feats in known:
            if slices.shape == images.shape and np.array_equal(slices, images):
                return feats
        raise RuntimeError("a backbone pass the cache does not hold: the detector's fit changed; update this bench")

    draws = iter(state["sets"])

    def patch_set(*args, **kwargs):
        s = next(draws)
        return _PatchSet(s["feats"], s["labels"])

    det._raw_features, det._patch_set = raw_features, patch_set
    det.config.batch_size = max(len(data.normals), len(data.eval_slices))  # one backbone call per stack


def _auroc_dice(det: LorentzDetector, data, fuse: bool) -> dict[str, float]:
    det.config.fuse_memory = fuse
    m = evaluate(det.score(data.eval_slices).heatmaps, data.eval_masks, data.eval_foreground, n_boot=0)
    return {k: round(float(m[k]), 4) for k in ("pixel_auroc", "pixel_ap", "best_dice")}


def run_seed(seed: int, cfg: dict, data, cache_dir: Path) -> dict:
    """Fit the detector (its own ``fit``, on cached features) with the head options ``cfg``, and measure."""
    base = create_detector("lorentz", config={}, seed=seed)
    feature_side = {k: v for k, v in dataclasses.asdict(base.config).items() if k not in HEAD_OPTIONS}
    key = hashlib.sha256(json.dumps([CACHE_VERSION, feature_side], sort_keys=True, default=str).encode())
    state = _cache(base, data.normals, data.eval_slices,
                   cache_dir / f"brain1-issue-seed{seed}-{key.hexdigest()[:12]}.pt")
    det = create_detector("lorentz", config=cfg, seed=seed)
    if det.config.n_heads > len(state["sets"]):
        raise SystemExit(f"the cache holds {len(state['sets'])} synthetic draws; n_heads must not exceed it")
    _use_cache(det, state, data)
    t0 = time.perf_counter()
    det.fit(data.normals)
    fit_s = time.perf_counter() - t0
    row = {"seed": seed, "fit_s": round(fit_s, 1), "curvature": [round(h.curvature, 3) for h in det.heads],
           "fused": _auroc_dice(det, data, True), "heads": _auroc_dice(det, data, False)}
    heads = det.heads
    row["each_head_auroc"] = []
    for h in heads:
        det.heads = [h]
        row["each_head_auroc"].append(_auroc_dice(det, data, False)["pixel_auroc"])
    det.heads = heads
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--set", action="append", default=[], help="KEY=JSON head option")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "anomalens-bench-cache")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = {k: json.loads(v) for k, v in (s.split("=", 1) for s in args.set)}
    if set(cfg) - HEAD_OPTIONS:
        raise SystemExit(f"not a head option (the cache fixes it): {', '.join(sorted(set(cfg) - HEAD_OPTIONS))}")
    data = onsite_data("brain1", max_healthy=40, hold_out=False)
    rows = []
    for seed in (int(s) for s in args.seeds.split(",")):
        row = run_seed(seed, cfg, data, args.cache)
        rows.append(row)
        f, h = row["fused"], row["heads"]
        print(f"seed {seed}: fused {f['pixel_auroc']:.4f} / AP {f['pixel_ap']:.3f} / best Dice {f['best_dice']:.3f}; "
              f"heads alone {h['pixel_auroc']:.4f} / {h['pixel_ap']:.3f} / {h['best_dice']:.3f}; each head "
              f"{row['each_head_auroc']}; curvature {row['curvature']}; fit {row['fit_s']:.0f} s", flush=True)
        if args.json:
            args.json.write_text(json.dumps({"cfg": cfg, "rows": rows}, indent=1))
    for part in ("fused", "heads"):
        for key in ("pixel_auroc", "best_dice"):
            vals = [r[part][key] for r in rows]
            sd = f" ± {statistics.stdev(vals):.3f}" if len(vals) > 1 else ""
            print(f"{json.dumps(cfg)} {part} {key}: {statistics.mean(vals):.4f}{sd}")


if __name__ == "__main__":
    main()
