"""Finding studies and series on a PACS (QIDO-RS), and picking the image series a model can score.

What comes back is technical only: UIDs, dates, descriptions, modalities and counts. Patient names are
never read from the answers, so nothing built here (lists, JSON, logs, manifests) can carry one.

A query is written ``modality=MR since=2026-01-01`` (``parse_query``), the same words as the options of
``anomalens pacs find``.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import asdict, dataclass, field, replace
from datetime import date
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError, EmptyInputError, MultipleSeriesError
from ..progress import CancelToken, ProgressCallback, check, report

if TYPE_CHECKING:
    from .client import PacsClient

#: Modalities of series that hold no images to score (reports, annotations, results, documents).
NON_IMAGE_MODALITIES = frozenset({"SR", "SEG", "PR", "KO", "RTSTRUCT", "RTPLAN", "RTDOSE", "RTRECORD", "DOC",
                                  "REG", "FID", "AU", "ECG", "HD", "PLAN", "RWV", "RESP"})
#: SOP classes (prefixes) that are not images, whatever the series' modality says: a Parametric Map is
#: "OT", so its class is what tells it from a scan.
NON_IMAGE_SOP_PREFIXES = ("1.2.840.10008.5.1.4.1.1.88.", "1.2.840.10008.5.1.4.1.1.66", "1.2.840.10008.5.1.4.1.1.30",
                          "1.2.840.10008.5.1.4.1.1.11.", "1.2.840.10008.5.1.4.1.1.104.", "1.2.840.10008.5.1.4.1.1.481.",
                          "1.2.840.10008.5.1.4.1.1.9.", "1.2.840.10008.5.1.4.1.1.67", "1.2.840.10008.5.1.4.1.1.68.",
                          "1.2.840.10008.5.1.4.1.1.91.")
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_STUDY_FIELDS = ("StudyInstanceUID", "StudyDate", "StudyTime", "StudyDescription", "ModalitiesInStudy",
                 "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances")
_SERIES_FIELDS = ("SeriesInstanceUID", "Modality", "SeriesDescription", "SeriesNumber",
                  "NumberOfSeriesRelatedInstances")
QUERY_KEYS = ("modality", "since", "until", "patient-id", "description", "limit")


def check_uid(uid: str, what: str = "UID") -> str:
    """A DICOM UID (digits and dots, at most 64): it names cache folders, so nothing else may pass."""
    text = (uid or "").strip()
    if not _UID.match(text) or len(text) > 64:
        raise ConfigError(f"{text!r} is not a DICOM {what} (digits and dots, at most 64 characters)")
    return text


@dataclass(frozen=True)
class SeriesInfo:
    """One series of a study as the PACS lists it."""

    uid: str
    modality: str
    description: str
    number: int | None
    n_instances: int | None

    @property
    def maybe_image(self) -> bool:
        """Not a report, segmentation or other non-image kind, by its modality (``image_series`` checks more)."""
        return self.modality.upper() not in NON_IMAGE_MODALITIES

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class StudyInfo:
    """One study: its date and description, modalities and counts, and (when asked) its series."""

    uid: str
    date: str
    time: str
    description: str
    modalities: tuple[str, ...]
    n_series: int | None
    n_instances: int | None
    series: tuple[SeriesInfo, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["modalities"] = list(self.modalities)
        data["series"] = [s.to_dict() for s in self.series]
        return data


@dataclass(frozen=True)
class StudyQuery:
    """What ``pacs find`` and ``score --query`` look for; empty fields match everything."""

    modality: str | None = None
    since: date | None = None
    until: date | None = None
    patient_id: str | None = None
    description: str | None = None
    limit: int | None = None

    def filters(self) -> dict[str, str]:
        """QIDO-RS study-level matching keys."""
        out: dict[str, str] = {}
        if self.modality:
            out["ModalitiesInStudy"] = self.modality
        if self.since or self.until:
            lo = self.since.strftime("%Y%m%d") if self.since else ""
            hi = self.until.strftime("%Y%m%d") if self.until else ""
            out["StudyDate"] = f"{lo}-{hi}"
        if self.patient_id:
            out["PatientID"] = self.patient_id
        return out

    def to_dict(self) -> dict[str, Any]:
        return {k: (v.isoformat() if isinstance(v, date) else v) for k, v in asdict(self).items() if v is not None}


def parse_date(text: str, what: str = "date") -> date:
    """``2026-01-15`` or ``20260115``."""
    t = (text or "").strip()
    for fmt in ("%Y-%m-%d", "%Y%m%d"):
        try:
            from datetime import datetime

            return datetime.strptime(t, fmt).date()
        except ValueError:
            continue
    raise ConfigError(f"bad {what} {text!r}: write it as YYYY-MM-DD, e.g. 2026-01-15")


def make_query(modality: str | None = None, since: str | None = None, until: str | None = None,
               patient_id: str | None = None, description: str | None = None, limit: int | None = None) -> StudyQuery:
    """A checked query from option values."""
    mod = modality.strip().upper() if modality else None
    if mod and not re.fullmatch(r"[A-Z0-9]{1,16}", mod):
        raise ConfigError(f"bad modality {modality!r}: a DICOM modality such as MR, CT or PT")
    if limit is not None and limit < 1:
        raise ConfigError("the limit must be at least 1")
    q = StudyQuery(modality=mod, since=parse_date(since, "since date") if since else None,
                   until=parse_date(until, "until date") if until else None, patient_id=patient_id or None,
                   description=description or None, limit=limit)
    if q.since and q.until and q.until < q.since:
        raise ConfigError("the until date is before the since date")
    return q


def parse_query(text: str) -> StudyQuery:
    """``modality=MR since=2026-01-01 description="T2*"`` → a query (keys: ``QUERY_KEYS``)."""
    try:
        words = shlex.split(text or "")
    except ValueError as exc:
        raise ConfigError(f"bad query {text!r}: {exc}") from exc
    if not words:
        raise ConfigError("the query is empty: write e.g. \"modality=MR since=2026-01-01\"")
    values: dict[str, str] = {}
    for word in words:
        key, sep, value = word.partition("=")
        key = key.strip().lower().replace("_", "-")
        if not sep or key not in QUERY_KEYS or not value.strip():
            raise ConfigError(f"bad query term {word!r}: use key=value with keys {', '.join(QUERY_KEYS)}")
        values[key] = value.strip()
    limit = values.get("limit")
    if limit is not None and not limit.isdigit():
        raise ConfigError(f"bad query limit {limit!r}: a whole number")
    return make_query(modality=values.get("modality"), since=values.get("since"), until=values.get("until"),
                      patient_id=values.get("patient-id"), description=values.get("description"),
                      limit=int(limit) if limit else None)


# -- reading QIDO answers (DICOM JSON) ----------------------------------------------------------------------

def _tag(keyword: str) -> str:
    from pydicom.datadict import tag_for_keyword

    tag = tag_for_keyword(keyword)
    assert tag is not None, keyword
    return f"{tag:08X}"


def _values(item: dict, keyword: str) -> list[Any]:
    element = item.get(_tag(keyword)) or {}
    return list(element.get("Value") or [])


def _text(item: dict, keyword: str) -> str:
    values = _values(item, keyword)
    return str(values[0]).strip() if values else ""


def _int(item: dict, keyword: str) -> int | None:
    values = _values(item, keyword)
    try:
        return int(values[0]) if values else None
    except (TypeError, ValueError):
        return None


def _series(item: dict) -> SeriesInfo:
    return SeriesInfo(uid=_text(item, "SeriesInstanceUID"), modality=_text(item, "Modality").upper(),
                      description=_text(item, "SeriesDescription"), number=_int(item, "SeriesNumber"),
                      n_instances=_int(item, "NumberOfSeriesRelatedInstances"))


def _study(item: dict, series: tuple[SeriesInfo, ...] = ()) -> StudyInfo:
    return StudyInfo(uid=_text(item, "StudyInstanceUID"), date=_text(item, "StudyDate"), time=_text(item, "StudyTime"),
                     description=_text(item, "StudyDescription"),
                     modalities=tuple(str(m).upper() for m in _values(item, "ModalitiesInStudy")),
                     n_series=_int(item, "NumberOfStudyRelatedSeries"),
                     n_instances=_int(item, "NumberOfStudyRelatedInstances"), series=series)


# -- searches ------------------------------------------------------------------------------------------------

def list_series(client: PacsClient, study_uid: str, *, must_exist: bool = False) -> list[SeriesInfo]:
    """The series of a study, by series number.

    Raises:
        PacsNotFoundError: ``must_exist`` and the PACS lists no series for the study (it has no such study).
    """
    from .errors import PacsNotFoundError

    items = client.search_series(check_uid(study_uid, "study UID"), fields=_SERIES_FIELDS)
    series = [_series(i) for i in items if _text(i, "SeriesInstanceUID")]
    if must_exist and not series:
        raise PacsNotFoundError(f"the PACS {client.profile.name!r} has no study {study_uid} (or it holds no series)")
    return sorted(series, key=lambda s: (s.number is None, s.number or 0, s.uid))


def find_studies(client: PacsClient, query: StudyQuery | None = None, *, with_series: bool = True,
                 progress: ProgressCallback | None = None, cancel: CancelToken | None = None) -> list[StudyInfo]:
    """Studies matching ``query``, newest first, each with its series (one more request per study)."""
    q = query or StudyQuery()
    items = client.search_studies(q.filters(), _STUDY_FIELDS, limit=q.limit)
    studies = [_study(i) for i in items if _text(i, "StudyInstanceUID")]
    studies.sort(key=lambda s: (s.date, s.time, s.uid), reverse=True)
    if not with_series:
        return studies
    out = []
    for k, study in enumerate(studies):
        check(cancel)
        series = tuple(s for s in list_series(client, study.uid) if _series_matches(s, q))
        if series or not q.description:  # a series pattern that matches nothing in a study drops the study
            out.append(replace(study, series=series))
        report(progress, (k + 1) / len(studies), f"listed {k + 1}/{len(studies)} studies")
    return out


def _series_matches(series: SeriesInfo, q: StudyQuery) -> bool:
    """A series of a matching study that the query's series terms (modality, description) also match."""
    from fnmatch import fnmatchcase

    if q.modality and series.modality != q.modality:
        return False
    return not q.description or fnmatchcase(series.description.lower(), q.description.lower())


