"""What the viewer's PACS parts share, without widgets: table texts, where a result goes, the result to push.

"File → Open from PACS…" (``widgets.pacs_dialog``) and the Export dock's "Send to PACS" call the engine's
``engine.pacs.worklist`` in workers; this module holds the small decisions they take on the UI thread:

* a study or series as table cells: date, description, modalities and counts, never a patient's name or ID
  (``worklist`` returns none to show);
* which PACS a result goes back to: the one the scan came from (``volume.metadata["pacs"]``), else the
  default one, and why there is none when the button must stay off;
* the engine ``ScanResult`` to push, built from what the viewer shows (the mask layer's data, hand edits and
  SCR re-cuts included), so the PACS gets what the reader saw, as the Export dock's SEG does;
* the PACS cache's size, and clearing it.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from ..engine.pacs.push import PushReport
    from ..engine.pacs.query import SeriesInfo, StudyInfo
    from ..engine.scoring import ScanResult
    from ..engine.volume import Volume
    from .results import ScanResults

#: Studies one search lists at most (newest first); the dialog says when the list was cut there.
SEARCH_LIMIT = 100
#: What the push report's roles are, for a message a reader understands.
ROLE_TEXT = {"seg": "mask (DICOM SEG)", "pmap": "anomaly map (Parametric Map)", "sr": "report (SR)"}
NO_PACS = "no PACS is configured: add one with 'anomalens pacs add NAME --url URL'"


def format_date(text: str) -> str:
    """``20260115`` → ``2026-01-15`` (other forms as they are)."""
    t = (text or "").strip()
    return f"{t[:4]}-{t[4:6]}-{t[6:8]}" if len(t) == 8 and t.isdigit() else t


def _count(n: int | None) -> str:
    return "?" if n is None else str(n)


def study_cells(study: StudyInfo) -> list[str]:
    """A study's row: date, description, modalities, series, images (nothing that names the patient)."""
    return [format_date(study.date), study.description or "(no description)", ", ".join(study.modalities) or "?",
            _count(study.n_series), _count(study.n_instances)]


def series_cells(series: SeriesInfo) -> list[str]:
    """A series' row: number, modality, description, images."""
    return ["" if series.number is None else str(series.number), series.modality or "?",
            series.description or "(no description)", _count(series.n_instances)]


def series_layer_name(volume: Volume, series: SeriesInfo | None = None) -> str:
    """A layer name from the series description (the protocol, never the patient), else modality and number."""
    from .naming import series_text

    text = series_text(volume) or (series.description if series is not None else "")
    if text:
        return text
    number = f" {series.number}" if series is not None and series.number is not None else ""
    return f"{volume.modality or 'PACS'} series{number}"


@dataclass(frozen=True)
class PushTarget:
    """Where "Send to PACS" would store a result: ``profile`` None means nowhere, ``why`` says what is missing."""

    profile: str | None
    why: str = ""
    came_from: bool = False


def push_target(volume: Volume | None) -> PushTarget:
    """The PACS a scan's result goes to: the one it came from, else the default one.

    Only reads the small profiles file (no network, no keyring), so the Export dock can ask on every update.
    """
    from ..engine.errors import AnomaLensError
    from ..engine.pacs.profiles import default_name, load_profiles

    if volume is None:
        return PushTarget(None, "score a slice or the volume first (Detector dock)")
    if str(volume.metadata.get("format", "")).upper() != "DICOM":
        return PushTarget(None, "Send to PACS needs a scan opened from DICOM (a PACS or a DICOM folder)")
    try:
        profiles = load_profiles()
        default = default_name() if profiles else None
    except AnomaLensError as exc:
        return PushTarget(None, str(exc))
    origin = (volume.metadata.get("pacs") or {}).get("profile")
    if origin:
        if origin in profiles:
            return PushTarget(str(origin), came_from=True)
        return PushTarget(None, f"the scan came from the PACS {origin!r}, which is no longer configured")
    if not profiles:
        return PushTarget(None, NO_PACS)
    if default is None:
        return PushTarget(None, f"several PACS are configured ({', '.join(profiles)}) and none is the default: "
                                "mark one with 'anomalens pacs add NAME --url URL --default'")
    return PushTarget(default)


