"""``make bench``: every benchmark in one go, each in its own process, with a summary at the end.

Speed benches run by default (minutes each); the accuracy benches on sample:brain1 fit detectors over
several seeds and take hours on a 2-core CPU, so they run with ``--accuracy``. The viewer benches need a
display (``make bench`` wraps this in xvfb-run when it can) and are skipped without one. Exploration tools
(``bench_lorentz_seeds.py``, ``sweep_lorentz_heads.py``) and the GPU-machine checks
(``check_wrn50_vs_torchvision.py``, ``gpu_check.py``) are not benchmarks and are left out. A failing bench
does not stop the others; the exit status says whether all passed.

    .venv/bin/python bench/run_all.py [--accuracy] [--only NAME[,NAME]] [--list]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Bench:
    name: str
    argv: tuple[str, ...]
    accuracy: bool = False
    display: bool = False


BENCHES = (
    Bench("backbones", ("bench_backbones.py",)),
    Bench("scr", ("bench_scr.py",)),
    Bench("projection", ("bench_projection.py",)),
    Bench("lorentz-speed", ("bench_lorentz_speed.py", "--threads", "1")),
    Bench("batch", ("bench_batch.py",)),
    Bench("memory", ("bench_memory.py",)),
    Bench("d2ue-latency", ("bench_d2ue.py", "latency")),
    Bench("invdetect-latency", ("bench_invdetect.py", "latency")),
    Bench("viewer", ("bench_viewer.py",), display=True),
    Bench("responsiveness", ("bench_responsiveness.py",), display=True),
    Bench("reading-room", ("bench_reading_room.py",), display=True),
    Bench("brain1", ("bench_brain1.py", "--protocol", "issue"), accuracy=True),
    Bench("lorentz-fewshot", ("bench_lorentz_fewshot.py",), accuracy=True),
    Bench("curved", ("bench_curved.py",), accuracy=True),
    Bench("d2ue-ablation", ("bench_d2ue.py", "ablation"), accuracy=True),
    # 1,000 U-Net steps: the default 10,000 take ~6,000 s here, and brain1's AUROC falls with steps (README).
    Bench("invdetect-onsite", ("bench_invdetect.py", "onsite", "--train-steps", "1000"), accuracy=True),
    Bench("scr-calibration", ("bench_scr_calibration.py",), accuracy=True),
    Bench("poincare-brain1", ("check_poincare_brain1.py",), accuracy=True),
    Bench("curved-variants", ("curved_variants.py",), accuracy=True),
    Bench("lorentz-fit", ("lorentz_fit_speed.py", "--threads", "1"), accuracy=True),
    Bench("scr-survival", ("bench_scr_survival.py",), accuracy=True),
    Bench("invdetect-paper", ("invdetect_paper.py", "phantom"), accuracy=True),
    Bench("d2ue-rar-sweep", ("d2ue_rar_sweep.py",), accuracy=True),
    Bench("dev-table", ("dev_table.py", "--threads", "1"), accuracy=True),
    Bench("scr-false-positives", ("scr_false_positives.py",), accuracy=True),
)


def selected(accuracy: bool, only: set[str] | None) -> list[Bench]:
    """The benches to run: by name when ``only`` is given, else the speed ones (plus accuracy on request)."""
    if only is not None:
        unknown = only - {b.name for b in BENCHES}
        if unknown:
            raise SystemExit(f"unknown bench: {', '.join(sorted(unknown))} (see --list)")
        return [b for b in BENCHES if b.name in only]
    return [b for b in BENCHES if accuracy or not b.accuracy]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--accuracy", action="store_true", help="also the brain1 accuracy benches (hours)")
    ap.add_argument("--only", default=None, help="comma-separated bench names")
    ap.add_argument("--list", action="store_true", help="list the benches and exit")
    args = ap.parse_args()
    if args.list:
        for b in BENCHES:
            kind = "accuracy" if b.accuracy else "speed"
            print(f"{b.name:20s} {kind:9s} {'display ' if b.display else ''}{' '.join(b.argv)}")
        return 0
    only = None if args.only is None else {s.strip() for s in args.only.split(",") if s.strip()}
    results = []
    for b in selected(args.accuracy, only):
        if b.display and not os.environ.get("DISPLAY"):
            results.append((b.name, "skipped (no display)", 0.0))
            continue
        print(f"\n=== {b.name}: {' '.join(b.argv)}", flush=True)
        t0 = time.perf_counter()
        rc = subprocess.call([sys.executable, str(HERE / b.argv[0]), *b.argv[1:]])
        results.append((b.name, "ok" if rc == 0 else f"failed (exit {rc})", time.perf_counter() - t0))
    print("\n=== summary")
    for name, status, secs in results:
        print(f"{name:20s} {status:22s} {secs:7.0f} s")
    return 1 if any(s.startswith("failed") for _, s, _ in results) else 0


if __name__ == "__main__":
    sys.exit(main())
