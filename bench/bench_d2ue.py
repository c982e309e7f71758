"""D2UE numbers: 64² map latency, training time, and the paper's Table 2 ablation on sample:brain1.

    .venv/bin/python bench/bench_d2ue.py latency [--threads 1,2]
    .venv/bin/python bench/bench_d2ue.py train-time [--slices 200] [--epochs 250]
    .venv/bin/python bench/bench_d2ue.py ablation [--backbones ae,aeu] [--epochs 250] [--json out.json]

latency: one 64² slice through ``D2UEDetector.score`` with 3 learners (forward, input gradient, maps,
resize, smoothing), the median of repeated runs, against the 0.1 s target; also per map in a batch of 32,
and a per-learner loop (no grouping) for comparison. Weights are untrained: time does not depend on them.

train-time: the default configuration fitted on N normal slices (MNI152 axial slices, topped up with
left-right flips when there are fewer than N). With ``--epochs`` below 250 the time is measured for those
epochs and extrapolated linearly to 250 (labelled as such; an epoch costs the same throughout).

ablation: the on-site protocol on sample:brain1 (fit on MNI152 + brain1's lesion-free slices far from the
lesion, evaluate on the held-out slices). Per backbone one ensemble is trained without RAR and one with
it; rows as in the paper's Table 2: Ens (mean reconstruction error), +Unc (output-space spread), +RAR,
+DSU, plus Unc+DSU without RAR. Image AUROC uses the detector's image score (mean of the map, as the
paper); "img AUROC +N" adds the case's held-out lesion-free calibration slices as extra negatives (they were
never fitted on). Pixel metrics count tissue pixels only.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch

from anomalens.plugins.d2ue import D2UEDetector
from anomalens.plugins.d2ue.model import EnsembleAE, ensemble_maps

TARGET_S = 0.1


def untrained(n_learners: int = 3, input_size: int = 64, backbone: str = "aeu") -> D2UEDetector:
    det = D2UEDetector(config={"n_learners": n_learners, "input_size": input_size, "backbone": backbone})
    model = EnsembleAE(n_learners, input_size, backbone)
    det.load_state_dict({f"ensemble.{k}": v for k, v in model.state_dict().items()})
    det.fitted = True
    return det


def _median_time(fn, reps: int) -> float:
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def latency(args: argparse.Namespace) -> None:
    rng = np.random.default_rng(0)
    one = rng.random((1, 64, 64), dtype=np.float32)
    batch = rng.random((32, 64, 64), dtype=np.float32)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} default threads; load average "
          f"{' '.join(f'{v:.2f}' for v in __import__('os').getloadavg())}")
    for threads in [int(t) for t in args.threads.split(",")]:
        torch.set_num_threads(threads)
        for backbone in args.backbones.split(","):
            det = untrained(3, 64, backbone)
            single = _median_time(lambda d=det: d.score(one), args.reps)
            batched = _median_time(lambda d=det: d.score(batch), max(3, args.reps // 10)) / len(batch)
            learners = [det.model.member(i) for i in range(3)]
            for lr in learners:
                lr.eval().requires_grad_(False)
            x = torch.as_tensor(one)[:, None] * 2 - 1

            def loop(ls=learners, x=x) -> None:
                maps = [ensemble_maps(lr, x, ("dual",))["dual"] for lr in ls]  # each one's |grad·residual|
                torch.stack(maps).std(0)

            looped = _median_time(loop, args.reps)
            print(f"threads={threads} {backbone}: 64² map, 3 learners: single slice {single * 1000:.1f} ms "
                  f"(ratio to 0.1 s: {single / TARGET_S:.2f}); per map in a batch of 32 {batched * 1000:.1f} ms "
                  f"(ratio {batched / TARGET_S:.2f}); ungrouped per-learner loop {looped * 1000:.1f} ms")


def mni_slices(n: int, size: int = 64) -> np.ndarray:
    from anomalens.engine.evaluation import healthy_slices

    base = healthy_slices("sample:mni152", size, max_slices=n)
    out = [base]
    while sum(len(o) for o in out) < n:
        out.append(base[:, :, ::-1])
    return np.ascontiguousarray(np.concatenate(out)[:n])


def train_time(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads_train)
    normals = mni_slices(args.slices)
    det = D2UEDetector(config={"epochs": args.epochs, "backbone": args.backbone})
    t0 = time.perf_counter()
    det.fit(normals)
    took = time.perf_counter() - t0
    full = took * 250 / args.epochs
    note = "measured" if args.epochs == 250 else f"extrapolated from {args.epochs} epochs"
    print(f"default training ({args.backbone}, 3 learners, 64², batch 64, 250 epochs) on {len(normals)} slices, "
          f"{args.threads_train} thread(s): {took:.0f} s for {args.epochs} epochs; 250 epochs: {full / 60:.1f} min "
          f"({note}); target 15 min, ratio {full / 900:.2f}")


ROWS = [  # (label, RAR-trained model?, map kind)
    ("Ens", False, "reconstruction"),
    ("Ens+Unc", False, "output"),
    ("Ens+Unc+RAR", True, "output"),
    ("Ens+Unc+DSU (no RAR)", False, "dual"),
    ("Ens+Unc+RAR+DSU (D2UE)", True, "dual"),
]


def ablation(args: argparse.Namespace) -> None:
    from sklearn.metrics import roc_auc_score

    from anomalens.engine.evaluation import onsite_data
    from anomalens.engine.metrics import evaluate

    torch.set_num_threads(args.threads_train)
    t0 = time.perf_counter()
    data = onsite_data("brain1", healthy=["mni152"], size=args.size)
    labels = data.eval_masks.reshape(len(data.eval_masks), -1).any(1)
    print(f"normals: {data.normal_sources} ({len(data.normals)} slices); evaluated slices "
          f"{data.split.spec_suffix('evaluate')} ({len(data.eval_slices)}, {int(labels.sum())} with lesion); "
          f"data {time.perf_counter() - t0:.1f}s", flush=True)
    ext_labels = np.concatenate([labels, np.zeros(len(data.calibration), bool)])
    kinds = ("reconstruction", "output", "dual")
    results: dict[str, dict[str, dict]] = {}
    sigmas = [float(s) for s in args.sigmas.split(",")]
    for backbone in args.backbones.split(","):
        maps: dict[bool, dict[str, tuple[torch.Tensor, torch.Tensor]]] = {}
        dets = {}
        for rar in (False, True):
            det = D2UEDetector(config={"backbone": backbone, "repulsion": rar, "epochs": args.epochs}, seed=args.seed)
            t1 = time.perf_counter()
            det.fit(data.normals)
            fit_s = time.perf_counter() - t1
            t1 = time.perf_counter()
            ev = det.raw_maps(data.eval_slices, kinds)
            score_s = (time.perf_counter() - t1) / len(data.eval_slices)
            cal = det.raw_maps(data.calibration, kinds)
            maps[rar] = {k: (ev[k], cal[k]) for k in kinds}
            dets[rar] = det
            log = det.training_log["learners"]
            print(f"{backbone} RAR={rar}: fit {fit_s:.0f} s, {score_s * 1000:.0f} ms/slice (3 maps); final losses "
                  f"{[round(x['final_loss'], 4) for x in log]}, final CKA {[x['final_cka'] for x in log]}",
                  flush=True)
        results[backbone] = {}
        for label, rar, kind in ROWS:
            det = dets[rar]
            ev, cal = maps[rar][kind]
            row = {}
            for sigma in sigmas:
                det.config.smoothing_sigma = sigma
                r_ev = det.to_result(ev, data.eval_slices.shape[1:], kind)
                r_cal = det.to_result(cal, data.calibration.shape[1:], kind)
                m = evaluate(r_ev.heatmaps, data.eval_masks, data.eval_foreground, n_boot=0)
                row[sigma] = {
                    "image_auroc": float(roc_auc_score(labels, r_ev.scores)),
                    "image_auroc_ext": float(roc_auc_score(ext_labels, np.concatenate([r_ev.scores, r_cal.scores]))),
                    "pixel_auroc": m["pixel_auroc"], "pixel_ap": m["pixel_ap"], "best_dice": m["best_dice"],
                }
            results[backbone][label] = row
    default_sigma = D2UEDetector().config.smoothing_sigma
    main_sigma = default_sigma if default_sigma in sigmas else sigmas[0]
    n_ext = len(data.calibration)
    print(f"\nsample:brain1, on-site protocol, smoothing σ = {main_sigma} (64² pixels), seed {args.seed}, "
          f"{args.epochs} epochs")
    for backbone, rows in results.items():
        print(f"\n{backbone.upper()}\n| variant | img AUROC | img AUROC +{n_ext} normals | pixel AUROC | pixel AP | "
              "best Dice |\n|---|---|---|---|---|---|")
        for label, row in rows.items():
            v = row[main_sigma]
            print(f"| {label} | {v['image_auroc']:.3f} | {v['image_auroc_ext']:.3f} | {v['pixel_auroc']:.3f} | "
                  f"{v['pixel_ap']:.3f} | {v['best_dice']:.3f} |")
        if len(sigmas) > 1:
            print("pixel AUROC by smoothing σ (64² pixels): " + "; ".join(
                f"{label}: " + ", ".join(f"σ={s}: {row[s]['pixel_auroc']:.3f}" for s in sigmas)
                for label, row in rows.items()))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({b: {r: {str(s): v for s, v in row.items()} for r, row in rows.items()}
                       for b, rows in results.items()}, fh, indent=2)


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("latency")
    p.add_argument("--threads", default="1,2")
    p.add_argument("--backbones", default="aeu,ae")
    p.add_argument("--reps", type=int, default=30)
    p.set_defaults(fn=latency)
    p = sub.add_parser("train-time")
    p.add_argument("--slices", type=int, default=200)
    p.add_argument("--epochs", type=int, default=250)
    p.add_argument("--backbone", default="aeu")
    p.add_argument("--threads-train", type=int, default=2)
    p.set_defaults(fn=train_time)
    p = sub.add_parser("ablation")
    p.add_argument("--backbones", default="ae,aeu")
    p.add_argument("--epochs", type=int, default=250)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sigmas", default="1.0,0.0,2.0")
    p.add_argument("--threads-train", type=int, default=2)
    p.add_argument("--json", default=None)
    p.set_defaults(fn=ablation)
    args = ap.parse_args()
    args.fn(args)


if __name__ == "__main__":
    main()
