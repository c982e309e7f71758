"""Lorentz fit time on the demo's data, where it goes, and what it scores on brain1 (issue #20's speed goal).

Fits the Lorentz detector exactly as ``anomalens demo`` does (``onsite_data("brain1", healthy=["mni152"])``:
MNI152 plus brain1's far lesion-free fit slices), timing each phase from the detector's own progress
messages, then scores the evaluated slices (never fitted on) and prints pixel AUROC / best Dice of the fused
output and of the heads alone (``output=head``, the paper's classifier), from the same fitted model.

    .venv/bin/python bench/lorentz_fit_speed.py [--set KEY=JSON ...] [--seed 0] [--threads 1] [--protocol demo|issue]

``--protocol issue`` fits on every far lesion-free case slice (bench_brain1.py's issue protocol) instead of
the demo's half. ``--plugin DIR`` times a saved copy of ``plugins/lorentz`` (its ``detector.py`` and
``head.py``, e.g. the tree before a change) instead of the installed one: the before/after of a speed change
with the same command.

Times are wall and CPU seconds: on a shared machine the CPU time of this one-thread process is the
comparable one (wall time grows with whatever else runs).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from anomalens.engine.detectors import create_detector
from anomalens.engine.evaluation import onsite_data
from anomalens.engine.metrics import evaluate


def _load_copy(folder: Path) -> type:
    """The ``LorentzDetector`` class of a saved copy of the plugin, imported inside the real package."""
    import importlib.util
    import sys

    mods = {}
    for stem in ("head", "detector"):
        name = f"anomalens.plugins.lorentz._copy_{stem}"
        src = (folder / f"{stem}.py").read_text().replace("from .head import", "from ._copy_head import")
        spec = importlib.util.spec_from_loader(name, loader=None)
        assert spec is not None
        mod = importlib.util.module_from_spec(spec)
        mod.__package__ = "anomalens.plugins.lorentz"
        sys.modules[name] = mod
        exec(compile(src, str(folder / f"{stem}.py"), "exec"), mod.__dict__)
        mods[stem] = mod
    return mods["detector"].LorentzDetector


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--detector", default="lorentz")
    ap.add_argument("--set", action="append", default=[], help="KEY=JSON detector option")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default, as the product)")
    ap.add_argument("--protocol", choices=("demo", "issue"), default="demo")
    ap.add_argument("--no-score", action="store_true")
    ap.add_argument("--plugin", type=Path, help="folder with an older detector.py and head.py to time instead")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = {k: json.loads(v) for k, v in (s.split("=", 1) for s in args.set)}
    data = onsite_data("brain1", healthy=["mni152"], hold_out=args.protocol == "demo")
    det = (create_detector(args.detector, config=cfg, seed=args.seed) if args.plugin is None
           else _load_copy(args.plugin)(config=cfg, seed=args.seed))
    marks: list[tuple[float, float, str]] = []
    t0, c0 = time.perf_counter(), time.process_time()

    def progress(f: float, msg: str) -> None:
        phase = msg.split(" ")[0] if msg.startswith(("epoch", "synthetic")) else msg
        if not marks or marks[-1][2] != phase:
            marks.append((time.perf_counter() - t0, time.process_time() - c0, phase))

    det.fit(data.normals, progress=progress)
    fit_s, fit_cpu = time.perf_counter() - t0, time.process_time() - c0
    spans: dict[str, list[float]] = {}
    ends = [*((m[0], m[1]) for m in marks[1:]), (fit_s, fit_cpu)]
    for (t, c, phase), (t1, c1) in zip(marks, ends, strict=True):
        acc = spans.setdefault(phase, [0.0, 0.0])
        acc[0] += t1 - t
        acc[1] += c1 - c
    print(f"{args.detector} {json.dumps(cfg)} seed {args.seed}, {torch.get_num_threads()} threads: fit "
          f"{fit_s:.1f} s wall, {fit_cpu:.1f} s CPU on {len(data.normals)} normal slices")
    for phase, (s, c) in sorted(spans.items(), key=lambda kv: -kv[1][0]):
        print(f"  {s:7.1f} s wall {c:7.1f} s CPU  {phase}")
    if hasattr(det, "heads") and det.heads:
        c = [h.curvature for h in det.heads]
        norm = getattr(det.config, "feature_norm", 1.0)
        print(f"  learnt curvature {', '.join(f'{x:.3g}' for x in c)}; √c·r (RMS input norm r = {norm:g}): "
              f"{', '.join(f'{norm * x ** 0.5:.2f}' for x in c)}")
    if args.no_score:
        return
    for output in ("fused", "head") if args.detector == "lorentz" else ("fused",):
        if args.detector == "lorentz":
            if hasattr(det.config, "output"):
                det.config.output = output
            else:  # a tree from before the ``output`` option: fuse_memory=false scored the heads alone
                det.config.fuse_memory = output == "fused"
        maps = det.score(data.eval_slices).heatmaps
        m = evaluate(maps, data.eval_masks, data.eval_foreground, n_boot=0)
        print(f"  {output}: pixel AUROC {m['pixel_auroc']:.4f}, best Dice {m['best_dice']:.3f}, "
              f"pixel AP {m['pixel_ap']:.3f}", flush=True)


if __name__ == "__main__":
    main()
