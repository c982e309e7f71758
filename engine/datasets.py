r"""Labelled evaluation data from one DATA SPEC: a sample with a mask, an IMAGE:MASK pair, or a folder.

``anomalens eval --data SPEC`` accepts three forms:

* ``sample:NAME`` (optionally ``#slices``): a sample case with an expert lesion mask (``brain1``, ...).
* ``IMAGE:MASK`` (optionally ``#slices`` at the end, or after IMAGE): a scan and its lesion label map on
  the same grid, each side a file or (for IMAGE) a DICOM folder, e.g. ``brain.nrrd:lesion.nrrd#10-40``.
  Splitting rule, since paths may contain ``:`` (Windows drives, odd file names): the SPEC is split at
  the LAST ``:`` whose right-hand side names an existing path and whose left-hand side also does;
  failing that, at the last ``:`` whose right-hand side exists (the image side then fails with a clear
  "does not exist"). A drive colon is never a split point: a ``:`` preceded by a single letter that
  starts the SPEC or follows another ``:``, and followed by ``\`` or ``/``. So
  ``C:\scans\ct.nii:C:\scans\mask.nii`` splits between the two files.
* A folder in the BMAD / MVTec AD layout, evaluated on its ``test`` split::

      ROOT/train/good/...                     (ignored here: what a model is fitted on)
      ROOT/test/good/[img/]*.png              normal test images (masks optional, missing = all zero)
      ROOT/test/<Ungood|defect>/img/*.png     BMAD: masks in the sibling label/ folder, same stem
      ROOT/test/<defect>/*.png                MVTec: masks in ROOT/ground_truth/<defect>/<stem>_mask.png

  An anomalous image without a mask is refused (pixel metrics would count its lesion as normal tissue).
  ``#slices`` selects images by their index in the sorted list.

Scans are kept as read, each with its ground truth on its own grid: ``anomalens eval`` scores them
through ``engine.scoring.score_scan``, exactly as ``anomalens score`` would, and measures the result it
returns against the truth (``engine.evaluation.evaluate_model``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ConfigError, SampleError
from .io.spec import SAMPLE_PREFIX, parse_selection, split_spec
from .preprocess import IntensityConfig
from .preprocess.fov import WorkingGrid
from .progress import CancelToken, ProgressCallback, check, report
from .volume import Volume

#: Category folder names of normal test images (BMAD uses ``good``, some datasets ``normal``).
GOOD_NAMES = ("good", "normal")
#: Files taken as images inside a dataset folder (anything else, e.g. a README, is ignored).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".nii", ".nii.gz", ".nrrd", ".mha", ".mhd")
#: Share of a slice's pixels that must be tissue for it to count as a training slice (as ``gather_normals``).
TISSUE_FRACTION = 0.02

_DRIVE_RIGHT = re.compile(r"^[\\/]")


@dataclass
class EvalSpec:
    """A parsed DATA SPEC: ``kind`` is ``"sample"``, ``"pair"`` or ``"folder"``."""

    kind: str
    image: str
    mask: str | None = None
    selection: str | None = None


@dataclass
class EvalScan:
    """One scan (or 2-D image, a one-slice volume) and its ground truth on the scan's own grid."""

    volume: Volume
    truth: np.ndarray
    names: list[str]

    def __post_init__(self) -> None:
        self.truth = np.asarray(self.truth, dtype=bool)
        if self.truth.shape != self.volume.shape:
            raise ConfigError(f"the mask grid {self.truth.shape} (z, y, x) does not match the image "
                              f"{self.volume.shape}; the mask must be on the image's grid")
        if len(self.names) != self.volume.n_slices:
            raise ValueError("one name per slice is required")


