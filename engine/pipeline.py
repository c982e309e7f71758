"""The steps before a detector: reading scans, normalising them, placing them on a model's working grid, training.

Data flows one way: spec → ``Volume`` → normalised slices on the working grid → detector → ``AnomalyResult``;
``engine.scoring.score_scan`` takes it from there to the product's one result, ``engine.evaluation`` measures
it. The CLI, the viewer's workers, batch scoring and the tests all call these same functions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .detectors import AnomalyResult, Detector, create_detector
from .errors import ConfigError, InvalidVolumeError
from .preprocess import IntensityConfig, foreground_mask, normalise_volume
from .preprocess.fov import Placement, WorkingGrid, grid_for, place, to_working
from .progress import CancelToken, ProgressCallback, check, report
from .volume import Volume

if TYPE_CHECKING:
    from .domain import TrainingDomain


@dataclass
class PreparedScan:
    """A scan normalised for a model: slices in [0, 1] on the scan's grid, and its tissue mask."""

    volume: Volume
    slices: np.ndarray
    foreground: np.ndarray
    indices: np.ndarray

    @property
    def n_slices(self) -> int:
        return len(self.slices)



def load_volume(spec: str, **read_opts: Any) -> Volume:
    """Read a scan from a SPEC (file, DICOM folder, ``sample:NAME``, optional ``#slices`` suffix)."""
    from .io.spec import load_spec

    return load_spec(spec, **read_opts)


def prepare(volume: Volume, intensity: IntensityConfig | dict | None = None) -> PreparedScan:
    """Normalise a volume's intensities and compute its foreground."""
    cfg = intensity if isinstance(intensity, IntensityConfig) else IntensityConfig.from_dict(intensity)
    slices = normalise_volume(volume, cfg)
    indices = np.asarray(volume.metadata.get("selected_slices", range(volume.n_slices)), dtype=int)
    return PreparedScan(volume=volume, slices=slices, foreground=foreground_mask(slices), indices=indices)


def model_grid(detector: Detector) -> WorkingGrid | None:
    """The working grid a model was trained on (None: saved before grids existed, pads to a square)."""
    return WorkingGrid.from_dict((detector.preprocessing or {}).get("grid"))


def scans_grid(scans: Sequence[PreparedScan], size: int | None = None) -> WorkingGrid:
    """The working grid a set of training scans defines (their largest body extent; ``grid_for``)."""
    from .preprocess.fov import body_extent_mm

    return grid_for([body_extent_mm(p.foreground, p.volume.spacing_zyx[1:]) for p in scans],
                    [p.volume.spacing_zyx[1:] for p in scans], size)


def scan_placement(prepared: PreparedScan, grid: WorkingGrid) -> Placement:
    """Where a scan lies on a working grid, from its whole tissue: every slice and batch is placed alike."""
    return place(prepared.slices.shape[1:], prepared.volume.spacing_zyx[1:], grid, prepared.foreground)


def working_slices(prepared: PreparedScan, indices: Sequence[int] | np.ndarray,
                   grid: WorkingGrid | None) -> tuple[np.ndarray, Placement | None]:
    """Slices of a prepared scan as a model sees them, and where they lie (None: padded to a square)."""
    from .preprocess.resize import pad_to_square

    sl = prepared.slices[np.asarray(indices, dtype=int)]
    if grid is None:
        return pad_to_square(sl), None
    p = scan_placement(prepared, grid)
    return to_working(sl, p), p


