"""Does the Poincaré dock explain a Lorentz model on sample:brain1? (issue #19's Done-when, measured.)

Fits the Lorentz detector (default config, seed 0) the way the demo does (``onsite_data("brain1",
healthy=["mni152"])``: MNI152 plus brain1's lesion-free slices, calibrated on held-out lesion-free ones),
scores the evaluated slices through ``engine.scoring.score_scan`` (so the embeddings are the ones the viewer
gets), keeps them per slice as the viewer does (``app.embeddings.EmbeddingStore``: each patch valued by the
result's map at its centre), and projects them with the dock's own entry point (``engine.projection.
disk_views``, centred on the patches below the calibrated threshold, as the dock does with no slice marked
normal). It prints:

* which patches the normal centroid was taken from, and the disk-radius quantiles of the points, before
  (the detector's origin at the centre) and after centring;
* the share of reference-lesion patches (expert mask at the patch centre) on the anomalous side of the
  hyperplane, against the share of the other patches there: exactly (in the model's 64 dimensions, where
  the isometry keeps every side) and as drawn on the disk;
* the flagged patches (centre inside the result's lesion mask) and how many of them are across;
* how many reference-lesion patches the result itself flags (its mask, its map over the threshold): the
  share across the hyperplane is read against that;
* the same shares for every head's own hyperplane (the detector averages several heads; the disk draws the
  head whose hyperplane holds the most of the result's flagged patches, ``engine.projection.explaining_view``).

The fit takes ~4 minutes on a 2-core CPU (one torch thread), too slow for CI. ``--model DIR`` keeps the
fitted bundle: a later run with the same DIR loads it and only scores and measures.

    nice -n 10 .venv/bin/python bench/check_poincare_brain1.py [--model DIR] [--seed 0] [--fit-only]
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import numpy as np
import torch


def fit_or_load(model: Path | None, seed: int, data) -> object:
    """The calibrated Lorentz model: loaded from ``model`` when it holds a bundle, else fitted (and saved)."""
    from anomalens.engine.detectors import create_detector, load_bundle
    from anomalens.engine.pipeline import model_grid
    from anomalens.engine.recalibration import calibrate_detector

    if model is not None and (model / "bundle.json").is_file():
        det = load_bundle(model)
        if model_grid(det) == data.grid:
            print(f"loaded the fitted model from {model}")
            return det
    t0 = time.perf_counter()
    det = create_detector("lorentz", seed=seed)
    det.preprocessing = {"grid": data.grid.to_dict()}
    det.fit(data.normals)
    calibrate_detector(det, data.calibration)
    print(f"fitted and calibrated the Lorentz model in {time.perf_counter() - t0:.0f} s "
          f"({len(data.normals)} normal slices, {len(data.calibration)} for calibration)")
    if model is not None:
        if model.exists():
            shutil.rmtree(model)
        det.save(model)
    return det


def _q(values: np.ndarray) -> str:
    qs = np.quantile(values, [0.05, 0.25, 0.5, 0.75, 0.95]) if len(values) else np.full(5, np.nan)
    return " / ".join(f"{v:.3f}" for v in qs)


def _share(mask: np.ndarray, across: np.ndarray) -> str:
    n = int(mask.sum())
    k = int((mask & across).sum())
    return f"{k}/{n} ({100 * k / n:.1f} %)" if n else "0/0"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=None, help="bundle folder to reuse or to save the fit in")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fit-only", action="store_true", help="stop after fitting (and saving) the model")
    args = ap.parse_args()
    torch.set_num_threads(1)

    from anomalens.engine.evaluation import onsite_data
    from anomalens.engine.io import read_scan
    from anomalens.engine.samples import fetch_sample
    from anomalens.engine.scoring import score_scan

    data = onsite_data("brain1", healthy=["mni152"])
    det = fit_or_load(args.model, args.seed, data)
    if args.fit_only:
        return
    idx = data.split.evaluate
    t0 = time.perf_counter()
    result = score_scan(det, data.volume, idx)
    print(f"scored {len(idx)} evaluated slices in {time.perf_counter() - t0:.1f} s; curvature "
          f"{det.head.curvature:.4g}, threshold {result.threshold:.3f} ({result.unit.value})")
    paths = fetch_sample("brain1")
    assert paths.mask is not None
    measure(result, read_scan(paths.mask).array > 0)


def measure(result, reference: np.ndarray) -> None:
    """Project as the dock does (``disk_views``, same normal reference) and print the numbers."""
    from anomalens.app.embeddings import EmbeddingStore, values_at_patches
    from anomalens.engine.projection import disk_views, hyperplane_side, project_embeddings, reference_selection

    store = EmbeddingStore()
    store.add_result(result)
    emb = store.combined()
    assert emb is not None
    z, centers = np.asarray(emb.slice_index, dtype=int), np.asarray(emb.centers)
    shape = result.map.shape
    lesion_mask = result.lesion_mask if result.lesion_mask is not None else np.zeros(shape, bool)
    flagged = values_at_patches(lesion_mask, z, centers) > 0
    plain = values_at_patches(result.mask if result.mask is not None else np.zeros(shape, bool), z, centers) > 0
    ref = values_at_patches(reference, z, centers) > 0
    normal, how = reference_selection(np.asarray(emb.scores), threshold=result.threshold, slice_index=z)
    old = np.hypot(*project_embeddings(emb).xy.astype(np.float64).T)
    t0 = time.perf_counter()
    proj, per_slice = disk_views(emb, normal, how, flagged=flagged)  # as the dock: its mask picks the head
    print(f"projected {len(emb.points)} patches ({len(np.unique(z))} slices) in {time.perf_counter() - t0:.1f} s")
    print(f"normal reference for the centroid: {how}")
    print(f"note: {proj.note}")
    r = np.hypot(*proj.xy.astype(np.float64).T)
    print("disk radius quantiles 5/25/50/75/95 %:")
    print(f"  uncentred (before #19), all points: {_q(old)}")
    print(f"  centred, all points:                {_q(r)}")
    print(f"  centred, normal-reference points:   {_q(r[normal])}")
    print(f"  centred, reference-lesion points:   {_q(r[ref])}")
    print(f"  centred, slice means:               {_q(np.hypot(*per_slice.xy.astype(np.float64).T))}")
    print(f"share of points beyond half the disk's radius: {100 * np.mean(r > 0.5):.1f} % "
          f"(display scale ×{proj.scale:.3g})")
    if proj.side is None or proj.drawn_side is None:
        print("no hyperplane drawn: no sides to report")
        return
    across, drawn = proj.side > 0, proj.drawn_side > 0
    print("on the anomalous side of the hyperplane: exact (model's dimensions) | as drawn on the disk")
    print(f"  reference-lesion patches:           {_share(ref, across)} | {_share(ref, drawn)}")
    print(f"  other patches:                      {_share(~ref, across)} | {_share(~ref, drawn)}")
    print(f"  flagged patches (result's mask, {result.lesion_mask_kind}): {_share(flagged, across)} | "
          f"{_share(flagged, drawn)}")
    print(f"  plain-threshold mask patches:       {_share(plain, across)} | {_share(plain, drawn)}")
    print(f"  slice means:                        {_share(np.ones(len(per_slice), bool), per_slice.side > 0)}")
    above = np.asarray(emb.scores) > result.threshold if result.threshold is not None else np.zeros(len(ref), bool)
    print("what bounds the lesion's share: the result itself (no hyperplane involved)")
    print(f"  reference-lesion patches in the result's mask: {_share(ref, flagged)}; "
          f"heatmap above the calibrated threshold at their centre: {_share(ref, above)}")
    print(f"points drawn on the other side than they are: {int((across != drawn).sum())} of {len(across)}")
    print(f"drawn: {proj.hyperplane_of or 'the only hyperplane'}")
    views = [emb, *emb.alternatives]
    if len(views) > 1:
        print("every head's own hyperplane (the disk draws the one above; the heatmap averages them all):")
        for h, view in enumerate(views):
            side = hyperplane_side(view)
            if side is not None:
                print(f"  head {h + 1}: reference-lesion patches {_share(ref, side > 0)}, other patches "
                      f"{_share(~ref, side > 0)}, flagged patches {_share(flagged, side > 0)}")


if __name__ == "__main__":
    main()
