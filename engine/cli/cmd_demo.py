"""``anomalens demo``: the headless half of ``make demo`` (the viewer's ``--demo`` shows the same run)."""

from __future__ import annotations

import argparse
from pathlib import Path

from .main import emit
from .progressbar import terminal_progress


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    from ..demo import DEFAULT_DETECTOR

    p = sub.add_parser("demo", parents=[common], help="run the main job on sample:brain1, write demo-output/")
    p.add_argument("--out", type=Path, default=Path("demo-output"), help="output folder (default demo-output)")
    p.add_argument("--detector", default=DEFAULT_DETECTOR)
    p.add_argument("--retrain", action="store_true", help="ignore the cached demo model")
    p.add_argument("--device", default="auto")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ..demo import run_demo

    with terminal_progress(f"demo: {args.detector} on brain1") as progress:
        res = run_demo(args.out, args.detector, args.device, args.retrain, progress=progress)
    summary = {k: res.metrics.get(k) for k in ("pixel_auroc", "pixel_ap", "best_dice", "dice", "dice_scr")}
    emit(args, {"files": {k: str(v) for k, v in res.files.items()}, "metrics": summary, "model": str(res.model)},
         "\n".join([f"demo outputs in {Path(args.out).resolve()}:"]
                   + [f"  {k}: {v}" for k, v in res.files.items()]
                   + [f"  {k}: {'–' if v is None else round(v, 3)}" for k, v in summary.items()]
                   + [f"model: {res.model}"]))
    return 0
