"""``anomalens train`` and ``anomalens score``."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .main import emit
from .progressbar import terminal_progress


def warn(warnings: Sequence[str]) -> None:
    """Warnings on stderr in both output modes: a log keeps them, and ``--json`` has them under "warnings"."""
    for w in warnings:
        print(f"anomalens: warning: {w}", file=sys.stderr)


def parse_options(pairs: list[str] | None) -> dict[str, Any]:
    """``key=value`` pairs to a config dict; values parsed as JSON when they parse (numbers, lists, bools)."""
    out: dict[str, Any] = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise ConfigError(f"--set expects key=value, got {pair!r}")
        key, value = pair.split("=", 1)
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    from ..device import DEVICE_CHOICES

    p = sub.add_parser("train", parents=[common], help="fit a detector on normal scans")
    p.add_argument("--detector", default="lorentz", help="registered detector name (see 'anomalens detectors')")
    p.add_argument("--normals", nargs="+", required=True, metavar="SPEC", help="normal scans (file, folder, "
                   "sample:NAME, each optionally with #slices)")
    p.add_argument("--out", required=True, type=Path, help="new model bundle folder")
    p.add_argument("--device", default="auto", choices=DEVICE_CHOICES)
    p.add_argument("--epochs", type=int, default=None, help="training epochs (detectors that train)")
    p.add_argument("--variant", default=None, help="a named variant of the detector (e.g. curved: MiT, HiO, SiO …)")
    p.add_argument("--backbone", default=None, metavar="SPEC",
                   help="feature backbone: lite0 (default, shipped), lite1, lite2, wrn50 (torch hub cache) or "
                        "wrn50=/path/to/wide_resnet50_2.pth")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", dest="options", action="append", metavar="KEY=VALUE", help="detector option")
    p.set_defaults(handler=run_train)

    s = sub.add_parser("score", parents=[common], help="score scans with a trained model (one, or many in a batch)",
                       description="One INPUT scores in this process. Several INPUTs, a folder of studies or "
                                   "@LIST (one SPEC a line) score on dask.distributed, one task per study, into "
                                   "OUT/<study-id>/ with OUT/manifest.json; a rerun skips finished studies. "
                                   "Exit status 1 when some studies failed (the others' results are kept).")
    s.add_argument("--model", required=True, type=Path, help="model bundle folder")
    s.add_argument("input", metavar="INPUT", nargs="+",
                   help="file, DICOM folder, sample:NAME, a folder of studies, or @LIST.txt")
    s.add_argument("--slices", default=None, help="slice selection, e.g. 3-10,14 (one INPUT only; in a batch "
                                                  "give SPEC#slices per study)")
    s.add_argument("--out", required=True, type=Path, help="output folder")
    s.add_argument("--device", default="auto", choices=DEVICE_CHOICES)
    s.add_argument("--workers", type=int, default=None, metavar="N",
                   help="batch: local cluster of N worker processes, 1 thread each (default: CPU count)")
    s.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="batch: use a running dask scheduler, e.g. tcp://host:8786, instead of a local cluster")
    s.add_argument("--gaps", choices=("fill", "refuse", "stack"), default="fill",
                   help="a DICOM series with missing slices: fill them with empty slices so every slice lies at its "
                        "true position (default; the fillers are not scored), refuse it, or stack the slices as if "
                        "none were missing (positions are then wrong)")
    s.add_argument("--name-pattern", default=None, metavar="PATTERN",
                   help="batch: output folder names, from {hash} (always required) and {stem} (the scan's file or "
                        "folder name); default 'study-{hash}', which copies no name that could identify a patient")
    s.add_argument("--keep-paths", action="store_true",
                   help="batch: record each study's path in manifest.json and keep paths in error texts "
                        "(default: studies are named by hash only, paths in errors are replaced by <path:…>)")
    s.set_defaults(handler=run_score)

    d = sub.add_parser("detectors", parents=[common], help="list installed detectors")
    d.set_defaults(handler=run_detectors)


def run_detectors(args: argparse.Namespace) -> int:
    from ..detectors import available_detectors, get_detector_class

    rows = []
    for name in available_detectors():
        try:
            cls = get_detector_class(name)
            rows.append({"name": name, "version": cls.version, "description": cls.description})
        except Exception as exc:  # a broken plugin is listed, not fatal
            rows.append({"name": name, "error": str(exc)})
    emit(args, rows, "\n".join(f"{r['name']}: {r.get('description') or r.get('error', '')}" for r in rows))
    return 0


def run_train(args: argparse.Namespace) -> int:
    from ..detectors import get_detector_class
    from ..pipeline import train

    if args.out.exists():
        raise ConfigError(f"{args.out} already exists; models are never overwritten, choose a new folder")
    config = parse_options(args.options)
    if args.epochs is not None:
        known = get_detector_class(args.detector).config_class.__dataclass_fields__
        if "epochs" not in known:
            raise ConfigError(f"the {args.detector} detector does not train for epochs")
        config["epochs"] = args.epochs
    if args.variant is not None:
        cls = get_detector_class(args.detector)
        if not cls.variants:
            raise ConfigError(f"the {args.detector} detector has no variants")
        config["variant"] = args.variant
    if args.backbone is not None:
        known = get_detector_class(args.detector).config_class.__dataclass_fields__
        if "backbone" not in known:
            raise ConfigError(f"the {args.detector} detector does not use a pretrained backbone")
        config["backbone"] = args.backbone
    with terminal_progress(f"training {args.detector}") as progress:
        det = train(args.detector, args.normals, config=config, device=args.device, seed=args.seed,
                    progress=progress)
    path = det.save(args.out)
    grid = det.preprocessing.get("grid") or {}
    where = f" on a {grid['fov_mm']:g} mm field of view at {grid['size']}² px" if grid else ""
    warn(det.notes)
    emit(args, {"model": str(path), "detector": det.name, "n_training_slices": det.training.get("n_slices"),
                "working_grid": grid or None, "warnings": det.notes},
         f"saved {det.name} model trained on {det.training.get('n_slices')} slices{where} to {path}")
    return 0


def run_score(args: argparse.Namespace) -> int:
    from ..batch import is_batch

    inputs = list(args.input)
    if is_batch(inputs) or args.workers is not None or args.scheduler is not None:
        return run_score_batch(args, inputs)

    from ..detectors import load_bundle
    from ..fileio import ensure_folder
    from ..outputs import write_scan_result
    from ..pipeline import load_volume, parse_slices
    from ..scoring import score_scan

    det = load_bundle(args.model, device=args.device)
    volume = load_volume(inputs[0], gaps=args.gaps)
    idx = parse_slices(args.slices, volume.n_slices)
    ensure_folder(args.out)  # before minutes of scoring, not after
    with terminal_progress("scoring") as progress:
        result = score_scan(det, volume, idx, detail=False, progress=progress)
    paths = write_scan_result(result, args.out)
    data = {"files": {k: str(v) for k, v in paths.items()}, **result.summary()}
    warn(result.warnings)
    emit(args, data, "\n".join(score_lines(result, paths)))
    return 0


def score_lines(result: Any, paths: dict[str, Path]) -> list[str]:
    """What ``score`` tells a person: where the files are, the unit, what was flagged, warnings."""
    lines = [f"wrote {', '.join(p.name for p in paths.values())} to {next(iter(paths.values())).parent}",
             f"model: {result.model.label} ({result.model.fingerprint})",
             f"map unit: {result.unit.description}"]
    n = len(result.indices)
    if result.calibrated:
        flagged = result.flagged_slices
        kind = "SCR" if result.lesion_mask_kind == "scr" else "plain"
        lines.append(f"{len(flagged)} of {n} slices flagged ({kind} mask)"
                     + (f": {', '.join(str(i) for i in flagged)}" if flagged else ""))
        lines.append(f"lesion volume: {result.lesion_volume_ml:.3f} mL")
    else:
        lines.append(f"{n} slices scored; the model is not calibrated, so nothing is flagged and there is no mask "
                     "(run 'anomalens calibrate' with held-out normal scans)")
    lines.append(f"{result.seconds_per_slice:.3f} s per slice")
    return lines


def run_score_batch(args: argparse.Namespace, inputs: list[str]) -> int:
    """Batch mode of ``score``: exit 0 when every study has results, 1 (with a summary) when some failed."""
    from ..batch import run_batch

    if args.slices:
        raise ConfigError("--slices applies to one INPUT; in a batch add #slices to each study's SPEC")
    if args.workers is not None and args.workers < 1:
        raise ConfigError("--workers must be at least 1")
    from ..batch import DEFAULT_NAME_PATTERN

    summary = run_batch(args.model, inputs, args.out, workers=args.workers, scheduler=args.scheduler,
                        device=args.device, threads=getattr(args, "threads", None), keep_paths=args.keep_paths,
                        name_pattern=args.name_pattern or DEFAULT_NAME_PATTERN, gaps=args.gaps)
    data = summary.to_dict()
    emit(args, data, f"{data['ok']} scored, {data['skipped']} already done, {len(summary.failed)} failed "
                     f"in {data['seconds']:.1f} s on {data['workers']} workers; manifest: {data['manifest']}")
    if summary.failed:
        for sid, err in summary.failed.items():
            print(f"anomalens: failed: {sid}: {err}", file=sys.stderr)
    return summary.exit_code
