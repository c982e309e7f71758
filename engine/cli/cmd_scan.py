"""``anomalens info``: what a scan is, without patient identifiers."""

from __future__ import annotations

import argparse

from .main import emit


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("info", parents=[common], help="describe a scan (shape, spacing, orientation, modality)")
    p.add_argument("path", help="file, DICOM folder or sample:NAME (optionally #slices)")
    p.add_argument("--series", default=None, help="SeriesInstanceUID to pick when a folder holds several")
    p.add_argument("--gaps", choices=("fill", "refuse", "stack"), default="fill",
                   help="a DICOM series with missing slices: fill them with empty slices at their true positions "
                        "(default), refuse it, or stack the slices as if none were missing")
    p.add_argument("--keep-paths", action="store_true",
                   help="print the scan's path as it is (default: a <path:…> token, since folder and file names "
                        "often name patients)")
    p.add_argument("--max-bytes", type=int, default=None,
                   help="memory budget for the voxels (default 4 GiB, or ANOMALENS_MAX_SCAN_BYTES)")
    p.set_defaults(handler=run_info)


def run_info(args: argparse.Namespace) -> int:
    from ..errors import MultipleSeriesError
    from ..io import describe
    from ..pipeline import load_volume

    try:
        volume = load_volume(args.path, series_uid=args.series, max_bytes=args.max_bytes,
                             gaps=args.gaps)
    except MultipleSeriesError as exc:
        if args.json:
            emit(args, {"error": str(exc), "series": exc.series})
            return 2
        raise
    info = describe(volume)
    if not args.keep_paths and info.get("source"):
        from ..logredact import token

        info["source"] = token(str(info["source"]))
    lines = [f"{k}: {v}" for k, v in info.items()]
    emit(args, info, "\n".join(lines))
    return 0