@dataclass
class EvalData:
    """Labelled scans: what ``anomalens eval`` scores and measures.

    ``names`` identify each slice for reports (``z=12`` or ``Ungood/00017``); ``kind`` is the SPEC form.
    """

    scans: list[EvalScan]
    source: str
    kind: str
    notes: list[str] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def n_slices(self) -> int:
        return sum(s.volume.n_slices for s in self.scans)

    @property
    def names(self) -> list[str]:
        return [n for s in self.scans for n in s.names]

    @property
    def volume(self) -> Volume | None:
        """The scan of a sample or pair SPEC (None for folders of unrelated 2-D pictures)."""
        return self.scans[0].volume if self.kind != "folder" and self.scans else None

    @property
    def is_stack(self) -> bool:
        """Whether neighbouring slices are neighbours in space (3-D SCR makes sense only then)."""
        return self.kind != "folder"

    def fingerprints(self, intensity: IntensityConfig | dict | None = None,
                     grid: WorkingGrid | None = None) -> set[str]:
        """Fingerprints this data would have as a model's training data, to notice "evaluating on it".

        Computed as ``pipeline.gather_normals`` would make the training stack: normalised with the model's
        intensity config, on its working grid, with all slices or only those with tissue.
        """
        from .detectors.base import fingerprint
        from .pipeline import prepare, working_slices

        stacks, tissue = [], []
        for scan in self.scans:
            prepared = prepare(scan.volume, intensity)
            stack, _ = working_slices(prepared, np.arange(prepared.n_slices), grid)
            stacks.append(stack)
            tissue.append(prepared.foreground.reshape(prepared.n_slices, -1).mean(1) > TISSUE_FRACTION)
        if len({s.shape[1:] for s in stacks}) != 1:
            return set()
        all_slices, keep = np.concatenate(stacks), np.concatenate(tissue)
        out = {fingerprint(all_slices)}
        if keep.any() and not keep.all():
            out.add(fingerprint(all_slices[keep]))
        return out


# -- parsing ---------------------------------------------------------------------------------------

def _path_exists(part: str) -> bool:
    if part.startswith(SAMPLE_PREFIX):
        return bool(part[len(SAMPLE_PREFIX):].split("#")[0].strip())
    source, _ = split_spec(part)
    return bool(source) and Path(source).expanduser().exists()


def _is_drive_colon(left: str, right: str) -> bool:
    """``X:`` followed by a separator, at the start or right after the pair's own ``:``."""
    if not _DRIVE_RIGHT.match(right) or not left or not left[-1].isalpha():
        return False
    return len(left) == 1 or left[-2] == ":"


def split_pair(spec: str, exists: Callable[[str], bool] | None = None) -> tuple[str, str] | None:
    """Split ``IMAGE:MASK`` by the rule in the module docstring; None when no split names an existing mask.

    Args:
        spec: The DATA SPEC.
        exists: Predicate for "this part names an existing path" (injectable for tests of Windows paths).
    """
    exists = exists or _path_exists
    fallback: tuple[str, str] | None = None
    for i in range(len(spec) - 1, 0, -1):
        if spec[i] != ":":
            continue
        left, right = spec[:i], spec[i + 1:]
        if not left.strip() or not right.strip() or _is_drive_colon(left, right):
            continue
        if left == SAMPLE_PREFIX[:-1]:
            continue
        if not exists(right):
            continue
        if exists(left):
            return left, right
        if fallback is None:
            fallback = (left, right)
    return fallback


def _looks_like_dataset(folder: Path) -> bool:
    return (folder / "test").is_dir()


def parse_eval_spec(spec: str) -> EvalSpec:
    """Recognise which of the three DATA SPEC forms ``spec`` is (no pixel is read).

    Raises:
        ConfigError: the SPEC matches none of the forms; the message lists them.
    """
    spec = str(spec).strip()
    if not spec:
        raise ConfigError("no evaluation data given; use sample:NAME, IMAGE:MASK or a BMAD/MVTec folder")
    if spec.startswith(SAMPLE_PREFIX):
        pair = split_pair(spec)
        if pair is not None and not pair[1].startswith(SAMPLE_PREFIX):
            return _pair_spec(*pair)
        source, selection = split_spec(spec)
        return EvalSpec("sample", source, None, selection)
    source, selection = split_spec(spec)
    folder = Path(source).expanduser()
    if folder.is_dir() and _looks_like_dataset(folder):
        return EvalSpec("folder", str(folder), None, selection)
    pair = split_pair(spec)
    if pair is not None:
        return _pair_spec(*pair)
    if folder.is_dir():
        raise ConfigError(
            f"{folder} has no test/ subfolder, so it is not a BMAD/MVTec dataset; for a scan folder give "
            "its lesion mask as FOLDER:MASK"
        )
    if Path(source).expanduser().is_file():
        raise ConfigError(
            f"{source} has no lesion mask: give the mask as IMAGE:MASK (e.g. brain.nrrd:lesion.nrrd), "
            "a sample with a mask (sample:brain1) or a BMAD/MVTec dataset folder"
        )
    raise ConfigError(
        f"cannot find evaluation data {spec!r}: use sample:NAME, IMAGE:MASK (both files must exist) or a "
        "folder in the BMAD/MVTec layout (with test/ inside)"
    )


def _pair_spec(left: str, right: str) -> EvalSpec:
    image, sel_left = split_spec(left)
    mask, sel_right = split_spec(right)
    if sel_left is not None and sel_right is not None and sel_left != sel_right:
        raise ConfigError(f"two different slice selections in {left}:{right}; write one, at the end")
    return EvalSpec("pair", image, mask, sel_left if sel_left is not None else sel_right)


