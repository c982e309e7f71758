"""``anomalens train`` and ``anomalens score``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from anomalens.engine.cli.main import emit
from anomalens.engine.cli.progressbar import terminal_progress
from anomalens.engine.errors import ConfigError


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
    from anomalens.engine.device import DEVICE_CHOICES

    p = sub.add_parser("train", parents=[common], help="fit a detector on normal scans")
    p.add_argument("--detector", default="lorentz", help="registered detector name (see 'anomalens detectors')")
    p.add_argument("--normals", nargs="+", required=True, metavar="SPEC", help="normal scans (file, folder, "
                   "sample:NAME, each optionally with #slices)")
    p.add_argument("--out", required=True, type=Path, help="new model bundle folder")
    p.add_argument("--device", default="auto", choices=DEVICE_CHOICES)
    p.add_argument("--epochs", type=int, default=None, help="training epochs (detectors that train)")
    p.add_argument("--backbone", default=None, metavar="SPEC",
                   help="feature backbone: lite0 (default, shipped), lite1, lite2, wrn50 (torch hub cache) or "
                        "wrn50=/path/to/wide_resnet50_2.pth")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", dest="options", action="append", metavar="KEY=VALUE", help="detector option")
    p.set_defaults(handler=run_train)

    s = sub.add_parser("score", parents=[common], help="score a scan with a trained model")
    s.add_argument("--model", required=True, type=Path, help="model bundle folder")
    s.add_argument("input", metavar="INPUT", help="file, DICOM folder or sample:NAME")
    s.add_argument("--slices", default=None, help="slice selection, e.g. 3-10,14")
    s.add_argument("--out", required=True, type=Path, help="output folder")
    s.add_argument("--device", default="auto", choices=DEVICE_CHOICES)
    s.set_defaults(handler=run_score)

    d = sub.add_parser("detectors", parents=[common], help="list installed detectors")
    d.set_defaults(handler=run_detectors)


def run_detectors(args: argparse.Namespace) -> int:
    from anomalens.engine.detectors import available_detectors, get_detector_class

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
    from anomalens.engine.detectors import get_detector_class
    from anomalens.engine.pipeline import train

    if args.out.exists():
        raise ConfigError(f"{args.out} already exists; models are never overwritten, choose a new folder")
    config = parse_options(args.options)
    if args.epochs is not None:
        known = get_detector_class(args.detector).config_class.__dataclass_fields__
        if "epochs" not in known:
            raise ConfigError(f"the {args.detector} detector does not train for epochs")
        config["epochs"] = args.epochs
    if args.backbone is not None:
        known = get_detector_class(args.detector).config_class.__dataclass_fields__
        if "backbone" not in known:
            raise ConfigError(f"the {args.detector} detector does not use a pretrained backbone")
        config["backbone"] = args.backbone
    with terminal_progress(f"training {args.detector}") as progress:
        det = train(args.detector, args.normals, config=config, device=args.device, seed=args.seed,
                    progress=progress)
    path = det.save(args.out)
    emit(args, {"model": str(path), "detector": det.name, "n_training_slices": det.training.get("n_slices")},
         f"saved {det.name} model trained on {det.training.get('n_slices')} slices to {path}")
    return 0


def run_score(args: argparse.Namespace) -> int:
    from anomalens.engine.detectors import load_bundle
    from anomalens.engine.pipeline import load_volume, parse_slices, score_volume, write_score_outputs

    det = load_bundle(args.model, device=args.device)
    volume = load_volume(args.input)
    idx = parse_slices(args.slices, volume.n_slices)
    with terminal_progress("scoring") as progress:
        vs = score_volume(det, volume, slices=idx, progress=progress)
    paths = write_score_outputs(vs, args.out)
    data = {k: str(v) for k, v in paths.items()}
    data.update({"n_slices": len(idx), "seconds_per_slice": round(vs.seconds_per_slice, 4),
                 "max_score": max(vs.slice_scores.values())})
    emit(args, data, "\n".join(f"{k}: {v}" for k, v in data.items()))
    return 0
