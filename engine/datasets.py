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

Everything is normalised like the model's training data (its intensity config) and, given the model's
working grid, resampled onto it as its training scans were (``engine.preprocess.fov``), with masks on the
same grid; without one, 2-D images of different sizes are padded to square and resized to one size.
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
from .preprocess import IntensityConfig, foreground_mask, normalise_volume, resize_slices
from .preprocess.fov import WorkingGrid, mask_to_working, place, to_working
from .preprocess.resize import pad_to_square
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
class EvalData:
    """Normalised slices with their ground truth, ready for a detector and the metrics.

    ``slices`` are float32 (n, H, W) in [0, 1]; ``masks`` and ``foreground`` are boolean on the same grid;
    ``names`` identify each slice for reports (``z=12`` or ``Ungood/00017``); ``volume`` is the scan for
    sample and pair SPECs (None for folders of 2-D images, whose slices are unrelated pictures).
    """

    slices: np.ndarray
    masks: np.ndarray
    foreground: np.ndarray
    names: list[str]
    source: str
    kind: str
    volume: Volume | None = None
    notes: list[str] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def n_slices(self) -> int:
        return len(self.slices)

    @property
    def is_stack(self) -> bool:
        """Whether neighbouring slices are neighbours in space (3-D SCR makes sense only then)."""
        return self.kind != "folder"

    def fingerprints(self) -> set[str]:
        """Fingerprints this data would have as training data (all slices, or only those with tissue).

        ``gather_normals`` drops slices without tissue before fitting, so both variants are compared
        with a model's training fingerprint to notice "evaluating on the data the model was fitted on".
        """
        from .detectors.base import fingerprint

        out = {fingerprint(self.slices)}
        keep = self.foreground.reshape(self.n_slices, -1).mean(1) > TISSUE_FRACTION
        if keep.any() and not keep.all():
            out.add(fingerprint(self.slices[keep]))
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

def _intensity(intensity: IntensityConfig | dict | None) -> IntensityConfig:
    return intensity if isinstance(intensity, IntensityConfig) else IntensityConfig.from_dict(intensity)


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


def _volume_data(volume: Volume, mask_path: str | Path, selection: str | None, cfg: IntensityConfig,
                 source: str, kind: str, size: int | None, grid: WorkingGrid | None = None) -> EvalData:
    from .io import read_scan

    mask_vol = read_scan(mask_path)
    notes: list[str] = []
    if mask_vol.shape != volume.shape:
        raise ConfigError(
            f"the mask grid {tuple(mask_vol.shape)} (z, y, x) does not match the image {tuple(volume.shape)}; "
            "the mask must be on the image's grid (resample it to the image first)"
        )
    idx = None
    if selection is not None:
        idx = parse_selection(selection, volume.n_slices)
        volume, mask_vol = volume.select_slices(idx), mask_vol.select_slices(idx)
    note = _geometry_note(volume, mask_vol)
    if note:
        notes.append(note)
    mask = mask_vol.array > 0
    slices = normalise_volume(volume, cfg).astype(np.float32)
    if grid is not None:
        p = place(slices.shape[1:], volume.spacing_zyx[1:], grid, foreground_mask(slices))
        slices, mask = to_working(slices, p), mask_to_working(mask, p)
    elif size is not None:
        slices = resize_slices(pad_to_square(slices), size).astype(np.float32)
        mask = resize_slices(pad_to_square(mask.astype(np.float32)), size) > 0.5
    z = np.asarray(idx if idx is not None else range(volume.n_slices), dtype=int)
    return EvalData(slices=slices, masks=mask, foreground=foreground_mask(slices), names=[f"z={k}" for k in z],
                    source=source, kind=kind, volume=volume, notes=notes,
                    info={"slice_indices": z.tolist()})


def _sample_data(spec: EvalSpec, cfg: IntensityConfig, size: int | None, grid: WorkingGrid | None) -> EvalData:
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
    return _volume_data(volume, paths.mask, spec.selection, cfg, source, "sample", size, grid)


def _pair_data(spec: EvalSpec, cfg: IntensityConfig, size: int | None, grid: WorkingGrid | None) -> EvalData:
    from .io.spec import load_spec

    assert spec.mask is not None
    volume = load_spec(spec.image)
    return _volume_data(volume, Path(spec.mask).expanduser(), spec.selection, cfg,
                        f"{spec.image} with mask {spec.mask}", "pair", size, grid)


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