# -- loading ---------------------------------------------------------------------------------------

def _read_mask(path: str | Path) -> np.ndarray:
    """A label map as boolean: any label counts; an 8-bit picture mask counts where it is over half white."""
    from .io import read_scan

    arr = read_scan(path).array
    top = float(arr.max()) if arr.size else 0.0
    if top > 1.0 and Path(str(path)).suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"):
        return arr > top / 2.0
    return arr > 0


def _geometry_note(image: Volume, mask_vol: Volume) -> str | None:
    sp = np.asarray(image.spacing)
    if not np.allclose(sp, mask_vol.spacing, rtol=1e-3, atol=1e-4):
        return (f"the mask's voxel spacing {tuple(round(s, 4) for s in mask_vol.spacing)} differs from the "
                f"image's {tuple(round(s, 4) for s in image.spacing)}; check that they belong together")
    if np.max(np.abs(np.asarray(image.origin) - mask_vol.origin) / sp) > 0.5:
        return "the mask's origin differs from the image's by more than half a voxel; check the mask"
    return None


def _volume_data(volume: Volume, mask_path: str | Path, selection: str | None, source: str, kind: str) -> EvalData:
    from .io import read_scan

    mask_vol = read_scan(mask_path)
    notes: list[str] = []
    gaps = [int(k) for k in volume.metadata.get("gap_slices") or ()]
    if gaps and mask_vol.shape == (volume.n_slices - len(gaps), *volume.shape[1:]):
        # The mask was drawn on the series as stored (missing slices and all): its slices are the real ones,
        # in order; the empty fillers the reader put at the missing positions get empty mask slices.
        real = [k for k in range(volume.n_slices) if k not in set(gaps)]
        full = np.zeros(volume.shape, dtype=mask_vol.array.dtype)
        full[real] = mask_vol.array
        mask_vol = volume.with_array(full)
        notes.append(f"the scan misses {len(gaps)} slice(s), filled with empty slices at their true positions; "
                     "the mask's slices were taken as the scan's real ones, in order")
    if mask_vol.shape != volume.shape:
        raise ConfigError(
            f"the mask grid {tuple(mask_vol.shape)} (z, y, x) does not match the image {tuple(volume.shape)}; "
            "the mask must be on the image's grid (resample it to the image first)"
        )
    z = np.arange(volume.n_slices)
    if selection is not None:
        z = np.asarray(parse_selection(selection, volume.n_slices), dtype=int)
        volume, mask_vol = volume.select_slices(z), mask_vol.select_slices(z)
    note = _geometry_note(volume, mask_vol)
    if note:
        notes.append(note)
    scan = EvalScan(volume=volume, truth=mask_vol.array > 0, names=[f"z={k}" for k in z])
    return EvalData(scans=[scan], source=source, kind=kind, notes=notes, info={"slice_indices": z.tolist()})


def _sample_data(spec: EvalSpec) -> EvalData:
    from .io.spec import load_spec
    from .samples import fetch_sample, sample_info

    name = spec.image[len(SAMPLE_PREFIX):].strip()
    info = sample_info(name)
    if not info.has_mask:
        raise SampleError(
            f"sample {name!r} is a healthy scan without a lesion mask, so nothing can be evaluated on it; "
            "use a sample with a mask (anomalens samples list) or IMAGE:MASK"
        )
    paths = fetch_sample(name)
    assert paths.mask is not None
    volume = load_spec(spec.image)
    source = spec.image + (f"#{spec.selection}" if spec.selection else "")
    return _volume_data(volume, paths.mask, spec.selection, source, "sample")


def _pair_data(spec: EvalSpec) -> EvalData:
    from .io.spec import load_spec

    assert spec.mask is not None
    volume = load_spec(spec.image)
    return _volume_data(volume, Path(spec.mask).expanduser(), spec.selection,
                        f"{spec.image} with mask {spec.mask}", "pair")


def _is_image(path: Path) -> bool:
    name = path.name.lower()
    return path.is_file() and not name.startswith(".") and name.endswith(IMAGE_SUFFIXES)


