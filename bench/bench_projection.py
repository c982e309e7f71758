"""Disk-projection speed for the viewer: 5,000 points of 64 and 152 dims against the 0.2 s target.

Run: ``.venv/bin/python bench/bench_projection.py [--threads 1]`` (a few seconds). Prints min and median of
REPEATS runs for Lorentz embeddings (with a hyperplane), Euclidean features and the per-slice mode. On a
machine whose cores are busy with other work, torch's multi-threaded small kernels wait for descheduled
threads (tens of ms for a 64×64 eigh); ``--threads 1`` shows the cost of the work itself.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from anomalens.engine.detectors import Embeddings
from anomalens.engine.geometry import lorentz
from anomalens.engine.projection import project_embeddings

TARGET_S = 0.2
REPEATS = 7


def lorentz_embeddings(n: int, d: int, seed: int = 0) -> Embeddings:
    rng = np.random.default_rng(seed)
    v = torch.from_numpy(rng.standard_normal((n, d)) * 0.4)
    pts = lorentz.expmap0(v, 1.0).to(torch.float32).numpy()
    return Embeddings(points=pts, slice_index=np.repeat(np.arange(n // 100 + 1), 100)[:n],
                      centers=rng.random((n, 2)).astype(np.float32) * 224, manifold="lorentz", curvature=1.0,
                      scores=rng.random(n).astype(np.float32), hyperplane=rng.standard_normal(d).astype(np.float32),
                      hyperplane_offset=0.2)


def euclidean_features(n: int, d: int, seed: int = 0) -> Embeddings:
    rng = np.random.default_rng(seed)
    return Embeddings(points=rng.random((n, d)).astype(np.float32), slice_index=np.repeat(np.arange(n // 100 + 1),
                      100)[:n], centers=np.zeros((n, 2), np.float32), scores=rng.random(n).astype(np.float32))


def timed(fn, repeats: int) -> tuple[float, float]:
    fn()  # warm-up: lazy imports, allocator
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return min(ts), statistics.median(ts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--repeats", type=int, default=REPEATS)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch threads: {torch.get_num_threads()}; n = {args.n}; target {TARGET_S:.2f} s")
    for d in (64, 152):
        cases = {
            "lorentz + hyperplane": (lorentz_embeddings(args.n, d), False),
            "euclidean features": (euclidean_features(args.n, d), False),
            "lorentz, per slice": (lorentz_embeddings(args.n, d), True),
        }
        for name, (emb, per_slice) in cases.items():
            best, med = timed(lambda e=emb, p=per_slice: project_embeddings(e, per_slice=p), args.repeats)
            flag = "ok" if best <= TARGET_S else "SLOW"
            print(f"d={d:4d}  {name:22s} min {best * 1000:7.1f} ms  median {med * 1000:7.1f} ms  {flag}")


if __name__ == "__main__":
    main()
