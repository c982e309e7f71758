"""``anomalens train`` and ``anomalens score``."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .guards import refuse_source_folder
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
    s.add_argument("input", metavar="INPUT", nargs="*",
                   help="file, DICOM folder, sample:NAME, pacs:STUDY_UID[/SERIES_UID], a folder of studies, or "
                        "@LIST.txt")
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
    s.add_argument("--pacs", default=None, metavar="NAME",
                   help="PACS profile for pacs: INPUTs, --query and --push (default: the default profile)")
    s.add_argument("--query", default=None, metavar="TERMS",
                   help="batch: score every image series of the PACS's matching studies, e.g. "
                        "\"modality=MR since=2026-01-01\" (keys: modality, since, until, patient-id, description, "
                        "limit)")
    s.add_argument("--push", action="store_true",
                   help="store each result on the PACS: a DICOM SEG of the mask, a Parametric Map of the heatmap and "
                        "an SR report (calibrated models; the objects are also kept in OUT/dicom/)")
    s.add_argument("--keep-paths", action="store_true",
                   help="record each study's path in a batch's manifest.json, and show paths in error lines "
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
    refuse_source_folder(args.out, args.normals)
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
    from ..pacs.spec import is_pacs_spec, qualify

    inputs = list(args.input)
    if args.query is not None:
        if inputs:
            raise ConfigError("give INPUTs or --query, not both")
        return run_score_batch(args, query_studies(args.pacs, args.query, args.name_pattern))
    if not inputs:
        raise ConfigError("nothing to score: give an INPUT (a file, folder, sample:NAME or pacs:STUDY_UID), or "
                          "--query with a PACS")
    inputs = [qualify(i, args.pacs) if is_pacs_spec(i) else i for i in inputs]
    if is_batch(inputs) or args.workers is not None or args.scheduler is not None:
        if args.pacs and any(i.startswith("@") for i in inputs):
            return run_score_batch(args, qualified_studies(inputs, args.pacs, args.name_pattern))
        return run_score_batch(args, inputs)

    from ..detectors import load_bundle
    from ..fileio import fresh_folder
    from ..outputs import write_scan_result
    from ..pipeline import load_volume, parse_slices
    from ..scoring import score_scan

    refuse_source_folder(args.out, [inputs[0], args.model])
    det = load_bundle(args.model, device=args.device)
    target = push_target(args, inputs) if args.push else None
    if target is not None and det.calibration is None:
        raise ConfigError("--push needs a calibrated model: the PACS gets a mask, a map in normal-quantile units and "
                          "the lesion volume; calibrate it with 'anomalens calibrate'")
    if is_pacs_spec(inputs[0]):
        with terminal_progress("pulling from the PACS") as progress:
            volume = load_volume(inputs[0], gaps=args.gaps, progress=progress)
    else:
        volume = load_volume(inputs[0], gaps=args.gaps)
    idx = parse_slices(args.slices, volume.n_slices)
    with fresh_folder(args.out):  # made before minutes of scoring; taken away again if nothing lands in it
        with terminal_progress("scoring") as progress:
            result = score_scan(det, volume, idx, detail=False, progress=progress)
        paths = write_scan_result(result, args.out)
    data = {"files": {k: str(v) for k, v in paths.items()}, **result.summary()}
    warn(result.warnings)
    lines = score_lines(result, paths)
    if target is not None:
        push_scored(args, result, target, data, lines)
    emit(args, data, "\n".join(lines))
    return 0


def qualified_studies(inputs: list[str], pacs: str, name_pattern: str | None) -> list[Any]:
    """Batch studies with ``--pacs`` written into the pacs: SPECs of list files too (workers see only SPECs)."""
    from ..batch import DEFAULT_NAME_PATTERN, Study, expand_inputs, study_id
    from ..pacs.spec import is_pacs_spec, qualify

    pattern = name_pattern or DEFAULT_NAME_PATTERN
    studies = []
    for s in expand_inputs(inputs, pattern):
        spec = qualify(s.spec, pacs) if is_pacs_spec(s.spec) else s.spec
        studies.append(s if spec == s.spec else Study(study_id(spec, pattern), spec))
    return studies


def push_target(args: argparse.Namespace, inputs: Sequence[str]) -> str:
    """The PACS to push to: ``--pacs``, else the one the pacs: INPUTs name (all the same), else the default."""
    from ..pacs.profiles import get_profile
    from ..pacs.spec import is_pacs_spec, parse_pacs_spec

    if args.pacs:
        return get_profile(args.pacs).name
    named = {parse_pacs_spec(i.split("#")[0]).profile for i in inputs if is_pacs_spec(i)}
    named.discard(None)
    if len(named) > 1:
        raise ConfigError(f"the INPUTs come from several PACS ({', '.join(sorted(n for n in named if n))}); give "
                          "--pacs NAME to say where the results go")
    return get_profile(named.pop() if named else None).name


def push_scored(args: argparse.Namespace, result: Any, target: str, data: dict[str, Any], lines: list[str]) -> None:
    """Build a result's DICOM objects, keep them in OUT/dicom/, then store them on the PACS.

    A refused or failed push still leaves the result and its objects on disk; the summary goes to stdout and the
    error (exit status 2) says how to push them later.
    """
    from ..errors import AnomaLensError
    from ..pacs.client import PacsClient
    from ..pacs.push import build_result_objects, push_result

    with terminal_progress("building DICOM objects") as progress:
        objects = build_result_objects(result, progress=progress)
    folder = Path(args.out) / "dicom"
    written = objects.write(folder)
    data["dicom"] = {role: str(p) for role, p in written.items()}
    try:
        with PacsClient.open(target) as client, terminal_progress("pushing") as progress:
            pushed = push_result(client, objects, progress=progress)
    except KeyboardInterrupt:  # some objects may be on the PACS already: say how to complete it
        raise KeyboardInterrupt(f"the push may be incomplete; 'anomalens pacs push {folder} --pacs {target}' "
                                "completes it") from None
    except AnomaLensError as exc:
        data["pushed"] = None
        emit(args, data, "\n".join(lines))
        from ..pacs.push import KEPT

        message = (f"{str(exc).replace(KEPT, '')}; the result and its DICOM objects are kept in the output folder: "
                   "push them later with "
                   f"'anomalens pacs push {folder} --pacs {target}'")
        try:
            again = type(exc)(message)
        except TypeError:  # an error class that wants more than a message
            again = AnomaLensError(message)
        raise again from exc
    data["pushed"] = pushed.to_dict()
    lines.append(pushed.line())


def query_studies(pacs: str | None, text: str, name_pattern: str | None = None) -> list[Any]:
    """Batch units for ``--query``: every image series of the matching studies, as ``pacs:NAME:STUDY/SERIES``."""
    from ..batch import DEFAULT_NAME_PATTERN, Study, study_id
    from ..errors import EmptyInputError
    from ..pacs.client import PacsClient
    from ..pacs.query import find_studies, image_series, parse_query
    from ..pacs.spec import PacsSpec

    query = parse_query(text)
    with PacsClient.open(pacs) as client, terminal_progress("searching the PACS") as progress:
        studies = find_studies(client, query, progress=progress)
        name = client.profile.name
        specs = [PacsSpec(name, st.uid, se.uid).text() for st in studies
                 for se in image_series(client, st.uid, list(st.series))]
    if not specs:
        raise EmptyInputError(f"no image series on the PACS {name!r} matches {text!r}")
    return [Study(study_id(spec, name_pattern or DEFAULT_NAME_PATTERN), spec) for spec in specs]


def score_lines(result: Any, paths: dict[str, Path]) -> list[str]:
    """What ``score`` tells a person: where the files are, the unit, what was flagged, warnings."""
    lines = [f"wrote {', '.join(p.name for p in paths.values())} to {next(iter(paths.values())).parent}",
             f"model: {result.model.label} ({result.model.fingerprint})",
             f"map unit: {result.unit.description}"]
    n = len(result.indices)
    if result.calibrated:
        flagged = result.flagged_slices
        kind = "SCR" if result.lesion_mask_kind == "scr" else "plain"
        from ..protocol import format_selection  # runs, "10-18, 22": 300 flagged slices made one long line

        lines.append(f"{len(flagged)} of {n} slices flagged ({kind} mask)"
                     + (f": {format_selection(flagged)}" if flagged else ""))
        lines.append(f"lesion volume: {result.lesion_volume_ml:.3f} mL")
    else:
        lines.append(f"{n} slices scored; the model is not calibrated, so nothing is flagged and there is no mask "
                     "(run 'anomalens calibrate' with held-out normal scans)")
    lines.append(f"{result.seconds_per_slice:.3f} s per slice")
    return lines


def run_score_batch(args: argparse.Namespace, inputs: list[Any]) -> int:
    """Batch mode of ``score``: exit 0 when every study has results, 1 (with a summary) when some failed."""
    from ..batch import run_batch

    if args.slices:
        raise ConfigError("--slices applies to one INPUT; in a batch add #slices to each study's SPEC")
    refuse_source_folder(args.out, [*inputs, args.model])
    if args.workers is not None and args.workers < 1:
        raise ConfigError("--workers must be at least 1")
    from ..batch import DEFAULT_NAME_PATTERN

    push = push_target(args, [getattr(i, "spec", i) for i in inputs]) if args.push else None
    try:
        with terminal_progress("scoring studies") as progress:  # a bar on a terminal, lines in a log
            summary = run_batch(args.model, inputs, args.out, workers=args.workers, scheduler=args.scheduler,
                                device=args.device, threads=getattr(args, "threads", None),
                                keep_paths=args.keep_paths, name_pattern=args.name_pattern or DEFAULT_NAME_PATTERN,
                                gaps=args.gaps, push=push, progress=progress)
    except KeyboardInterrupt:
        raise KeyboardInterrupt("the finished studies are kept; the same command again goes on from there") from None
    data = summary.to_dict()
    there = len(summary.already_on_pacs)
    done = (f"scored and pushed ({there} of them already on the PACS)" if there else "scored and pushed") \
        if push else "scored"
    emit(args, data, f"{data['ok']} {done}, {data['skipped']} already done, {len(summary.failed)} failed "
                     f"in {data['seconds']:.1f} s on {data['workers']} worker{'s' * (data['workers'] != 1)}; "
                     f"manifest: {data['manifest']}")
    if summary.failed:
        for sid, err in summary.failed.items():
            print(f"anomalens: failed: {sid}: {err}", file=sys.stderr)
    return summary.exit_code
