"""Series pulled from a PACS (WADO-RS) into the user's cache, resumably, keyed by UID only.

A series lands in ``<cache>/pacs/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm``: folder and
file names are UIDs, never a patient's name or ID, so paths can appear in logs and manifests. Each image is
written atomically (``engine.fileio``) as it arrives, so a pull that is cancelled, interrupted or killed
keeps every image already received, and the next pull fetches only the missing ones.

A pull lists the series' images before and after the transfer. When the lists differ, the PACS was still
receiving (or deleting) images of the series: the pull stops with ``SeriesChangedError`` (what was received
is kept; pulling again completes it), rather than hand the caller a volume that may lack slices.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import EmptyInputError
from ..fileio import atomic_path, atomic_write_text, ensure_folder
from ..progress import CancelToken, ProgressCallback, check, report
from .errors import PacsError, SeriesChangedError
from .query import check_uid

if TYPE_CHECKING:
    from .client import PacsClient

#: A small record of the last complete pull, beside the images (hidden: readers skip it).
SERIES_RECORD = ".series.json"


def cache_dir() -> Path:
    """The PACS part of the AnomaLens cache (``ANOMALENS_CACHE_DIR`` moves the whole cache)."""
    from ..samples.cache import cache_root

    return cache_root() / "pacs"


def series_folder(study_uid: str, series_uid: str) -> Path:
    """Where a series is cached: two UIDs, checked so that nothing else can become a path."""
    return cache_dir() / check_uid(study_uid, "study UID") / check_uid(series_uid, "series UID")


@dataclass(frozen=True)
class PullResult:
    """What a pull did: the folder to read, how many images, how many came over the network this time."""

    study_uid: str
    series_uid: str
    folder: Path
    n_instances: int
    downloaded: int
    reused: int
    removed: int

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["folder"] = str(self.folder)
        return data


def cached_instances(folder: Path) -> set[str]:
    """SOP Instance UIDs of the images already in a series folder."""
    if not folder.is_dir():
        return set()
    return {p.name[:-4] for p in folder.glob("*.dcm") if not p.name.startswith(".")}


def _listing(client: PacsClient, study_uid: str, series_uid: str) -> list[str]:
    from .query import _text

    items = client.search_instances(study_uid, series_uid, fields=("SOPInstanceUID",))
    return sorted({u for u in (_text(i, "SOPInstanceUID") for i in items) if u})


def pull_series(client: PacsClient, study_uid: str, series_uid: str, *, progress: ProgressCallback | None = None,
                cancel: CancelToken | None = None) -> PullResult:
    """Bring a series into the cache (or complete it there) and return its folder.

    Args:
        client: the PACS to pull from.
        study_uid: the study.
        series_uid: the series.
        progress: ``progress(fraction, message)``; messages count images, never name anyone.
        cancel: checked before each image; what was received stays in the cache.

    Raises:
        PacsError and its kinds: the server failed, refused or timed out (images received so far are kept).
        SeriesChangedError: the series changed on the PACS during the pull.
        EmptyInputError: the series has no images.
        Cancelled: the user cancelled.
    """
    folder = series_folder(study_uid, series_uid)
    report(progress, 0.0, "listing the series' images")
    listing = _listing(client, study_uid, series_uid)
    if not listing:
        raise EmptyInputError(f"series {series_uid} of study {study_uid} has no images on the PACS "
                              f"{client.profile.name!r}")
    ensure_folder(folder, "cache")
    wanted = set(listing)
    removed = 0
    for sop in cached_instances(folder) - wanted:  # deleted on the PACS since an earlier pull
        (folder / f"{sop}.dcm").unlink(missing_ok=True)
        removed += 1
    for sop in sorted(cached_instances(folder) & wanted):  # an earlier pull cut off mid-image left it short
        if _cut_short(folder / f"{sop}.dcm"):
            (folder / f"{sop}.dcm").unlink(missing_ok=True)
    present = cached_instances(folder)
    missing = [u for u in listing if u not in present]
    n = len(missing)
    got: set[str] = set()

    def keep(ds: Any) -> None:
        sop = _store(ds, folder, study_uid, series_uid)
        got.add(sop)
        report(progress, 0.02 + 0.96 * min(len(got), n) / max(n, 1), f"received {min(len(got), n)}/{n} images")

    if n:
        check(cancel)
        if n == len(listing) and n > 1:  # nothing cached yet: one streamed request for the whole series
            for ds in client.iter_series(study_uid, series_uid):
                try:
                    keep(ds)
                except ShortImageError:  # the connection broke mid-image: fetch the rest one by one below
                    break
                check(cancel)
        for sop in [u for u in missing if u not in got]:  # resuming, or what the stream did not bring
            check(cancel)
            keep(client.retrieve_instance(study_uid, series_uid, sop))
    after = _listing(client, study_uid, series_uid)
    if after != listing:
        added, gone = len(set(after) - wanted), len(wanted - set(after))
        raise SeriesChangedError(
            f"series {series_uid} changed on the PACS while it was pulled ({added} image(s) added, {gone} removed); "
            "the images received are kept in the cache: pull again once the PACS has the whole series")
    extra = cached_instances(folder) - wanted
    for sop in extra:  # streamed but not listed: cannot happen unless the series changed, which was checked
        (folder / f"{sop}.dcm").unlink(missing_ok=True)
    atomic_write_text(folder / SERIES_RECORD, json.dumps(
        {"study_uid": study_uid, "series_uid": series_uid, "n_instances": len(listing), "complete": True,
         "pulled": datetime.now(UTC).isoformat(timespec="seconds")}, indent=2))
    report(progress, 1.0, f"{len(listing)} images in the cache")
    return PullResult(study_uid=study_uid, series_uid=series_uid, folder=folder, n_instances=len(listing),
                      downloaded=len(got & wanted), reused=len(listing) - len(got & wanted), removed=removed)


def _store(ds: Any, folder: Path, study_uid: str, series_uid: str) -> str:
    """Write one received image as ``<SOPInstanceUID>.dcm``, atomically; returns its SOP Instance UID."""
    sop = str(getattr(ds, "SOPInstanceUID", "") or "")
    if str(getattr(ds, "SeriesInstanceUID", "")) != series_uid or str(getattr(ds, "StudyInstanceUID", "")) != study_uid:
        raise PacsError(f"the PACS sent an image of another series while series {series_uid} was pulled")
    sop = check_uid(sop, "SOP instance UID")
    short = _short_pixels(ds)
    if short is not None:
        raise ShortImageError(f"the PACS sent image {sop} cut short ({short[0]} of {short[1]} bytes of pixel data): "
                              "the connection broke mid-image; nothing of it was kept, pull again")
    with atomic_path(folder / f"{sop}.dcm", suffix=".dcm") as tmp:
        ds.save_as(tmp, enforce_file_format=True)
    return sop


class ShortImageError(PacsError):
    """An image arrived with less pixel data than its header describes (a stream cut mid-image)."""


def _short_pixels(ds: Any) -> tuple[int, int] | None:
    """(bytes held, bytes described) when an uncompressed image's pixel data is short; else None.

    A streamed retrieve that loses its connection hands over the last image as far as it came: saved as it
    was, every later reading of the series failed on it, and pulling again trusted it as cached.
    """
    data = getattr(ds, "PixelData", None) if "PixelData" in ds else None
    meta = getattr(ds, "file_meta", None)
    syntax = getattr(meta, "TransferSyntaxUID", None)
    if data is None or syntax is None or getattr(syntax, "is_compressed", True):
        return None  # nothing to measure (compressed data has no fixed length)
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        samples, bits = int(getattr(ds, "SamplesPerPixel", 1) or 1), int(ds.BitsAllocated)
        frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    except (AttributeError, TypeError, ValueError):
        return None
    pixels = rows * cols * samples * frames
    expected = (pixels + 7) // 8 if bits == 1 else pixels * ((bits + 7) // 8)
    return (len(data), expected) if len(data) < expected else None


def _cut_short(path: Path) -> bool:
    """Whether a cached image file is cut short (read back; unreadable counts as short)."""
    import pydicom

    try:
        return _short_pixels(pydicom.dcmread(path)) is not None
    except Exception:  # a damaged file is no cached image
        return True
