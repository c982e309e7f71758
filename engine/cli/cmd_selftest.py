"""``anomalens self-test`` (also ``anomalens --self-test``): does this installation work, offline?

Exit status 0 when every step passed, 1 when one failed: a failure here is a broken installation, not a
user error, so it does not use the user-error status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .main import emit


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    from ..device import DEVICE_CHOICES
    from ..selftest import DEFAULT_SAMPLE

    p = sub.add_parser("self-test", parents=[common],
                       help="check this installation offline: train, score and write a heatmap on a bundled scan")
    p.add_argument("--out", type=Path, default=None,
                   help="keep the heatmap, scores and model here (default: a temporary folder, removed)")
    p.add_argument("--sample", default=DEFAULT_SAMPLE, metavar="SPEC",
                   help=f"scan to use (default {DEFAULT_SAMPLE}, shipped with the installation)")
    p.add_argument("--detector", default=None, help="detector to train (default: the main job's detector)")
    p.add_argument("--device", default="cpu", choices=DEVICE_CHOICES)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ..selftest import SelfTestFailed, run_self_test
    from .progressbar import terminal_progress

    try:
        with terminal_progress("self-test") as progress:
            rep = run_self_test(args.out, sample=args.sample, detector=args.detector, device=args.device,
                                progress=progress)
    except SelfTestFailed as exc:
        if args.json:
            emit(args, {"ok": False, "step": exc.step, "error": str(exc)})
        if isinstance(exc.__cause__, OSError):  # a full disk or a read-only folder is the machine's, not the install's
            from ..fileio import describe_os_error

            print(f"anomalens: error: the self-test could not write its files at step {exc.step!r}: "
                  f"{describe_os_error(exc.__cause__)}; the installation itself was not tested to the end",
                  file=sys.stderr)
            return 2
        print(f"anomalens: {exc}", file=sys.stderr)
        print("anomalens: self-test FAILED: this installation is incomplete or damaged", file=sys.stderr)
        return 1
    data = {"ok": True, "seconds": round(rep.seconds, 2), "heatmap": str(rep.heatmap), "kept": rep.kept,
            "shape": list(rep.shape),
            "steps": [{"step": n, "seconds": round(s, 3), "detail": d} for n, s, d in rep.steps]}
    emit(args, data, "\n".join(rep.lines()))
    return 0
