"""``anomalens calibrate`` (normals only, a new bundle version) and ``anomalens eval`` (metrics, report)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..progress import stage
from .cmd_model import warn
from .guards import refuse_source_folder
from .main import emit
from .progressbar import terminal_progress

#: The most bootstrap resamples ``eval`` draws (each holds per-slice statistics; far more than intervals need).
MAX_BOOTSTRAP = 20_000
#: The keys ``anomalens eval --json`` always prints (scripts may rely on them).
STABLE_KEYS = ("image_auroc", "image_ap", "pixel_auroc", "pixel_ap", "best_dice", "dice", "precision",
               "dice_scr", "precision_scr", "fpr95", "n_slices", "seconds_per_slice")

CALIBRATE_HELP = """\
Calibrate a trained model from NORMAL scans only (no anomalous example is needed): the score normaliser,
the plain threshold and SCR's threshold, tau and lambda are set so that at most --target-fpr of the
normal tissue is flagged. The result is a NEW bundle (version + 1, its parent recorded); the old one is
left untouched.

Use held-out normal scans, not the ones the model was fitted on: a model scores its own training slices
lower than new normal scans, so thresholds calibrated on them are too permissive and flag too much on
new patients. With --fine-tune, every other normal slice adapts the model and the rest calibrate it.
"""

EVAL_HELP = """\
Evaluate a model on labelled data. DATA is one of:
  sample:NAME[#slices]      a sample with a lesion mask (anomalens samples list)
  IMAGE:MASK[#slices]       a scan and its lesion mask on the same grid; split at the LAST ':' whose
                            right side is an existing path (and, preferably, whose left side is too);
                            a Windows drive colon (C:\\...) is never a split point
  FOLDER                    a BMAD / MVTec AD dataset folder, evaluated on its test/ split
                            (test/good, test/<Ungood|defect>; masks in label/ beside img/, or in
                            ground_truth/<defect>/<stem>_mask.png; good images may lack masks)
Dice and precision use the model's calibrated operating point (run 'anomalens calibrate' first);
best Dice is threshold-tuned on the test data itself and is only an upper bound. Slices the model
records as fitted or calibrated on are left out of every metric (a note names them; --include-seen counts
them); when nothing else is left, eval stops with an error instead of measuring the model on its own data.
"""


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    from ..device import DEVICE_CHOICES

    c = sub.add_parser("calibrate", parents=[common], help="calibrate a model from normal scans only (new bundle)",
                       description=CALIBRATE_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    c.add_argument("--model", required=True, type=Path, help="model bundle folder to start from (not changed)")
    c.add_argument("--normals", nargs="+", required=True, metavar="SPEC",
                   help="HELD-OUT normal scans (file, DICOM folder, sample:NAME, each optionally #slices); "
                        "the model's own training scans give too-permissive thresholds")
    c.add_argument("--fine-tune", action="store_true",
                   help="adapt the model to these normals first (half the slices), calibrate on the other half")
    c.add_argument("--target-fpr", type=float, default=0.01,
                   help="false-positive area allowed on normal tissue (default 0.01 = 1%%)")
    c.add_argument("--mode", choices=("2d", "3d"), default="2d", help="SCR graph: within slices or across them")
    c.add_argument("--out", required=True, type=Path, help="new model bundle folder")
    c.add_argument("--device", default="auto", choices=DEVICE_CHOICES)
    c.set_defaults(handler=run_calibrate)

    e = sub.add_parser("eval", parents=[common], help="evaluate a model on labelled data (AUROC, AP, Dice, ...)",
                       description=EVAL_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    e.add_argument("--model", required=True, type=Path, help="model bundle folder")
    e.add_argument("--data", required=True, metavar="DATA", help="sample:NAME, IMAGE:MASK or a dataset folder")
    e.add_argument("--report", type=Path, default=None, metavar="DIR",
                   help="write metrics.json/.csv/.md, roc.png, pr.png and overlays into DIR")
    e.add_argument("--reduce", choices=("max", "mean"), default="max", help="image score from the map")
    e.add_argument("--no-scr", action="store_true", help="skip SCR (dice_scr/precision_scr become null)")
    e.add_argument("--bootstrap", type=int, default=1000, metavar="N",
                   help="bootstrap resamples over slices for the confidence intervals (0: none)")
    e.add_argument("--include-seen", action="store_true",
                   help="also count the slices the model records as fitted or calibrated on (left out by default: "
                        "their scores are no test of the model)")
    e.add_argument("--keep-paths", action="store_true",
                   help="name the data and the model by their paths in the output and the report files (default: "
                        "<path:…> tokens, since folder and file names often name patients)")
    e.add_argument("--device", default="auto", choices=DEVICE_CHOICES)
    e.set_defaults(handler=run_eval)


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.2f} %"


def run_calibrate(args: argparse.Namespace) -> int:
    from ..detectors import load_bundle, read_manifest, save_bundle
    from ..detectors.base import fingerprint
    from ..pipeline import gather_normals, model_grid
    from ..recalibration import recalibrate

    if not 0.0 < args.target_fpr < 0.5:
        raise ConfigError(f"--target-fpr must be between 0 and 0.5, got {args.target_fpr}")
    if args.out.exists():
        raise ConfigError(f"{args.out} already exists; models are never overwritten, choose a new folder")
    refuse_source_folder(args.out, [*args.normals, args.model])
    manifest = read_manifest(args.model)
    det = load_bundle(args.model, device=args.device)
    notes: list[str] = []
    info: dict[str, Any] = {}
    with terminal_progress("calibrating") as progress:
        normals = gather_normals(args.normals, (det.preprocessing or {}).get("intensity"),
                                 progress=stage(progress, 0.0, 0.15), grid=model_grid(det), info=info)
        if fingerprint(normals) == (det.training or {}).get("fingerprint"):
            notes.append("these normals are the model's own training data: thresholds will be too permissive; "
                         "calibrate on held-out normal scans")
        if args.mode == "3d" and len(args.normals) > 1:
            notes.append("3-D SCR links consecutive slices; slices of different scans are stacked end to end")
        rec = recalibrate(det, normals, fine_tune=args.fine_tune, target_fpr=args.target_fpr, mode=args.mode,
                          progress=stage(progress, 0.15, 1.0))
    from ..provenance import merge_seen

    merge_seen(rec.detector.training, info)  # scores on those slices are no test of the calibrated model
    cal = rec.calibration
    notes += list(cal.notes)
    what = f"calibrated on {rec.n_calibration} normal slices" + (
        f", fine-tuned on {rec.n_fine_tune}" if rec.n_fine_tune else "")
    # The parent by its creation time and version, not by path: a bundle names no file on disk, and a model
    # folder is often named after the patient or the site's case ("Doe_John_T1_model").
    path = save_bundle(det, args.out, parent={k: v for k, v in manifest.items() if k != "path"}, note=what)
    before, after = rec.before, rec.after
    warn([*info.get("warnings", []), *rec.warnings])
    data = {
        "model": str(path), "parent": str(args.model), "bundle_version": int(manifest.get("bundle_version", 1)) + 1,
        "n_normal_slices": len(normals), "n_calibration_slices": rec.n_calibration,
        "fine_tuned": bool(rec.n_fine_tune), "n_fine_tune_slices": rec.n_fine_tune or None,
        "calibration": cal.summary(),
        "before": None if before is None else {"fp_area": before.plain, "fp_area_scr": before.scr},
        "after": {"fp_area": after.plain, "fp_area_scr": after.scr,
                  "lesion_survival": None if rec.own_scr else cal.lesion_survival},
        "scr_source": rec.own_scr,
        "notes": notes, "warnings": [*info.get("warnings", []), *rec.warnings],
    }
    lines = [
        f"saved calibrated model (bundle version {data['bundle_version']}) to {path}; {args.model} is unchanged",
        f"threshold {cal.threshold:.4f}   " + (
            f"SCR: the model's own cut ({rec.own_scr})" if rec.own_scr else
            f"SCR: threshold {cal.scr.threshold:.4f}, λ {format_num(cal.scr.lam)}, τ {format_num(cal.scr.tau)} "
            f"({cal.scr.mode})"),
        *rec.describe(),
    ] + [f"note: {n}" for n in notes]
    emit(args, data, "\n".join(lines))
    return 0


def format_num(v: float | None) -> str:
    return "–" if v is None else f"{v:.4g}"


def human_eval(m: dict[str, Any]) -> str:
    """The metric table for people; best Dice is labelled as the upper bound it is."""
    from ..report import format_ci, format_value

    rows = [
        ("image AUROC", "image_auroc", ""), ("image AP", "image_ap", ""),
        ("pixel AUROC", "pixel_auroc", ""), ("pixel AP", "pixel_ap", ""),
        ("best Dice", "best_dice", "threshold-tuned on the test data (upper bound)"),
        ("Dice", "dice", "at the calibrated threshold"), ("precision", "precision", "at the calibrated threshold"),
        ("Dice + SCR", "dice_scr", "calibrated on normals"), ("precision + SCR", "precision_scr", ""),
        ("FPR @ 95% TPR", "fpr95", "pixel level"),
    ]
    lines = [f"model: {m.get('model')} ({m.get('detector')})", f"data:  {m.get('data')}",
             f"slices: {m.get('n_slices')} ({m.get('n_anomalous_slices')} with a lesion), "
             f"{m.get('seconds_per_slice', 0.0):.4f} s per slice", "",
             f"{'metric':<17}{'value':>8}  95% CI"]
    for label, key, extra in rows:
        lines.append(f"{label:<17}{format_value(m.get(key)):>8}  {format_ci(m.get(key + '_ci')):<18} {extra}".rstrip())
    if m.get("notes"):
        lines += [""] + [f"note: {n}" for n in m["notes"]]
    if m.get("report"):
        lines += ["", f"report written to {m['report']}"]
    return "\n".join(lines)


def run_eval(args: argparse.Namespace) -> int:
    from ..datasets import load_eval_data
    from ..detectors import load_bundle
    from ..evaluation import evaluate_model
    from ..report import jsonable, write_report

    if not 0 <= args.bootstrap <= MAX_BOOTSTRAP:
        raise ConfigError(f"--bootstrap must be between 0 and {MAX_BOOTSTRAP} (10⁸ resamples ran the machine out of "
                          "memory); 1000 gives intervals to two digits")
    if args.report is not None and args.report.exists() and not args.report.is_dir():
        raise ConfigError(f"{args.report} is a file; --report needs a folder")
    if args.report is not None:
        refuse_source_folder(args.report, [args.data, args.model], option="--report")
    det = load_bundle(args.model, device=args.device)
    with terminal_progress("evaluating") as progress:
        data = load_eval_data(args.data, progress=stage(progress, 0.0, 0.1))
        ev = evaluate_model(det, data, scr=not args.no_scr, reduce=args.reduce, n_boot=args.bootstrap,
                            progress=stage(progress, 0.1, 1.0), include_seen=args.include_seen)
    metrics = ev.metrics
    from ..logredact import redact_paths

    shown = (lambda text: text) if args.keep_paths else redact_paths
    metrics.update({"model": shown(str(args.model)), "detector": det.name, "data": shown(data.source),
                    "device": str(det.device), "notes": [shown(n) for n in metrics.get("notes", [])]})
    metrics["calibration"] = None if det.calibration is None else det.calibration.summary()
    for key in STABLE_KEYS:
        metrics.setdefault(key, None)
    if args.report is not None:
        predicted = ev.scr_mask if ev.scr_mask is not None else ev.mask
        write_report(args.report, metrics, ev.slices, ev.maps, ev.truth, ev.foreground, predicted,
                     [shown(n) for n in ev.names], title=f"AnomaLens evaluation: {det.name}", seed=det.seed)
        metrics["report"] = str(args.report)
    out = jsonable(metrics)
    emit(args, out, human_eval(out))
    return 0
