"""Every development case, every detector, one table (issue #20).

Protocol (on-site, ``anomalens.engine.evaluation.onsite_data``), per case (brain1, lung1, breast1):

- **fit** on the case's lesion-free slices far from the lesion (every other one of them) plus the healthy
  sample of the same modality (brain1: MNI152; lung1 and breast1 have none, so only the case's slices);
- **calibrate** on the other half of those lesion-free slices (normals, never fitted on): the normal-quantile
  map, the plain threshold at 1 % false-positive pixels, and SCR's point with the synthetic-lesion check
  (``calibrate_detector(..., lesion_check=True, pixel_mm=grid)``, as ``bench/bench_scr_survival.py``);
- **evaluate** on the lesion slices and their neighbours, never fitted or calibrated on.

Per (case, detector row, seed) it records pixel AUROC, pixel AP, best Dice, the calibrated Dice of the plain
mask and of the SCR mask, SCR's λ, the fit seconds and the scoring seconds per evaluated slice, one JSON line
each, appended and flushed as soon as the row is done. A run skips the rows already in ``--out`` (errors are
retried), so a killed run loses at most the fit in progress.

What is tuned on what: every detector runs with its default configuration (except invdetect's step count,
below); nothing is tuned on these cases here. Thresholds, λ and the normal-quantile scale come from the
calibration normals only. **Best Dice is an oracle**: the threshold that maximises Dice on the evaluated
slices themselves, an upper bound, not an expected Dice; the calibrated Dice columns are the honest ones.

Rows: ``patchcore``; ``lorentz`` (one fit, scored twice: the heads alone, ``output=head``, and fused with the
memory bank, ``output=fused``, the default; ``output`` is read at scoring time); ``lorentz-euclidean`` (the
``geometry=euclidean`` ablation, same two outputs; optional, not in the default list); ``curved`` (default:
Patch-SVDD base with comparison, MiT) and ``curved-euclidean`` (its Euclidean baseline, ``variant=euclidean``);
``invdetect`` with ``--invdetect-steps`` U-Net steps (default here 1,000: the detector's own 10,000 take ~6,000 s
per fit on this CPU; the row says so); ``d2ue`` (default).

    OMP_NUM_THREADS=1 .venv/bin/python bench/dev_table.py [--cases brain1,lung1,breast1] [--seeds 0,1,2]
        [--detectors patchcore,curved,curved-euclidean,lorentz,invdetect,d2ue] [--invdetect-steps 1000]
        [--set ROW.key=json ...] [--out bench/results/dev_table.jsonl] [--threads 1]
    .venv/bin/python bench/dev_table.py --render [--out bench/results/dev_table.jsonl]

Rows run seed-outermost, then in ``--detectors`` order, then case, so the first seed of every row on every
case is done before any second seed. ``--render`` prints the markdown table (mean ± sd over the seeds present).
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "results" / "dev_table.jsonl"
TARGET_FPR = 0.01
INVDETECT_DEFAULT_STEPS = 10_000
#: The healthy source whose anatomy matches each case (as ``bench/curved_variants.py``; none for lung1, breast1).
HEALTHY = {"brain1": "mni152", "lung1": "", "breast1": ""}


@dataclass(frozen=True)
class Row:
    """One fit of a detector; ``outputs`` maps each table label to the config changes applied at scoring time."""

    key: str
    detector: str
    config: dict[str, Any] = field(default_factory=dict)
    outputs: tuple[tuple[str, dict[str, Any]], ...] = ()


def rows(invdetect_steps: int) -> dict[str, Row]:
    """Every row the bench knows, in table order."""
    inv = ("invdetect" if invdetect_steps == INVDETECT_DEFAULT_STEPS
           else f"invdetect ({invdetect_steps:,} steps, not the default {INVDETECT_DEFAULT_STEPS:,})")
    return {r.key: r for r in (
        Row("patchcore", "patchcore", {}, (("patchcore", {}),)),
        Row("lorentz", "lorentz", {}, (("lorentz head", {"output": "head"}),
                                        ("lorentz fused (default)", {"output": "fused"}))),
        Row("lorentz-euclidean", "lorentz", {"geometry": "euclidean"},
            (("lorentz euclidean ablation, head", {"output": "head"}),
             ("lorentz euclidean ablation, fused", {"output": "fused"}))),
        Row("curved", "curved", {}, (("curved MiT (default)", {}),)),
        Row("curved-euclidean", "curved", {"variant": "euclidean"}, (("curved euclidean baseline", {}),)),
        Row("invdetect", "invdetect", {"train_steps": invdetect_steps}, ((inv, {}),)),
        Row("d2ue", "d2ue", {}, (("d2ue", {}),)),
    )}


def _overrides(sets: list[str], row: Row) -> dict[str, Any]:
    """``--set ROW.key=json`` (ROW a row key or a detector name) that apply to ``row``."""
    out: dict[str, Any] = {}
    for s in sets:
        target, _, rest = s.partition(".")
        key, eq, value = rest.partition("=")
        if not eq or not key:
            raise SystemExit(f"--set wants ROW.key=json, got {s!r}")
        if target in (row.key, row.detector):
            out[key] = json.loads(value)
    return out


def _label(base: str, extra: dict[str, Any]) -> str:
    return base if not extra else f"{base} [{', '.join(f'{k}={json.dumps(v)}' for k, v in sorted(extra.items()))}]"


def _done(out: Path) -> set[tuple[str, str, int]]:
    """(case, label, seed) already recorded without an error."""
    done = set()
    if out.is_file():
        for line in out.read_text().splitlines():
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a kill
            if not r.get("error"):
                done.add((r["case"], r["label"], int(r["seed"])))
    return done


def _git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True, text=True,
                              check=True).stdout.strip() or None
    except (OSError, subprocess.CalledProcessError):
        return None


def _num(v: Any) -> float | None:
    return None if v is None or (isinstance(v, float) and not math.isfinite(v)) else float(v)


def run_row(row: Row, extra: dict[str, Any], case: str, data: Any, seed: int,
            labels: list[str]) -> list[dict[str, Any]]:
    """Fit once, then for each wanted output: calibrate (plain and SCR), score the evaluated slices, measure."""
    from anomalens.engine.detectors import create_detector
    from anomalens.engine.metrics import evaluate
    from anomalens.engine.preprocess.foreground import foreground_mask
    from anomalens.engine.recalibration import calibrate_detector
    from anomalens.engine.scoring import apply_calibration

    config = {**row.config, **extra}
    det = create_detector(row.detector, config=config, seed=seed)
    t0 = time.perf_counter()
    det.fit(data.normals)
    fit_s = time.perf_counter() - t0
    fg_cal = foreground_mask(data.calibration)
    out = []
    for (base, at_score), label in zip(row.outputs, labels, strict=True):
        for k, v in at_score.items():
            setattr(det.config, k, v)
        t1 = time.perf_counter()
        normal = det.score(data.calibration)
        cal = calibrate_detector(det, data.calibration, fg_cal, target_fpr=TARGET_FPR, result=normal,
                                 lesion_check=True, pixel_mm=data.grid.pixel_mm)
        cal_s = time.perf_counter() - t1
        t2 = time.perf_counter()
        test = det.score(data.eval_slices)
        per_slice = (time.perf_counter() - t2) / len(data.eval_slices)
        ev = apply_calibration(cal, test, data.eval_slices, data.eval_foreground)
        m = evaluate(ev.maps, data.eval_masks, data.eval_foreground, threshold=ev.threshold, scr_masks=ev.scr_mask,
                     n_boot=0)
        out.append({
            "case": case, "label": label, "row": row.key, "detector": row.detector, "seed": seed,
            "config": {**config, **at_score}, "output_of": base,
            "pixel_auroc": _num(m["pixel_auroc"]), "pixel_ap": _num(m["pixel_ap"]),
            "image_auroc": _num(m["image_auroc"]), "best_dice_oracle": _num(m["best_dice"]),
            "dice_calibrated": _num(m["dice"]), "dice_scr": _num(m["dice_scr"]), "fpr95": _num(m["fpr95"]),
            "scr_lambda": _num(cal.scr.lam), "scr_unary_fpr": _num(cal.scr_threshold_fpr),
            "lesion_survival": _num(cal.lesion_survival),
            "fit_seconds": fit_s, "seconds_per_slice": per_slice, "calibration_seconds": cal_s,
            "n_fit": len(data.normals), "n_calibration": len(data.calibration), "n_evaluated": len(data.eval_slices),
            "evaluated_slices": data.split.spec_suffix("evaluate"), "notes": m["notes"] + list(cal.notes),
        })
    return out


def run(args: argparse.Namespace) -> None:
    """Fit and measure every (seed, row, case) not in ``--out`` yet."""
    import torch

    from anomalens.engine.evaluation import onsite_data

    torch.set_num_threads(args.threads)
    np.seterr(all="ignore")
    known = rows(args.invdetect_steps)
    wanted = [k for k in args.detectors.split(",") if k]
    if unknown := [k for k in wanted if k not in known]:
        raise SystemExit(f"unknown row(s) {', '.join(unknown)}; known: {', '.join(known)}")
    cases = [c for c in args.cases.split(",") if c]
    if unknown := [c for c in cases if c not in HEALTHY]:
        raise SystemExit(f"unknown case(s) {', '.join(unknown)}; known: {', '.join(HEALTHY)}")
    seeds = [int(s) for s in args.seeds.split(",") if s]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = _done(out)
    commit = _git_commit()
    datasets: dict[str, Any] = {}
    for seed in seeds:
        for key in wanted:
            row = known[key]
            extra = _overrides(args.set, row)
            labels = [_label(base, extra) for base, _ in row.outputs]
            for case in cases:
                if all((case, lab, seed) in done for lab in labels):
                    print(f"skip {case} / {key} / seed {seed}: in {out}", flush=True)
                    continue
                if case not in datasets:
                    healthy = [h for h in HEALTHY[case].split(",") if h]
                    t = time.perf_counter()
                    data = datasets[case] = onsite_data(case, healthy=healthy, size=args.size)
                    print(f"{case}: fit on {data.normal_sources} ({len(data.normals)} slices), calibrate on "
                          f"{len(data.calibration)}, evaluate on slices {data.split.spec_suffix('evaluate')} "
                          f"({len(data.eval_slices)}); {data.grid.pixel_mm:.3f} mm pixels; loaded in "
                          f"{time.perf_counter() - t:.0f} s", flush=True)
                print(f"run {case} / {key} / seed {seed} ...", flush=True)
                stamp = {"time": datetime.now(UTC).isoformat(timespec="seconds"), "commit": commit,
                         "threads": args.threads, "size": args.size}
                try:
                    results = run_row(row, extra, case, datasets[case], seed, labels)
                except Exception as exc:  # recorded and retried on the next run; the other rows go on
                    results = [{"case": case, "label": lab, "row": key, "detector": row.detector, "seed": seed,
                                "error": f"{type(exc).__name__}: {exc}"} for lab in labels]
                    print(f"ERROR {case} / {key} / seed {seed}: {type(exc).__name__}: {exc}", flush=True)
                with out.open("a") as fh:
                    for r in results:
                        fh.write(json.dumps({**r, **stamp}) + "\n")
                    fh.flush()
                for r in results:
                    if not r.get("error"):
                        print(f"  {r['label']}: pixel AUROC {r['pixel_auroc']:.3f}, AP {r['pixel_ap']:.3f}, best Dice "
                              f"(oracle) {r['best_dice_oracle']:.3f}, Dice {_fmt(r['dice_calibrated'])}, Dice SCR "
                              f"{_fmt(r['dice_scr'])}, λ {_fmt(r['scr_lambda'], '.3g')}, fit {r['fit_seconds']:.0f} s, "
                              f"{r['seconds_per_slice']:.3f} s/slice, calibration {r['calibration_seconds']:.0f} s",
                              flush=True)


# -- the table ------------------------------------------------------------------------------------------

COLUMNS = (("pixel AUROC", "pixel_auroc", ".3f"), ("pixel AP", "pixel_ap", ".3f"),
           ("best Dice (oracle)", "best_dice_oracle", ".3f"), ("Dice calibrated", "dice_calibrated", ".3f"),
           ("Dice SCR", "dice_scr", ".3f"), ("SCR λ", "scr_lambda", ".3g"), ("fit s", "fit_seconds", ".0f"),
           ("s/slice", "seconds_per_slice", ".3f"))


def _fmt(v: float | None, spec: str = ".3f") -> str:
    return "–" if v is None else format(v, spec)


def _cell(values: list[float | None], spec: str) -> str:
    vals = [v for v in values if v is not None]
    if not vals:
        return "–"
    if len(vals) == 1:
        return format(vals[0], spec)
    return f"{format(float(np.mean(vals)), spec)} ± {format(float(np.std(vals, ddof=1)), spec)}"


def render(out: Path) -> str:
    """Markdown: per case a block, per label mean ± sd (sample sd) over the seeds present (last record wins)."""
    records: dict[tuple[str, str, int], dict[str, Any]] = {}
    for line in out.read_text().splitlines() if out.is_file() else []:
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not r.get("error") or (r["case"], r["label"], int(r["seed"])) not in records:
            records[(r["case"], r["label"], int(r["seed"]))] = r
    cases = list(dict.fromkeys(k[0] for k in records))
    order = [lab for row in rows(INVDETECT_DEFAULT_STEPS).values() for lab, _ in row.outputs]
    lines = []
    for case in sorted(cases, key=lambda c: list(HEALTHY).index(c) if c in HEALTHY else len(HEALTHY)):
        recs = [r for k, r in records.items() if k[0] == case]
        ok = [r for r in recs if not r.get("error")]
        if ok:
            r0 = ok[0]
            lines.append(f"**{case}**: fitted on {r0['n_fit']} slices, calibrated on {r0['n_calibration']}, evaluated "
                         f"on {r0['n_evaluated']} (slices {r0['evaluated_slices']})\n")
        else:
            lines.append(f"**{case}**\n")
        lines.append("| detector | seeds | " + " | ".join(c[0] for c in COLUMNS) + " |")
        lines.append("|---|---|" + "---|" * len(COLUMNS))
        labels = list(dict.fromkeys(r["label"] for r in recs))
        labels.sort(key=lambda lab: next((i for i, o in enumerate(order) if lab.startswith(o.split(" (")[0])),
                                         len(order)))
        for lab in labels:
            good = sorted((r for r in ok if r["label"] == lab), key=lambda r: r["seed"])
            bad = [r for r in recs if r["label"] == lab and r.get("error")]
            seeds = ",".join(str(r["seed"]) for r in good) or "–"
            if bad:
                seeds += f" (failed: {','.join(str(r['seed']) for r in bad)})"
            lines.append(f"| {lab} | {seeds} | " + " | ".join(_cell([r.get(k) for r in good], spec)
                                                           for _, k, spec in COLUMNS) + " |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", default="brain1,lung1,breast1")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--detectors", default="patchcore,curved,curved-euclidean,lorentz,invdetect,d2ue",
                    help="row keys, in run order (also: lorentz-euclidean)")
    ap.add_argument("--invdetect-steps", type=int, default=1000,
                    help=f"invdetect's U-Net steps (its default is {INVDETECT_DEFAULT_STEPS:,})")
    ap.add_argument("--set", action="append", default=[], help="ROW.key=json (ROW: a row key or detector name)")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--out", default=str(DEFAULT_OUT))
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 when another job shares the CPU)")
    ap.add_argument("--render", action="store_true", help="print the markdown table from --out and exit")
    args = ap.parse_args()
    if args.render:
        print(render(Path(args.out)))
        return
    run(args)


if __name__ == "__main__":
    sys.exit(main())
