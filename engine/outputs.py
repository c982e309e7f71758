"""A scan result's files, the same for ``anomalens score``, batch scoring and the demo.

``heatmap.nii.gz`` holds the map in the result's unit (named in the NIfTI description), ``mask.nii.gz`` and
``mask_scr.nii.gz`` the plain and SCR masks of a calibrated model, and ``scores.csv`` one row per scored
slice (``slice, score, flagged, mask_voxels, volume_ml``) under ``#`` comment lines naming the model, the
unit, the mask and any warning. Every file appears whole or not at all (``engine.fileio``). Nothing here
names a patient or a path: the comments carry only the model and technical values.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .fileio import atomic_files, atomic_path, ensure_folder
from .scoring import MapUnit, ModelIdentity, ScanResult, SliceScore

if TYPE_CHECKING:
    from .calibration import Calibration

#: Output files by role; a role missing from a result (an uncalibrated model has no masks) is not written.
OUTPUT_FILES = {"heatmap": "heatmap.nii.gz", "mask": "mask.nii.gz", "mask_scr": "mask_scr.nii.gz",
                "scores": "scores.csv"}
SCORE_COLUMNS = ("slice", "score", "flagged", "mask_voxels", "volume_ml")


def header_lines(result: ScanResult) -> list[str]:
    """The ``#`` lines above the CSV table: model, unit, operating point, warnings."""
    mask = None
    if result.calibrated:
        cal = result.calibration
        assert cal is not None
        mask = (f"SCR mask (threshold {result.scr.threshold:.4g}, lambda {result.scr.lam:.4g}, {result.scr.mode})"
                if result.scr is not None and result.mask_scr is not None
                else f"plain mask (threshold {cal.threshold:.4g})")
    lines = table_header(result.model, result.unit, result.calibration, mask, result.warnings)
    if result.threads:  # before the warnings: what made the numbers, then what to beware of
        at = 2 + (result.calibration is not None and mask is not None)
        lines.insert(at, f"computed with {result.threads} torch CPU thread{'s' * (result.threads != 1)} (another "
                         "count rounds the backbone's sums differently: the last digits can differ)")
    return lines


def table_header(model: ModelIdentity, unit: MapUnit, calibration: Calibration | None, mask: str | None,
                 warnings: Sequence[str]) -> list[str]:
    """The ``#`` lines of a scores table, from its parts (the viewer's table counts the mask as shown)."""
    lines = [f"AnomaLens scores: model {model.label} ({model.detector} detector, {model.fingerprint})",
             f"unit: {unit.description}"]
    if calibration is not None and mask is not None:
        lines.append(f"flagged, mask_voxels and volume_ml: {mask}; calibrated for {calibration.target_fpr:.2%} "
                     "false-positive area on normal tissue")
    return lines + [f"warning: {w}" for w in warnings]


def write_scores_table(path: str | Path, slices: Sequence[SliceScore], header: Sequence[str]) -> Path:
    """A scores table (``SCORE_COLUMNS`` under ``#`` header lines), written atomically: the viewer's export."""
    path = Path(path)
    with atomic_path(path) as tmp:
        _write_table(tmp, slices, header)
    return path


def write_scan_result(result: ScanResult, out_dir: str | Path) -> dict[str, Path]:
    """Write the result's files into ``out_dir`` (created), all or none; returns them by role.

    Every file is written and read back before any replaces an earlier one (``fileio.atomic_files``): a full
    disk never leaves a new map beside an old mask. Files an earlier result left that this one does not have
    (masks, after scoring with an uncalibrated model) are removed, so the folder always holds one result.
    """
    from .io.write import image_writer

    out = ensure_folder(out_dir)
    vol = result.volume
    images = {"heatmap": (result.map, f"AnomaLens heatmap: {result.unit.short}"),
              "mask": (result.mask, "AnomaLens mask at the calibrated threshold"),
              "mask_scr": (result.mask_scr, "AnomaLens SCR mask at the calibrated lambda")}
    images = {role: v for role, v in images.items() if v[0] is not None}
    targets = {role: out / OUTPUT_FILES[role] for role in (*images, "scores")}
    stale = tuple(out / name for role, name in OUTPUT_FILES.items() if role not in targets)
    with atomic_files(targets, remove=stale) as staged:
        for role, (array, description) in images.items():
            write, verify = image_writer(vol, array, targets[role], description=description)
            with staged.writing(role, verify) as tmp:
                write(tmp)
        with staged.writing("scores") as tmp:
            _write_scores(result, tmp)
    return targets


def write_scores_csv(result: ScanResult, path: str | Path) -> Path:
    """``scores.csv`` alone: the header comments, then one row per scored slice (empty cells: no mask)."""
    return write_scores_table(path, result.slices, header_lines(result))


def _write_scores(result: ScanResult, path: Path) -> None:
    _write_table(path, result.slices, header_lines(result))


def _write_table(path: Path, slices: Sequence[SliceScore], header: Sequence[str]) -> None:
    with path.open("w", newline="", encoding="utf-8") as fh:
        for line in header:
            fh.write(f"# {line}\n")
        w = csv.writer(fh)
        w.writerow(SCORE_COLUMNS)
        for s in slices:
            w.writerow([s.index, f"{s.score:.6g}", "" if s.flagged is None else int(s.flagged),
                        "" if s.mask_voxels is None else s.mask_voxels,
                        "" if s.volume_ml is None else f"{s.volume_ml:.6g}"])


def read_scores_csv(path: str | Path) -> list[dict[str, str]]:
    """The rows of a ``scores.csv`` (comment lines skipped), for tests and scripts."""
    with Path(path).open(encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(line for line in fh if not line.startswith("#")))
