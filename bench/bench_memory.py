"""Peak memory of ``anomalens score`` on long CT volumes (512² slices), against the budget of issue #18.

    .venv/bin/python bench/bench_memory.py [--slices 300,600] [--threads 2] [--keep DIR]

A synthetic CT (air, a body ellipse of soft tissue, bone ring, a few brighter blobs; int16 HU, written as
uncompressed NIfTI) is scored by a calibrated PatchCore (the product's default configuration, trained and
calibrated on a few slices of another synthetic CT) through the real CLI in a fresh process; the peak
resident memory of that process (``ru_maxrss``) is printed beside the goal: 2 × the volume's float32 size
+ 1.5 GiB. Reading, scoring, SCR and writing the files all count.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

GIB = 1024 ** 3


def synthetic_ct(n: int, size: int = 512, seed: int = 0) -> np.ndarray:
    """(n, size, size) int16 HU: air around an ellipse of tissue with a bone rim and a few blobs."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    r = np.sqrt(((yy - size / 2) / (0.42 * size)) ** 2 + ((xx - size / 2) / (0.36 * size)) ** 2)
    base = np.where(r < 1.0, 40.0, -1000.0).astype(np.float32)
    base[(r > 0.93) & (r < 1.0)] = 700.0
    out = np.empty((n, size, size), np.int16)
    for z in range(n):
        sl = base + rng.normal(0, 12, (size, size)).astype(np.float32)
        if z % 7 == 3:
            cy, cx = rng.integers(size // 3, 2 * size // 3, 2)
            sl[(yy - cy) ** 2 + (xx - cx) ** 2 < 15 ** 2] += 60.0
        out[z] = np.clip(sl, -1024, 3000).astype(np.int16)
    return out


def write_nifti(path: Path, array: np.ndarray) -> Path:
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(array)
    img.SetSpacing((0.7, 0.7, 1.25))
    sitk.WriteImage(img, str(path), useCompression=False)
    img = None
    return path


def run(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Seconds and peak RSS (GiB) of one CLI run in a fresh child process (its own rusage, from wait4)."""
    with tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "anomalens.engine.cli", *argv], env=env,
                                stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            err.seek(0)
            raise SystemExit(f"{' '.join(argv[:2])} failed: {err.read().decode(errors='replace').strip()[-500:]}")
    return seconds, usage.ru_maxrss * 1024 / GIB


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slices", default="300,600")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--keep", type=Path, default=None, help="keep the scans, model and outputs here")
    args = ap.parse_args()
    sizes = [int(s) for s in args.slices.split(",")]
    work = args.keep or Path(tempfile.mkdtemp(prefix="anomalens-bench-memory-"))
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "ANOMALENS_THREADS": str(args.threads), "ANOMALENS_PROGRESS": "0",
           "ANOMALENS_MAX_SCAN_BYTES": str(8 * GIB)}
    normals = write_nifti(work / "normals.nii", synthetic_ct(6, seed=1))
    held_out = write_nifti(work / "held_out.nii", synthetic_ct(6, seed=2))
    model, calibrated = work / "model", work / "calibrated"
    if not calibrated.exists():
        run(["train", "--detector", "patchcore", "--normals", str(normals), "--out", str(model)], env)
        run(["calibrate", "--model", str(model), "--normals", str(held_out), "--out", str(calibrated)], env)
    print(f"{'slices':>6} {'volume (float32)':>17} {'goal':>9} {'peak RSS':>9} {'ratio':>6} {'seconds':>8}")
    for n in sorted(sizes):
        scan = write_nifti(work / f"ct{n}.nii", synthetic_ct(n, seed=3))
        seconds, peak = run(["score", "--model", str(calibrated), str(scan), "--out", str(work / f"out{n}")], env)
        vol = n * 512 * 512 * 4 / GIB
        goal = 2 * vol + 1.5
        print(f"{n:>6} {vol:>14.2f} GiB {goal:>5.2f} GiB {peak:>5.2f} GiB {peak / goal:>6.2f} {seconds:>8.1f}",
              flush=True)
        scan.unlink()
    if args.keep is None:
        import shutil

        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
