"""``anomalens self-test``: prove that an installation can do the main job, offline, in seconds.

A frozen bundle (``installer/``) can look complete and still miss a data file, a package's metadata (our
detectors and napari's manifest are found through entry points) or the backbone weights; those faults
only show when a scan is scored. So the self-test runs the real path end to end on a scan that ships with
the installation (the MNI152 template inside nilearn's data): read, train the default detector small,
save and reload the bundle, score, write ``heatmap.nii.gz``, read it back and check it. It uses the same
functions as the CLI (``score_scan``, ``write_scan_result``), so it also works (and is unit tested) from a
normal install.
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from .progress import CancelToken, ProgressCallback, check, report

#: The bundled scan: axial slices of the MNI152 template with brain in them (shipped in nilearn's data).
DEFAULT_SAMPLE = "sample:mni152#70-81"
#: How many of the sample's slices train the model; all of them are scored.
N_TRAIN = 8
#: Small enough to take seconds on one CPU core, large enough to exercise every stage of the detector; other
#: detectors use their ``test_config()``.
SMALL_CONFIGS: dict[str, dict[str, Any]] = {
    "patchcore": {"input_size": 96, "max_bank": 512, "smoothing_sigma": 1.0},
}

T = TypeVar("T")


class SelfTestFailed(RuntimeError):
    """A self-test step failed: the installation is broken (a product defect, not a user error)."""

    def __init__(self, step: str, cause: BaseException) -> None:
        super().__init__(f"self-test step '{step}' failed: {type(cause).__name__}: {cause}")
        self.step = step


@dataclass
class SelfTestReport:
    """What the self-test did: one ``(step, seconds, detail)`` row per step, and the heatmap it wrote."""

    steps: list[tuple[str, float, str]] = field(default_factory=list)
    heatmap: Path | None = None
    shape: tuple[int, ...] = ()
    kept: bool = False

    @property
    def seconds(self) -> float:
        return sum(s for _, s, _ in self.steps)

    def lines(self) -> list[str]:
        """The human-readable report, one line per step and a verdict."""
        rows = [f"  ok  {name:<10} {sec:6.2f} s  {detail}" for name, sec, detail in self.steps]
        where = str(self.heatmap) if self.kept else f"{self.heatmap} (temporary, removed)"
        return ["AnomaLens self-test", *rows, f"heatmap: {where}",
                f"self-test passed in {self.seconds:.1f} s"]


def installation() -> str:
    """Which installation runs: a frozen bundle (with its folder) or a Python environment."""
    from . import __version__

    if getattr(sys, "frozen", False):
        return f"anomalens {__version__}, frozen bundle in {Path(sys.executable).parent}"
    return f"anomalens {__version__}, Python {sys.version.split()[0]} ({sys.prefix})"


def run_self_test(out: str | Path | None = None, sample: str = DEFAULT_SAMPLE, detector: str | None = None,
                  config: dict[str, Any] | None = None, device: str = "cpu", n_train: int = N_TRAIN,
                  progress: ProgressCallback | None = None, cancel: CancelToken | None = None) -> SelfTestReport:
    """Train, save, reload and score on a bundled scan; write and verify ``heatmap.nii.gz``.

    Args:
        out: folder for the heatmap, scores and model (kept); None uses a temporary folder, removed after.
        sample: SPEC of the scan; the first ``n_train`` of its slices train the model, all are scored.
        detector: registered detector; None means the default detector of the main job (``demo``).
        config: detector options; None uses a small configuration so the test takes seconds.
        device: torch device for the detector.
        n_train: how many slices train the model.
        progress: ``progress(fraction, message)`` callback.
        cancel: cancel token.

    Raises:
        SelfTestFailed: a step failed; ``step`` names it, the message carries the cause.
    """
    from . import pipeline
    from .demo import DEFAULT_DETECTOR
    from .io.spec import split_spec
    from .outputs import write_scan_result
    from .scoring import score_scan

    name = detector or DEFAULT_DETECTOR
    cfg = dict(_small_config(name) if config is None else config)
    rep = SelfTestReport(kept=out is not None)
    with _workdir(out) as work:
        rep.steps.append(("install", 0.0, installation()))
        _step(rep, "detectors", lambda: _check_detectors(name), lambda v: f"{len(v)}: {', '.join(v)}")
        check(cancel)
        report(progress, 0.05, "reading the bundled scan")
        volume = _step(rep, "read", lambda: _at_least_two_slices(pipeline.load_volume(sample)),
                       lambda v: f"{sample}: {v.shape} voxels, {v.modality}")
        check(cancel)
        report(progress, 0.15, f"training {name}")
        source, _ = split_spec(sample)
        train_spec = f"{source}#{_first(n_train, volume)}"
        det = _step(rep, "train", lambda: pipeline.train(name, [train_spec], config=cfg, device=device, cancel=cancel),
                    lambda d: f"{name} on {train_spec}")
        report(progress, 0.55, "saving and reloading the model")
        det = _step(rep, "bundle", lambda: _roundtrip(det, work / "model", device),
                    lambda d: f"saved and reloaded {work / 'model'}")
        check(cancel)
        report(progress, 0.65, "scoring")
        scored = _step(rep, "score", lambda: score_scan(det, volume, detail=False, cancel=cancel),
                       lambda r: f"{len(r.slices)} slices, {r.seconds_per_slice:.3f} s/slice, {r.unit.short}")
        files = _step(rep, "write", lambda: write_scan_result(scored, work),
                      lambda f: ", ".join(p.name for p in f.values()))
        report(progress, 0.9, "checking the heatmap")
        rep.shape = _step(rep, "verify", lambda: _verify(files["heatmap"], volume),
                          lambda s: f"shape {s} matches the scan, all values finite, not constant")
        rep.heatmap = files["heatmap"]
    report(progress, 1.0, "self-test passed")
    return rep


def _small_config(name: str) -> dict[str, Any]:
    """The listed small configuration, else the detector's own ``test_config`` (its seconds-long setting)."""
    if name in SMALL_CONFIGS:
        return SMALL_CONFIGS[name]
    from .detectors import get_detector_class

    try:
        return get_detector_class(name).test_config()
    except Exception:  # unknown or broken: the "detectors" step reports it with a clear message
        return {}