def _stem(path: Path) -> str:
    name = path.name
    for suffix in sorted(IMAGE_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _find_mask(stem: str, folders: list[Path]) -> Path | None:
    for folder in folders:
        if not folder.is_dir():
            continue
        for candidate in (f"{stem}_mask", stem):
            hits = sorted(p for p in folder.iterdir() if _is_image(p) and _stem(p) == candidate)
            if hits:
                return hits[0]
    return None


def dataset_items(root: str | Path, split: str = "test") -> list[tuple[str, Path, Path | None, bool]]:
    """``(name, image, mask or None, anomalous)`` for every image of a BMAD/MVTec split, sorted.

    Raises:
        ConfigError: no split folder, no images, or an anomalous image without a mask.
    """
    root = Path(root)
    split_dir = root / split
    if not split_dir.is_dir():
        raise ConfigError(f"{root} has no {split}/ folder; expected the BMAD or MVTec AD layout")
    items: list[tuple[str, Path, Path | None, bool]] = []
    for cat in sorted(p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        good = cat.name.lower() in GOOD_NAMES
        if (cat / "img").is_dir():
            images = sorted(p for p in (cat / "img").iterdir() if _is_image(p))
            mask_dirs = [cat / "label", cat / "mask", cat / "masks"]
        else:
            images = sorted(p for p in cat.iterdir() if _is_image(p))
            mask_dirs = [root / "ground_truth" / cat.name]
        for img in images:
            mask = _find_mask(_stem(img), mask_dirs)
            if mask is None and not good:
                raise ConfigError(
                    f"the anomalous image {img} has no mask: expected {mask_dirs[0] / (_stem(img) + '.png')} or "
                    f"{_stem(img)}_mask.png there; only normal ('good') images may come without a mask"
                )
            items.append((f"{cat.name}/{_stem(img)}", img, mask, not good))
    if not items:
        raise ConfigError(f"no images found under {split_dir}")
    return items


def _folder_data(spec: EvalSpec, progress: ProgressCallback | None, cancel: CancelToken | None) -> EvalData:
    from .io import read_scan

    root = Path(spec.image)
    items = dataset_items(root)
    if spec.selection is not None:
        items = [items[i] for i in parse_selection(spec.selection, len(items))]
    scans: list[EvalScan] = []
    notes: list[str] = []
    for i, (name, img_path, mask_path, anomalous) in enumerate(items):
        check(cancel)
        vol = read_scan(img_path)
        if mask_path is None:
            mask = np.zeros(vol.shape, dtype=bool)
        else:
            mask = _read_mask(mask_path)
            if mask.shape != vol.shape:
                raise ConfigError(
                    f"the mask {mask_path.name} is {mask.shape[2]}×{mask.shape[1]} pixels but its image "
                    f"{img_path.name} is {vol.shape[2]}×{vol.shape[1]}; masks must be on the image grid"
                )
        if anomalous and not mask.any():
            notes.append(f"{name} is in an anomalous folder but its mask is empty")
        names = [name] if vol.n_slices == 1 else [f"{name}#{z}" for z in range(vol.n_slices)]
        scans.append(EvalScan(volume=vol, truth=mask, names=names))
        report(progress, (i + 1) / len(items), f"read {i + 1}/{len(items)} images")
    sizes = {s.volume.shape[1:] for s in scans}
    if len(sizes) > 1:
        notes.append(f"images of {len(sizes)} different sizes: each is scored on its own grid, and the maps are "
                     "padded with background to one size for the metrics")
    n_anom = sum(1 for it in items if it[3])
    return EvalData(scans=scans, source=f"{root} (test split: {len(items) - n_anom} normal, {n_anom} anomalous images)",
                    kind="folder", notes=notes, info={"n_images": len(items), "n_anomalous_images": n_anom})


def load_eval_data(spec: str, progress: ProgressCallback | None = None,
                   cancel: CancelToken | None = None) -> EvalData:
    """Read labelled evaluation data from a DATA SPEC (see the module docstring for the forms).

    Args:
        spec: ``sample:NAME[#slices]``, ``IMAGE:MASK[#slices]`` or a BMAD/MVTec folder.
        progress: Progress callback (reading images of a folder).
        cancel: Cancel token.

    Raises:
        ConfigError: an unrecognised SPEC, a mask grid that does not match its image, a missing mask.
        SampleError: a sample without a lesion mask, or one that cannot be fetched.
        ScanReadError: an unreadable image or mask.
    """
    from .logredact import remember

    parsed = parse_eval_spec(spec)
    for part in (parsed.image, parsed.mask):  # logs and reports name them by token only
        remember(part)
    if parsed.kind == "sample":
        data = _sample_data(parsed)
    elif parsed.kind == "pair":
        data = _pair_data(parsed)
    else:
        data = _folder_data(parsed, progress, cancel)
    if not any(s.truth.any() for s in data.scans):
        data.notes.append("the ground-truth masks are empty: there is no anomaly to find in this data")
    report(progress, 1.0, f"loaded {data.n_slices} slices")
    return data
