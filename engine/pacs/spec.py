"""``pacs:`` SPECs: a study or series on a PACS, wherever a scan's SPEC is accepted.

Forms: ``pacs:STUDY_UID``, ``pacs:STUDY_UID/SERIES_UID``, and the same with the profile named,
``pacs:NAME:STUDY_UID[/SERIES_UID]``. Without a name the default profile is used; the CLI writes ``--pacs
NAME`` into the SPEC (``qualify``) so that batch workers, which see only SPECs, ask the same PACS. A ``#``
slice selection follows as for files (``pacs:1.2.3/4.5.6#0-9``). A study without a series names its only image
series; a study with several is refused with the list (``query.pick_series``).

Resolving a SPEC pulls the series into the cache (``cache.pull_series``) and gives its folder to the DICOM
reader; a cached series is checked against the PACS and completed, not fetched again.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError
from ..progress import CancelToken, ProgressCallback
from .query import check_uid

PACS_PREFIX = "pacs:"
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,31}$")


@dataclass(frozen=True)
class PacsSpec:
    """The parts of a ``pacs:`` SPEC's source (no ``#`` selection)."""

    profile: str | None
    study_uid: str
    series_uid: str | None = None

    def text(self) -> str:
        """The SPEC again, profile named when known: ``pacs:NAME:STUDY/SERIES``."""
        name = f"{self.profile}:" if self.profile else ""
        series = f"/{self.series_uid}" if self.series_uid else ""
        return f"{PACS_PREFIX}{name}{self.study_uid}{series}"


def is_pacs_spec(spec: str) -> bool:
    return str(spec).startswith(PACS_PREFIX)


def parse_pacs_spec(source: str) -> PacsSpec:
    """``pacs:[NAME:]STUDY[/SERIES]`` → its parts (the ``#`` selection already split off).

    Raises:
        ConfigError: not a ``pacs:`` SPEC, a bad profile name or a malformed UID.
    """
    if not is_pacs_spec(source):
        raise ConfigError(f"{source!r} is not a pacs: SPEC")
    rest = source[len(PACS_PREFIX):].strip()
    profile = None
    if ":" in rest:
        profile, _, rest = rest.partition(":")
        if not _NAME.match(profile):
            raise ConfigError(f"bad PACS name {profile!r} in {source!r}: write pacs:NAME:STUDY_UID[/SERIES_UID]")
    if not rest:
        raise ConfigError(f"no study UID in {source!r}: write pacs:STUDY_UID or pacs:STUDY_UID/SERIES_UID")
    study, _, series = rest.partition("/")
    return PacsSpec(profile=profile, study_uid=check_uid(study, "study UID"),
                    series_uid=check_uid(series, "series UID") if series else None)


def qualify(spec: str, profile: str | None) -> str:
    """A ``pacs:`` SPEC with ``profile`` written in (when it names none); other SPECs unchanged.

    Raises:
        ConfigError: the SPEC names another profile than ``profile``.
    """
    if not is_pacs_spec(spec):
        return spec
    from ..io.spec import split_spec

    source, selection = split_spec(spec)
    parsed = parse_pacs_spec(source)
    if profile and parsed.profile and parsed.profile != profile:
        raise ConfigError(f"{spec!r} names the PACS {parsed.profile!r} but --pacs says {profile!r}")
    name = parsed.profile or profile
    if name is None:
        from .profiles import get_profile

        name = get_profile(None).name
    text = PacsSpec(name, parsed.study_uid, parsed.series_uid).text()
    return text if selection is None else f"{text}#{selection}"


def fetch_source(source: str, *, progress: ProgressCallback | None = None,
                 cancel: CancelToken | None = None) -> tuple[Path, dict[str, str]]:
    """Pull the series a ``pacs:`` source names into the cache: its folder, and what to note in the volume.

    Raises:
        ConfigError, PacsError and its kinds, EmptyInputError, MultipleSeriesError, SeriesChangedError, Cancelled.
    """
    from ..progress import stage
    from .cache import pull_series
    from .client import PacsClient
    from .query import pick_series

    parsed = parse_pacs_spec(source)
    with PacsClient.open(parsed.profile) as client:
        series = pick_series(client, parsed.study_uid, parsed.series_uid).uid
        pulled = pull_series(client, parsed.study_uid, series, progress=stage(progress, 0.0, 1.0), cancel=cancel)
        note = {"profile": client.profile.name, "study_uid": parsed.study_uid, "series_uid": series}
    return pulled.folder, note
