"""Throughput of backbone feature extraction (slices/s at 224², batch 16), in one run.

    .venv/bin/python bench/bench_backbones.py [--threads 2] [--batch 16] [--device cpu] [--reps 7]

lite0 uses its real (pip-installed) weights; wrn50 uses random weights, which cost exactly the same
time, to show the scale of the papers' backbone. Reported: median and best over ``--reps`` timed
batches after one warm-up batch, for ``extract`` alone and for ``prepare`` + ``extract`` from
one-channel 256² slices (what a detector does per slice).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from anomalens.engine.backbones import Backbone, build_backbone, load_backbone


def _rate(fn, n: int, reps: int, sync) -> tuple[float, float]:
    fn()
    sync()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return n / statistics.median(times), n / min(times)


def bench(bb: Backbone, batch: int, reps: int) -> None:
    dev = bb.device
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    gen = torch.Generator().manual_seed(0)
    x = bb.prepare(torch.rand(batch, 1, bb.input_size, bb.input_size, generator=gen))
    raw = torch.rand(batch, 1, 256, 256, generator=gen)
    med, best = _rate(lambda: bb.extract(x), batch, reps, sync)
    med2, best2 = _rate(lambda: bb.extract(bb.prepare(raw)), batch, reps, sync)
    print(f"{bb.name:6s} {dev.type:4s} batch {batch:3d} @ {bb.input_size}²: extract {med:7.1f} slices/s "
          f"(best {best:7.1f}); prepare+extract from 256² {med2:7.1f} (best {best2:7.1f})", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--skip-wrn50", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)
    bench(load_backbone("lite0", device=args.device), args.batch, args.reps)
    if not args.skip_wrn50:
        bench(build_backbone("wrn50", device=args.device), args.batch, max(2, args.reps // 3))


if __name__ == "__main__":
    main()
