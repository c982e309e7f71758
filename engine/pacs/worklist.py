"""What a viewer's "File → Open from PACS…" needs, without any UI toolkit.

Every function here may block on the network: call it from a worker thread (napari's ``thread_worker``),
pass a ``progress(fraction, message)`` callback and a ``CancelToken`` wired to the dialog's Cancel button,
and show a raised ``AnomaLensError`` (``PacsError``, ``ConfigError``, ``Cancelled``, …) as a message: each
carries one sentence for the user. Nothing returned names a patient (no names, no IDs): a study is shown by
its date, description, modalities and counts, a series by its modality, number and description.

A typical dialog, with this module imported as ``worklist`` (``anomalens.engine.pacs.worklist``)::

    rows = worklist.profiles()                          # fill the PACS chooser (default first)
    studies = worklist.search(rows[0].name, modality="MR", since="2026-01-01",
                              progress=progress, cancel=token)   # fill the study table
    series = worklist.image_series(rows[0].name, studies[0].uid)  # the series a model can score
    volume = worklist.open_series(studies[0].uid, series[0].uid, profile=rows[0].name,
                                  progress=progress, cancel=token)  # pulls (resumably), then reads

``open_series`` returns the same ``Volume`` as the CLI's ``pacs:`` SPEC (``volume.metadata["pacs"]`` holds
the profile, study and series UIDs; ``volume.source`` is the cached series folder, so DICOM SEG export works
on it). ``spec_for`` gives the SPEC to store in "recent files". Pushing a result back is
``push_result(profile, result)``. The "Configure PACS…" part of a dialog can use ``engine.pacs.profiles``
(``make_profile``/``save_profile``/``remove_profile``/``store_secret``) the way ``anomalens pacs add`` does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..progress import CancelToken, ProgressCallback
from .cache import PullResult, pull_series
from .client import PacsClient
from .push import PushReport, build_result_objects
from .push import push_result as _push
from .query import SeriesInfo, StudyInfo, find_studies, make_query, pick_series
from .query import image_series as _image_series
from .spec import PacsSpec

if TYPE_CHECKING:
    from ..scoring import ScanResult
    from ..volume import Volume

__all__ = ["ProfileRow", "SeriesInfo", "StudyInfo", "fetch_series", "image_series", "open_series", "profiles",
           "push_result", "search", "spec_for"]


@dataclass(frozen=True)
class ProfileRow:
    """A configured PACS for a chooser: ``secret`` says where its password would come from ("missing": ask)."""

    name: str
    url: str
    default: bool
    secret: str
    insecure: bool


def profiles() -> list[ProfileRow]:
    """The configured PACS, the default one first (empty: offer "Configure PACS…")."""
    from .profiles import default_name, load_profiles, secret_source

    default = default_name()
    rows = [ProfileRow(name=p.name, url=p.url, default=p.name == default, secret=secret_source(p),
                       insecure=p.insecure) for p in load_profiles().values()]
    return sorted(rows, key=lambda r: (not r.default, r.name))


def search(profile: str | None = None, *, modality: str | None = None, since: str | None = None,
           until: str | None = None, patient_id: str | None = None, description: str | None = None,
           limit: int | None = 100, progress: ProgressCallback | None = None,
           cancel: CancelToken | None = None) -> list[StudyInfo]:
    """Studies newest first, each with its series (dates as ``YYYY-MM-DD``; ``profile`` None: the default)."""
    query = make_query(modality=modality, since=since, until=until, patient_id=patient_id, description=description,
                       limit=limit)
    with PacsClient.open(profile) as client:
        return find_studies(client, query, progress=progress, cancel=cancel)


def image_series(profile: str | None, study_uid: str) -> list[SeriesInfo]:
    """The series of a study that hold images a model can score (no reports, SEGs or parametric maps)."""
    with PacsClient.open(profile) as client:
        return _image_series(client, study_uid)


def fetch_series(study_uid: str, series_uid: str | None = None, *, profile: str | None = None,
                 progress: ProgressCallback | None = None, cancel: CancelToken | None = None) -> PullResult:
    """Pull a series into the cache (the study's only image series when ``series_uid`` is None); resumable."""
    with PacsClient.open(profile) as client:
        series = pick_series(client, study_uid, series_uid).uid
        return pull_series(client, study_uid, series, progress=progress, cancel=cancel)


def spec_for(study_uid: str, series_uid: str | None = None, profile: str | None = None) -> str:
    """The SPEC naming a PACS series (``pacs:NAME:STUDY/SERIES``), for recent files and the CLI."""
    from .profiles import get_profile
    from .query import check_uid

    name = get_profile(profile).name
    return PacsSpec(name, check_uid(study_uid, "study UID"),
                    check_uid(series_uid, "series UID") if series_uid else None).text()


def open_series(study_uid: str, series_uid: str | None = None, *, profile: str | None = None, gaps: str = "fill",
                progress: ProgressCallback | None = None, cancel: CancelToken | None = None) -> Volume:
    """Pull (or complete) a series in the cache and read it: the scan, as ``pipeline.load_volume`` gives it."""
    from ..pipeline import load_volume

    return load_volume(spec_for(study_uid, series_uid, profile), gaps=gaps, progress=progress, cancel=cancel)


def push_result(profile: str | None, result: ScanResult, *, progress: ProgressCallback | None = None,
                cancel: CancelToken | None = None) -> PushReport:
    """Store a calibrated result's SEG, Parametric Map and SR on the PACS (once: a repeat adds nothing)."""
    from ..progress import stage

    objects = build_result_objects(result, progress=stage(progress, 0.0, 0.5), cancel=cancel)
    with PacsClient.open(profile) as client:
        return _push(client, objects, progress=stage(progress, 0.5, 1.0), cancel=cancel)