def result_to_push(res: ScanResults, mask: np.ndarray, heatmap: np.ndarray) -> ScanResult:
    """The engine result of what the viewer shows: its scored slices, heatmap and mask as displayed.

    ``mask`` is the mask layer's data (0/1, hand edits included); it is the result's lesion mask, named SCR's
    when SCR cut any of the scored slices. Per-slice rows are counted again from it, so the report's flagged
    slices are the ones the reader sees flagged. Arrays are copies: the push runs in a worker while the
    user may go on editing. Cheap (copies only): call it on the UI thread, then
    ``engine.scoring.with_plain_mask`` in the worker.
    """
    from ..engine.scoring import ScanResult

    shown = np.asarray(mask, dtype=bool).copy()
    indices = np.flatnonzero(res.scored).astype(int)
    voxel_ml = float(np.prod(res.volume.spacing)) / 1000.0
    slices = tuple(res.slices[z].with_mask(shown[z], voxel_ml) for z in sorted(res.slices) if res.scored[z])
    scr = any(int(z) in res.cut_params for z in indices)
    return ScanResult(volume=res.volume, prepared=res.prepared, indices=indices,
                      map=np.array(heatmap, dtype=np.float32, copy=True), unit=res.unit,
                      mask=None if scr else shown, mask_scr=shown if scr else None, calibration=res.calibration,
                      scr=None, slices=slices, model=res.model, raw=None, warnings=res.warnings)


def describe_push(report: PushReport) -> str:
    """One sentence on what a push stored: ``Sent to PACS 'x': mask (DICOM SEG) stored, …``."""
    parts = [f"{ROLE_TEXT.get(role, role)} {state}" for role, state in report.status.items()]
    if report.status and not report.stored:
        return f"Already on PACS {report.pacs!r}: the result's " + ", ".join(ROLE_TEXT.get(r, r)
                                                                              for r in report.status)
    return f"Sent to PACS {report.pacs!r}, in the scan's study: " + ", ".join(parts)


def cache_size() -> tuple[int, int]:
    """(series, bytes) in the PACS cache (walks the folder: call it from a worker)."""
    from ..engine.pacs.cache import cache_dir

    root = cache_dir()
    if not root.is_dir():
        return 0, 0
    series = [s for study in root.iterdir() if study.is_dir() for s in study.iterdir() if s.is_dir()]
    size = 0
    for p in root.rglob("*"):
        try:
            if p.is_file():
                size += p.stat().st_size
        except OSError:
            continue
    return len(series), size


def clear_cache(progress: Any = None, cancel: Any = None) -> tuple[int, int]:
    """Delete every series pulled from a PACS; returns (series, bytes) removed. A later open pulls again.

    Only the cache's ``pacs`` folder is touched (samples and models are elsewhere). A study folder is
    removed whole, one at a time, so a cancel leaves whole studies behind, never half a series.
    """
    from ..engine.errors import ConfigError
    from ..engine.pacs.cache import cache_dir
    from ..engine.progress import check, report

    n, size = cache_size()
    root = cache_dir()
    if not root.is_dir():
        return 0, 0
    studies = list(root.iterdir())
    for k, study in enumerate(studies):
        check(cancel)
        try:
            if study.is_dir():
                shutil.rmtree(study)
            else:
                study.unlink()
        except OSError as exc:
            raise ConfigError(f"could not clear the PACS cache ({exc.strerror or exc}); close what uses it and "
                              "try again") from exc
        report(progress, (k + 1) / len(studies), f"removed {k + 1}/{len(studies)} studies")
    return n, size


def human_size(n_bytes: int) -> str:
    """``12.3 MB``."""
    size = float(n_bytes)
    for unit in ("bytes", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} TB"  # pragma: no cover


def in_cache(volume: Volume | None) -> bool:
    """Whether a scan was read from the PACS cache (clearing the cache takes its source images away)."""
    from ..engine.pacs.cache import cache_dir

    if volume is None or volume.source is None:
        return False
    try:
        return Path(volume.source).resolve().is_relative_to(cache_dir().resolve())
    except OSError:
        return False