def _folder_data(spec: EvalSpec, cfg: IntensityConfig, size: int | None, grid: WorkingGrid | None,
                 progress: ProgressCallback | None, cancel: CancelToken | None) -> EvalData:
    from .io import read_scan

    root = Path(spec.image)
    items = dataset_items(root)
    if spec.selection is not None:
        items = [items[i] for i in parse_selection(spec.selection, len(items))]
    slices, masks, names = [], [], []
    notes: list[str] = []
    native: set[tuple[int, ...]] = set()
    for i, (name, img_path, mask_path, anomalous) in enumerate(items):
        check(cancel)
        vol = read_scan(img_path)
        img = normalise_volume(vol, cfg).astype(np.float32)
        if mask_path is None:
            mask = np.zeros(img.shape, dtype=bool)
        else:
            mask = _read_mask(mask_path)
            if mask.shape != img.shape:
                raise ConfigError(
                    f"the mask {mask_path.name} is {mask.shape[2]}×{mask.shape[1]} pixels but its image "
                    f"{img_path.name} is {img.shape[2]}×{img.shape[1]}; masks must be on the image grid"
                )
        if anomalous and not mask.any():
            notes.append(f"{name} is in an anomalous folder but its mask is empty")
        native.add(img.shape[1:])
        if grid is not None:
            p = place(img.shape[1:], vol.spacing_zyx[1:], grid, foreground_mask(img))
            img, mask = to_working(img, p), mask_to_working(mask, p)
        for z in range(img.shape[0]):
            slices.append(img[z])
            masks.append(mask[z])
            names.append(name if img.shape[0] == 1 else f"{name}#{z}")
        report(progress, (i + 1) / len(items), f"read {i + 1}/{len(items)} images")
    shapes = {s.shape for s in slices}
    if grid is not None and len(native) > 1:
        notes.append(f"images of {len(native)} different sizes were resampled onto the model's "
                     f"{grid.size}×{grid.size} working grid ({grid.fov_mm:g} mm across)")
    if len(shapes) == 1 and size is None:
        stack, mstack = np.stack(slices), np.stack(masks)
    else:
        target = size or max(max(s) for s in shapes)
        if len(shapes) > 1:
            notes.append(f"images of {len(shapes)} different sizes were padded to square and resized to "
                         f"{target}×{target}")
        stack = np.concatenate([resize_slices(pad_to_square(s[None]), target) for s in slices]).astype(np.float32)
        mstack = np.concatenate([resize_slices(pad_to_square(m[None].astype(np.float32)), target) > 0.5
                                 for m in masks])
    stack = np.clip(stack, 0.0, 1.0).astype(np.float32)
    n_anom = sum(1 for it in items if it[3])
    return EvalData(slices=stack, masks=mstack, foreground=foreground_mask(stack), names=names,
                    source=f"{root} (test split: {len(items) - n_anom} normal, {n_anom} anomalous images)",
                    kind="folder", notes=notes, info={"n_images": len(items), "n_anomalous_images": n_anom})


def load_eval_data(spec: str, intensity: IntensityConfig | dict | None = None, size: int | None = None,
                   progress: ProgressCallback | None = None, cancel: CancelToken | None = None,
                   grid: WorkingGrid | None = None) -> EvalData:
    """Read labelled evaluation data from a DATA SPEC (see the module docstring for the forms).

    Args:
        spec: ``sample:NAME[#slices]``, ``IMAGE:MASK[#slices]`` or a BMAD/MVTec folder.
        intensity: The model's intensity normalisation (``detector.preprocessing["intensity"]``), so the
            data is normalised exactly as the training data was.
        size: Bring every slice to size×size (padded to square first); None keeps a scan's own grid and
            gives 2-D images of different sizes the largest side among them.
        progress: Progress callback (reading images of a folder).
        cancel: Cancel token.
        grid: The model's working grid (``pipeline.model_grid``): every scan and mask is resampled onto it,
            as the model saw its training data, and metrics are computed there. Overrides ``size``.

    Raises:
        ConfigError: an unrecognised SPEC, a mask grid that does not match its image, a missing mask.
        SampleError: a sample without a lesion mask, or one that cannot be fetched.
        ScanReadError: an unreadable image or mask.
    """
    cfg = _intensity(intensity)
    parsed = parse_eval_spec(spec)
    if parsed.kind == "sample":
        data = _sample_data(parsed, cfg, size, grid)
    elif parsed.kind == "pair":
        data = _pair_data(parsed, cfg, size, grid)
    else:
        data = _folder_data(parsed, cfg, size, grid, progress, cancel)
    if not data.masks.any():
        data.notes.append("the ground-truth masks are empty: there is no anomaly to find in this data")
    report(progress, 1.0, f"loaded {data.n_slices} slices")
    return data
