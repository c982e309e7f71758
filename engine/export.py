"""Exports of a scored scan: heatmap and mask as NIfTI, the mask as DICOM SEG, a PNG snapshot, slice scores.

Every file appears atomically (complete or not at all). Results go on the scan's own geometry: NIfTI via
``io.write_like``; DICOM SEG references the very images it was computed from, so a PACS viewer overlays
it on the source series. The SEG copies the source's patient and study modules, as DICOM requires for the
overlay to find its series; AnomaLens itself keeps no patient identifiers (``Volume.metadata`` has none),
so the source headers are read again from ``Volume.source`` at export time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ConfigError, InvalidVolumeError
from .fileio import atomic_path
from .progress import CancelToken, ProgressCallback, check, report
from .volume import Volume

SEGMENT_LABEL = "Anomaly (AnomaLens)"
#: The Manufacturer of every DICOM object AnomaLens writes (``pacs push`` stores nothing else).
MANUFACTURER = "AnomaLens"
#: Type 2 attributes (may be empty, must be present) of the patient and study modules that the SEG copies
#: from its source; anonymised files often lack them and highdicom then refuses.
_TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
          "ReferringPhysicianName", "StudyID", "AccessionNumber")
#: Distance (mm) within which a file's slice position must match the scan's geometry.
POSITION_TOLERANCE_MM = 0.05


def export_heatmap(volume: Volume, heatmap: np.ndarray, path: str | Path, description: str | None = None) -> Path:
    """The heatmap (float32, the scan's grid) as NIfTI/NRRD/MHA by suffix; ``description`` (its unit) in the header."""
    from .io import write_like

    return write_like(volume, np.asarray(heatmap, dtype=np.float32), path, description=description)


def export_mask(volume: Volume, mask: np.ndarray, path: str | Path, description: str = "") -> Path:
    """The binary mask (uint8 0/1, the scan's grid) as NIfTI/NRRD/MHA by suffix; ``description`` in the header."""
    from .io import write_like

    return write_like(volume, np.asarray(mask).astype(bool), path, description=description)


def save_png(rgb: np.ndarray, path: str | Path) -> Path:
    """A snapshot (``(H, W, 3|4)`` uint8 or floats in [0, 1], or ``(H, W)`` grey) as PNG."""
    from PIL import Image

    arr = np.asarray(rgb)
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)) or 0 in arr.shape:
        raise InvalidVolumeError(f"a snapshot must be (H, W), (H, W, 3) or (H, W, 4), got shape {arr.shape}")
    if arr.dtype != np.uint8:
        arr = np.clip(np.nan_to_num(arr.astype(np.float64)) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    target = Path(path)
    with atomic_path(target, suffix=".png") as tmp:
        Image.fromarray(arr).save(tmp, format="PNG")
    return target


# --------------------------------------------------------------------------------------------- DICOM SEG


def _source_frames(volume: Volume) -> list[Any]:
    """The source series' frames on the volume's z grid, re-read from ``volume.source``.

    Index k is the frame the reader put at slice k; a slice the reader inserted for a missing one (a gap
    filler) has None: it has no source image and gets no SEG frame.
    """
    from .io.base import resolve_max_bytes
    from .io.dicom import layout, order_frames, read_header, scan_folder

    src = Path(volume.source) if volume.source is not None else None
    if src is None or not src.exists():
        raise ConfigError(f"the DICOM files of this scan are no longer at {src}; DICOM SEG needs them")
    uid = str(volume.metadata.get("series_uid") or volume.metadata.get("SeriesInstanceUID") or "")
    budget = resolve_max_bytes(None)
    headers = scan_folder(src, budget).headers if src.is_dir() else [read_header(src, budget)]
    headers = [h for h in headers if h.uid == uid]
    if not headers:
        raise ConfigError(f"the series of this scan is no longer in {src}; DICOM SEG needs its files")
    frames, _, dist = order_frames([f for h in headers for f in h.frames], [])
    if not volume.metadata.get("gap_slices"):
        return frames
    grid = layout(dist, [], "fill")
    by_slot = dict(zip(grid.slots, frames, strict=True))
    return [by_slot.get(k) for k in range(grid.n)]


def _check_geometry(volume: Volume, frames: list[Any], picked: list[int]) -> None:
    first = frames[picked[0]]
    if first.orientation is not None:
        row, col = first.orientation[:3], first.orientation[3:]
        d = np.asarray(volume.direction).reshape(3, 3)
        if not (np.allclose(d[:, 0], row, atol=1e-4) and np.allclose(d[:, 1], col, atol=1e-4)):
            raise ConfigError("the scan was reoriented after reading; export DICOM SEG from the scan as read "
                              "(or export the mask as NIfTI)")
    if first.position is not None and \
            np.abs(np.asarray(volume.origin) - first.position).max() > POSITION_TOLERANCE_MM:
        raise ConfigError("the DICOM files at the scan's source no longer match the scan (first slice position "
                          "differs); reload the scan and export again")
    if (first.rows, first.cols) != volume.shape[1:]:
        raise ConfigError(f"the DICOM images are {first.rows}×{first.cols} but the scan is "
                          f"{volume.shape[1]}×{volume.shape[2]}; reload the scan and export again")


@dataclass
class SourceImages:
    """The source series' images behind a volume's slices, in the arrangement highdicom expects.

    DICOM derived objects (SEG, Parametric Map, SR) reference the very images a result was computed on;
    ``rows`` are the volume's z indices that have one (a gap filler has none), ``datasets`` the images to
    hand to highdicom: one single-frame image per row, or one multi-frame image whose frame ``frames[j]``
    holds row ``rows[j]``.
    """

    rows: list[int]
    datasets: list[Any]
    frames: list[int] | None
    n_frames: int

    @property
    def multiframe(self) -> bool:
        return self.frames is not None

    def arrange(self, array: np.ndarray, dtype: Any) -> np.ndarray:
        """An array on the volume's grid ((z, y, x) or (z, y, x, channels)) as highdicom's pixel array."""
        arr = np.asarray(array)
        if self.frames is None:
            return arr[self.rows].astype(dtype)
        out = np.zeros((self.n_frames, *arr.shape[1:]), dtype=dtype)
        out[self.frames] = arr[self.rows]
        return out

    def image_of(self, z: int) -> tuple[Any, int | None]:
        """The source dataset of volume slice ``z`` and its frame number (1-based; None: a single-frame image)."""
        j = self.rows.index(int(z))
        if self.frames is None:
            return self.datasets[j], None
        return self.datasets[0], self.frames[j] + 1


def source_images(volume: Volume, what: str = "DICOM SEG", instead: str = "export the mask as NIfTI instead",
                  cancel: CancelToken | None = None) -> SourceImages:
    """The source images of a volume read from DICOM, re-read from ``volume.source`` and checked against it.

    ``what`` names the object being made and ``instead`` the way out, in the errors' messages.

    Raises:
        ConfigError: the scan did not come from DICOM, its files are gone or changed, or it was reoriented.
    """
    from .io.dicom import probe

    if str(volume.metadata.get("format", "")).upper() != "DICOM":
        fmt = volume.metadata.get("format") or (Path(volume.source).suffix if volume.source else "memory")
        raise ConfigError(f"{what} needs a scan read from DICOM; this one came from {fmt}: {instead}")
    frames = _source_frames(volume)
    check(cancel)
    sel = volume.metadata.get("selected_slices")
    picked = [int(k) for k in sel] if sel else list(range(volume.n_slices))
    if max(picked) >= len(frames) or (not sel and len(frames) != volume.n_slices):
        raise ConfigError(f"the source series now has {len(frames)} images but the scan had "
                          f"{max(picked) + 1 if sel else volume.n_slices}; reload the scan and export again")
    rows = [i for i, k in enumerate(picked) if frames[k] is not None]  # gap fillers have no source image
    picked = [picked[i] for i in rows]
    if not picked:
        raise ConfigError("the selected slices are all empty fillers of missing slices; there is nothing to export")
    _check_geometry(volume, frames, picked)

    datasets: dict[Path, Any] = {}
    for k in picked:
        p = frames[k].path
        if p not in datasets:
            probed = probe(p)
            if probed is None:
                raise ConfigError(f"{p.name} can no longer be read as DICOM")
            ds = probed[0]
            for keyword in _TYPE2:  # our own in-memory copy: the source file is not touched
                if keyword not in ds:
                    setattr(ds, keyword, "")
            datasets[p] = ds
    multi = [frames[k].index is not None for k in picked]
    if all(multi) and len(datasets) == 1:
        ds = next(iter(datasets.values()))
        return SourceImages(rows=rows, datasets=[ds], frames=[int(frames[k].index) for k in picked],
                            n_frames=int(ds.get("NumberOfFrames", 1)))
    if not any(multi):
        return SourceImages(rows=rows, datasets=[datasets[frames[k].path] for k in picked], frames=None,
                            n_frames=len(picked))
    raise ConfigError(f"{what} supports series of single-frame images or one multi-frame image, not a mix; "
                      f"{instead}")


def segmentation(volume: Volume, masks: np.ndarray | Sequence[tuple[str, np.ndarray]], *,
                 series_description: str = "AnomaLens anomaly", series_number: int = 9901,
                 algorithm_version: str | None = None, series_instance_uid: str | None = None,
                 sop_instance_uid: str | None = None, sources: SourceImages | None = None,
                 instead: str = "export the mask as NIfTI instead", progress: ProgressCallback | None = None,
                 cancel: CancelToken | None = None) -> Any:
    """Masks as a binary ``highdicom.seg.Segmentation`` on their source series (``export_seg`` writes one).

    ``masks`` is one mask (the segment "Anomaly (AnomaLens)") or ``(label, mask)`` pairs, one segment each,
    numbered from 1 in order. UIDs default to new random ones; a PACS push passes stable ones, so pushing the
    same result again replaces nothing and duplicates nothing.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    from . import __version__

    pairs = [(SEGMENT_LABEL, masks)] if isinstance(masks, np.ndarray) else list(masks)
    stack = []
    for _, mask in pairs:
        m = np.asarray(mask).astype(bool)
        if m.shape != volume.shape:
            raise InvalidVolumeError(f"mask shape {m.shape} does not match the scan's grid {volume.shape}")
        stack.append(m)
    report(progress, 0.0, "reading the source DICOM headers")
    src = sources or source_images(volume, "DICOM SEG", instead, cancel)
    check(cancel)
    pixels = src.arrange(np.stack(stack, axis=-1), np.uint8)
    if len(pairs) == 1:
        pixels = pixels[..., 0]
    any_voxel = bool(any(m[src.rows].any() for m in stack))
    report(progress, 0.4, "building the segmentation")
    algorithm = hd.AlgorithmIdentificationSequence(name="AnomaLens", family=codes.cid7162.ArtificialIntelligence,
                                                   version=algorithm_version or __version__)
    segments = [hd.seg.SegmentDescription(
        segment_number=i + 1, segment_label=label[:64],
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Lesion,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algorithm_identification=algorithm)
        for i, (label, _) in enumerate(pairs)]
    try:
        seg = hd.seg.Segmentation(
            source_images=src.datasets, pixel_array=pixels,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY, segment_descriptions=segments,
            series_instance_uid=series_instance_uid or hd.UID(), series_number=series_number,
            sop_instance_uid=sop_instance_uid or hd.UID(), instance_number=1, manufacturer=MANUFACTURER,
            manufacturer_model_name="AnomaLens", software_versions=__version__, device_serial_number="0",
            content_label="ANOMALY", content_description="Unsupervised anomaly mask", omit_empty_frames=any_voxel)
    except (ValueError, TypeError, AttributeError) as exc:  # highdicom's checks of the source headers
        raise ConfigError(f"the source DICOM images lack what a DICOM SEG must reference ({exc}); {instead}") from exc
    seg.SeriesDescription = series_description[:64]
    return seg


def export_seg(volume: Volume, mask: np.ndarray, path: str | Path, *, series_description: str = "AnomaLens anomaly",
               series_number: int = 9901, algorithm_version: str | None = None,
               progress: ProgressCallback | None = None, cancel: CancelToken | None = None) -> Path:
    """The mask as a binary DICOM Segmentation on the source series, written atomically.

    One segment, "Anomaly (AnomaLens)", algorithm type AUTOMATIC. Each mask slice becomes a frame that
    references the source image it was computed on (slices without findings are left out, as the standard
    allows). Needs a scan read from DICOM whose files are still at ``volume.source``.

    Raises:
        ConfigError: the scan did not come from DICOM, its files are gone or changed, or it was reoriented.
        InvalidVolumeError: the mask does not match the scan's grid.
    """
    m = np.asarray(mask).astype(bool)
    if m.shape != volume.shape:
        raise InvalidVolumeError(f"mask shape {m.shape} does not match the scan's grid {volume.shape}")
    seg = segmentation(volume, m, series_description=series_description, series_number=series_number,
                       algorithm_version=algorithm_version, progress=progress, cancel=cancel)
    check(cancel)
    report(progress, 0.8, "writing the segmentation")
    target = Path(path)
    with atomic_path(target, suffix=".dcm") as tmp:
        seg.save_as(tmp, enforce_file_format=True)
    report(progress, 1.0, "wrote the segmentation")
    return target