def is_image_series(client: PacsClient, study_uid: str, series: SeriesInfo) -> bool:
    """Whether a series holds images a model can score: its modality, then the SOP class of one instance."""
    if not series.maybe_image:
        return False
    items = client.search_instances(study_uid, series.uid, fields=("SOPClassUID",), limit=1)
    classes = [_text(i, "SOPClassUID") for i in items]
    return bool(classes) and not any(c.startswith(NON_IMAGE_SOP_PREFIXES) for c in classes)


def image_series(client: PacsClient, study_uid: str, series: list[SeriesInfo] | None = None) -> list[SeriesInfo]:
    """The image series of a study (reports, segmentations, parametric maps left out)."""
    listed = list_series(client, study_uid, must_exist=True) if series is None else series
    return [s for s in listed if is_image_series(client, study_uid, s)]


def pick_series(client: PacsClient, study_uid: str, series_uid: str | None = None) -> SeriesInfo:
    """The series to pull for ``pacs:STUDY[/SERIES]``: the one named, else the study's only image series.

    Raises:
        PacsNotFoundError: no such study on the PACS (via the client), or no such series in it.
        EmptyInputError: the study holds no image series (only reports, say).
        MultipleSeriesError: several image series and none named (the message lists them).
    """
    from .errors import PacsNotFoundError

    study_uid = check_uid(study_uid, "study UID")
    listed = list_series(client, study_uid, must_exist=True)
    if series_uid is not None:
        series_uid = check_uid(series_uid, "series UID")
        for s in listed:
            if s.uid == series_uid:
                if not is_image_series(client, study_uid, s):
                    raise EmptyInputError(f"series {series_uid} of study {study_uid} holds no images to score "
                                          f"(it is {s.modality or 'of an unknown kind'})")
                return s
        raise PacsNotFoundError(f"study {study_uid} on the PACS {client.profile.name!r} has no series {series_uid}")
    images = image_series(client, study_uid, listed)
    if not images:
        kinds = ", ".join(sorted({s.modality or "?" for s in listed}))
        raise EmptyInputError(f"study {study_uid} holds no image series to score (only {kinds})")
    if len(images) > 1:
        rows = [{"uid": s.uid, "modality": s.modality, "description": s.description, "n_files": s.n_instances}
                for s in images]
        listing = "; ".join(f"{s.uid} ({s.modality}, {s.description or 'no description'}, "
                            f"{s.n_instances if s.n_instances is not None else '?'} images)" for s in images)
        raise MultipleSeriesError(f"study {study_uid} holds {len(images)} image series; name one as "
                                  f"pacs:{study_uid}/SERIES_UID: {listing}", series=rows)
    return images[0]