@contextmanager
def _workdir(out: str | Path | None) -> Iterator[Path]:
    if out is not None:
        path = Path(out).expanduser()
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="anomalens-selftest-") as tmp:
        yield Path(tmp)


def _step(rep: SelfTestReport, step: str, work: Callable[[], T], describe: Callable[[T], str]) -> T:
    """Run one step, time it and record it; any failure becomes ``SelfTestFailed`` naming the step."""
    from .errors import Cancelled

    t0 = time.perf_counter()
    try:
        value = work()
        detail = describe(value)
    except Cancelled:
        raise
    except Exception as exc:
        raise SelfTestFailed(step, exc) from exc
    rep.steps.append((step, time.perf_counter() - t0, detail))
    return value


def _check_detectors(name: str) -> list[str]:
    """Every registered detector must load (a frozen bundle that lost entry-point metadata finds none)."""
    from .detectors import available_detectors, get_detector_class

    names = available_detectors()
    if name not in names:
        raise RuntimeError(f"detector {name!r} is not registered (found: {', '.join(names) or 'none'}); "
                           "the anomalens.detectors entry points are missing from this installation")
    for n in names:
        get_detector_class(n)
    return names


def _at_least_two_slices(volume: Any) -> Any:
    """The scan must have slices to train on and one more to score."""
    if volume.n_slices < 2:
        raise RuntimeError(f"the scan has {volume.n_slices} slice(s); the self-test needs at least 2")
    return volume


def _first(n: int, volume: Any) -> str:
    """A ``#`` selection naming the first ``n`` slices the sample's selection picked (original indices)."""
    picked = list(volume.metadata.get("selected_slices", range(volume.n_slices)))
    chosen = picked[:max(1, min(n, len(picked) - 1))]
    return ",".join(str(int(i)) for i in chosen)


def _roundtrip(det: Any, path: Path, device: str) -> Any:
    """Save as a bundle and load it back: safetensors and the registry must both work in the bundle."""
    import shutil

    from .detectors import load_bundle

    if path.exists():
        shutil.rmtree(path)
    det.save(path)
    return load_bundle(path, device=device)


def _verify(path: Path, volume: Any) -> tuple[int, ...]:
    """Read the written heatmap back from disk: the scan's shape, finite, and not one constant value."""
    from .io import read_scan

    heat = read_scan(path)
    data = np.asarray(heat.array)
    if tuple(data.shape) != tuple(volume.shape):
        raise RuntimeError(f"heatmap shape {data.shape} differs from the scan's {volume.shape}")
    if not np.isfinite(data).all():
        raise RuntimeError(f"heatmap has {int((~np.isfinite(data)).sum())} non-finite values")
    if float(data.max()) <= float(data.min()):
        raise RuntimeError("heatmap is constant: the detector scored nothing")
    if not np.allclose(heat.spacing, volume.spacing, rtol=1e-4):
        raise RuntimeError(f"heatmap spacing {heat.spacing} differs from the scan's {volume.spacing}")
    return tuple(int(s) for s in data.shape)
