"""Batch scoring throughput (studies per minute) with 1 and 2 local dask workers, measured in one run.

Run: ``.venv/bin/python bench/bench_batch.py [--studies 8] [--slices 16] [--size 128]`` (about 1-2 min on
2 cores). Each configuration starts its own LocalCluster of process workers (1 thread each), warms every
worker up (imports, model load) on a throw-away study, then scores the same phantom studies into a fresh
folder. Two numbers per configuration: steady throughput (warm workers) and end to end (cluster start
included, what a user waits for). The ratio 2 workers / 1 worker is the scale-out on this machine; it can
only approach 2 when two cores are free.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.phantoms when run as a script


def make_data(root: Path, n_studies: int, n_slices: int, size: int) -> tuple[Path, list[str], str]:
    from anomalens.engine.detectors import get_detector_class
    from anomalens.engine.pipeline import train
    from tests.phantoms import phantom_slices
    from tests.test_datasets import write_volume

    normals, _ = phantom_slices(8, size, seed=1)
    det = train("patchcore", normals, config=get_detector_class("patchcore").test_config(), device="cpu")
    model = det.save(root / "model")
    specs = []
    for i in range(n_studies + 1):
        vol, _ = phantom_slices(n_slices, size, seed=100 + i, lesion=True)
        specs.append(str(write_volume(root / "studies" / f"s{i:02d}.nii.gz", (vol * 1000).astype(np.float32))))
    return Path(model), specs[:-1], specs[-1]


def measure(model: Path, specs: list[str], warm_spec: str, workers: int, root: Path) -> dict[str, float]:
    from distributed import Client, LocalCluster

    from anomalens.engine.batch import Study, run_batch, study_id

    t0 = time.perf_counter()
    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0",
                           host="127.0.0.1", silence_logs=40)
    client = Client(cluster)
    try:
        # One warm-up study per worker, pinned, so every process has imported torch and loaded the model.
        from anomalens.engine.batch import score_study

        warm = Study(study_id(warm_spec), warm_spec)
        futs = [client.submit(score_study, warm, str(model), str(root / f"warm{w}-{i}"), "cpu", pure=False,
                              workers=[w]) for i, w in enumerate(client.scheduler_info()["workers"])]
        client.gather(futs)
        t1 = time.perf_counter()
        out = root / f"out-{workers}"
        summary = run_batch(model, specs, out, client=client, device="cpu")
        t2 = time.perf_counter()
        assert not summary.failed and len(summary.ok) == len(specs), summary
    finally:
        client.close()
        cluster.close()
    return {"steady_per_min": 60 * len(specs) / (t2 - t1), "end_to_end_per_min": 60 * len(specs) / (t2 - t0),
            "steady_s": t2 - t1, "end_to_end_s": t2 - t0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--studies", type=int, default=8)
    ap.add_argument("--slices", type=int, default=16)
    ap.add_argument("--size", type=int, default=128)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench_batch_"))
    try:
        model, specs, warm = make_data(root, args.studies, args.slices, args.size)
        print(f"{args.studies} studies of {args.slices}x{args.size}x{args.size}, patchcore test config, "
              f"{os.cpu_count()} CPUs")
        res = {w: measure(model, specs, warm, w, root) for w in (1, 2)}
        for w, r in res.items():
            print(f"{w} worker(s): {r['steady_per_min']:.1f} studies/min warm ({r['steady_s']:.2f} s), "
                  f"{r['end_to_end_per_min']:.1f} studies/min with cluster start ({r['end_to_end_s']:.2f} s)")
        print(f"ratio 2/1 workers: {res[2]['steady_per_min'] / res[1]['steady_per_min']:.2f}x warm, "
              f"{res[2]['end_to_end_per_min'] / res[1]['end_to_end_per_min']:.2f}x end to end")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