def gather_normals(specs: Sequence[str], intensity: IntensityConfig | dict | None = None,
                   size: int | None = None, progress: ProgressCallback | None = None,
                   cancel: CancelToken | None = None, info: dict | None = None,
                   grid: WorkingGrid | str | None = "auto") -> np.ndarray:
    """Normalised normal slices from several SPECs on one working grid, in one orientation.

    Different scans have different grids and pixel sizes; detectors need one stack with anatomy at one
    scale. Each scan is turned to the first scan's orientation (flips only) and resampled onto a working
    grid of fixed millimetres (``engine.preprocess.fov``): ``grid="auto"`` takes it from these scans
    (their largest body extent; ``size`` pixels a side, else their finest spacing) and reports it as
    ``info["grid"]``; a ``WorkingGrid`` (a trained model's) is used as given; None pads each scan to a
    square and resizes it to ``size`` (or the first scan's side), as models without a grid expect. Empty
    slices (no tissue) are dropped since they teach nothing about anatomy.
    """
    from .preprocess import resize_slices
    from .preprocess.orient import orientation_of, reorient
    from .preprocess.resize import pad_to_square

    if not specs:
        raise ConfigError("no normal scans given")
    scans: list[tuple[PreparedScan, np.ndarray]] = []
    orientation = None
    for i, spec in enumerate(specs):
        check(cancel)
        volume = load_volume(spec)
        if orientation is None:
            orientation = orientation_of(volume)
            if info is not None:
                info["modality"] = volume.modality
                info["orientation"] = orientation
        elif volume.n_slices > 1:
            volume = reorient(volume, orientation)
        prepared = prepare(volume, intensity)
        keep = np.flatnonzero(prepared.foreground.reshape(prepared.n_slices, -1).mean(1) > 0.02)
        if keep.size:
            scans.append((prepared, keep))
        report(progress, (i + 1) / len(specs), f"read {keep.size} slices")
    if not scans:
        raise InvalidVolumeError("none of the normal scans has slices with tissue in them")
    if info is not None:  # what the model will know it was trained on (engine.domain: warnings at scoring)
        from .domain import TRAINING_KEY, describe_scans

        info[TRAINING_KEY] = describe_scans([p.volume for p, _ in scans], [p.foreground for p, _ in scans]).to_dict()
    if isinstance(grid, str):
        grid = scans_grid([p for p, _ in scans], size)
    stacks = []
    for prepared, keep in scans:
        if grid is None:
            slices = pad_to_square(prepared.slices[keep])
            size = size or slices.shape[1]
            stacks.append(resize_slices(slices, (size, size)) if slices.shape[1] != size else slices)
        else:
            stacks.append(working_slices(prepared, keep, grid)[0])
    if info is not None and grid is not None:
        info["grid"] = grid.to_dict()
    return np.concatenate(stacks).astype(np.float32)


def train(detector: str, normals: Sequence[str] | np.ndarray, config: dict | None = None, device: str = "auto",
          seed: int = 0, intensity: dict | None = None, progress: ProgressCallback | None = None,
          cancel: CancelToken | None = None, grid: WorkingGrid | None = None,
          domain: TrainingDomain | None = None) -> Detector:
    """Create and fit a detector on normal scans (SPECs) or an already prepared slice stack.

    SPECs are brought onto ``grid``, or one taken from them; a prepared stack carries the ``grid`` it was
    made on (None: padded squares, and the model scores scans the same way) and the ``domain`` of the scans
    it came from (``engine.domain.describe_scans``), so the model can warn about scans unlike them.
    """
    det = create_detector(detector, config=config, device=device, seed=seed)
    icfg = IntensityConfig.from_dict(intensity)
    info: dict = {}
    if isinstance(normals, np.ndarray):
        stack = normals
        grid_d = None if grid is None else grid.to_dict()
        if domain is not None:
            from .domain import TRAINING_KEY

            info[TRAINING_KEY] = domain.to_dict()
            info["modality"] = domain.modalities[0] if domain.modalities else "OT"
    else:
        stack = gather_normals(list(normals), icfg, progress=lambda f, m: report(progress, 0.1 * f, m),
                               cancel=cancel, info=info, grid="auto" if grid is None else grid)
        grid_d = info.pop("grid")
    det.preprocessing = {"intensity": icfg.to_dict(), **({"grid": grid_d} if grid_d else {})}
    det.fit(stack, progress=lambda f, m: report(progress, 0.1 + 0.9 * f, m), cancel=cancel)
    det.training.update(info)  # modality, domain, orientation: score_scan warns about scans unlike these
    return det


def parse_slices(selection: str | None, n: int) -> np.ndarray:
    """Parse ``3-10,14`` into sorted unique indices within [0, n)."""
    from .io.spec import parse_selection

    if not selection:
        return np.arange(n)
    return np.asarray(parse_selection(selection, n), dtype=int)


def merge_results(parts: Sequence[AnomalyResult]) -> AnomalyResult:
    """Concatenate batch results (embeddings get their slice indices offset)."""
    if len(parts) == 1:
        return parts[0]
    from .detectors import Embeddings

    feats = None if any(p.features is None for p in parts) else np.concatenate([p.features for p in parts])
    emb = None
    if all(p.embeddings is not None for p in parts):
        offsets = np.cumsum([0] + [p.n_slices for p in parts[:-1]])
        es = [p.embeddings for p in parts]
        e0 = es[0]
        emb = Embeddings(
            points=np.concatenate([e.points for e in es]),
            slice_index=np.concatenate([e.slice_index + o for e, o in zip(es, offsets, strict=True)]),
            centers=np.concatenate([e.centers for e in es]),
            manifold=e0.manifold, curvature=e0.curvature,
            scores=None if any(e.scores is None for e in es) else np.concatenate([e.scores for e in es]),
            hyperplane=e0.hyperplane, hyperplane_offset=e0.hyperplane_offset,
        )
    return AnomalyResult(heatmaps=np.concatenate([p.heatmaps for p in parts]),
                         scores=np.concatenate([p.scores for p in parts]), embeddings=emb, features=feats,
                         normalised=parts[0].normalised, info=dict(parts[0].info))
