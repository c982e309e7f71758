"""Lesion cases with expert label maps, from the pyradiomics source archive on the package index.

The archive (BSD-3-Clause) carries five test cases. We offer three (``OFFERED_CASES``) and never extract
the others: they stay unseen by the product so that they can serve as an independent evaluation set.
One download gives all three offered cases; they are cached together with a manifest of their hashes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
import tarfile
import zlib
from pathlib import Path
from typing import BinaryIO

from ..errors import SampleError
from ..fileio import atomic_dir
from ..progress import CancelToken, ProgressCallback, check, report
from .cache import remove_stale_temps, samples_dir
from .info import SamplePaths
from .pipindex import fetch_verified

log = logging.getLogger(__name__)

PROJECT = "pyradiomics-bhklab"
VERSION = "3.1.4"
SDIST_FILENAME = f"pyradiomics_bhklab-{VERSION}.tar.gz"
#: Pinned hash of the archive; nothing else is ever extracted (tests patch it for their fake archive).
SDIST_SHA256 = "a44a087efc4ede91b5dfa5cf0de58ea3596bfaec1ef2484f278504b0a8fd5ffb"
#: Archive size, used for the progress bar when a server sends no Content-Length.
SDIST_SIZE = 34_463_939
#: The only cases taken out of the archive; brain2, lung2, ... are held out for independent evaluation.
OFFERED_CASES = ("brain1", "lung1", "breast1")
MANIFEST = "manifest.json"

_MEMBER = re.compile(r"[^/]+/data/(?P<case>[A-Za-z0-9]+)_(?P<kind>image|label)\.nrrd")


def cases_dir() -> Path:
    """The cache folder of the extracted cases."""
    return samples_dir() / f"pyradiomics_bhklab-{VERSION}"


def _wanted() -> list[str]:
    return [f"{case}_{kind}.nrrd" for case in OFFERED_CASES for kind in ("image", "label")]


def _copy_hashing(source: BinaryIO, target: Path | None = None) -> dict[str, object]:
    """Hash ``source`` (copying it to ``target`` on the way) in blocks; returns its manifest record."""
    digest = hashlib.sha256()
    size = 0
    with contextlib.ExitStack() as stack:
        out = stack.enter_context(target.open("wb")) if target is not None else None
        while block := source.read(1 << 20):
            digest.update(block)
            size += len(block)
            if out is not None:
                out.write(block)
    return {"sha256": digest.hexdigest(), "size": size}


def _file_record(path: Path) -> dict[str, object]:
    with path.open("rb") as fh:
        return _copy_hashing(fh)


def is_cached() -> bool:
    """True when the cache holds every offered case, unchanged since it was extracted."""
    folder = cases_dir()
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not isinstance(manifest, dict) or manifest.get("sdist_sha256") != SDIST_SHA256:
        return False
    files = manifest.get("files")
    if not isinstance(files, dict) or sorted(files) != sorted(_wanted()):
        return False
    for name, record in files.items():
        path = folder / name
        try:
            if path.stat().st_size != record.get("size") or _file_record(path) != record:
                return False
        except (OSError, AttributeError):
            return False
    return True


def ensure_cases(progress: ProgressCallback | None = None, cancel: CancelToken | None = None) -> Path:
    """Return the folder of the offered cases, downloading and extracting them unless cached.

    Everything happens in a temporary folder beside the cache folder that is renamed into place only when
    the archive verified and every offered case was extracted, so a failure or a kill leaves no
    half-written cache (and the archive itself is never kept).
    """
    folder = cases_dir()
    if is_cached():
        log.debug("pyradiomics cases found in %s", folder)
        return folder
    check(cancel)
    remove_stale_temps(folder)
    with atomic_dir(folder, overwrite=True) as tmp:
        tmp.chmod(0o755)  # public data; mkdtemp's 0700 would hide a shared ANOMALENS_CACHE_DIR from others
        archive = tmp / (SDIST_FILENAME + ".part")
        fetch_verified(PROJECT, SDIST_FILENAME, SDIST_SHA256, archive, size_hint=SDIST_SIZE,
                       progress=progress, cancel=cancel, start=0.0, stop=0.9)
        files = _extract(archive, tmp, progress, cancel, start=0.9, stop=0.99)
        archive.unlink()
        manifest = {"sdist": SDIST_FILENAME, "sdist_sha256": SDIST_SHA256, "files": files}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True), encoding="utf-8")
    return folder


def _extract(
    archive: Path, dest: Path, progress: ProgressCallback | None, cancel: CancelToken | None,
    start: float, stop: float,
) -> dict[str, dict[str, object]]:
    """Copy the offered cases' files out of ``archive`` into ``dest``, by name, never by archive path.

    Writing each wanted member's bytes to a name we build ourselves means that links, absolute paths
    and ``..`` in the archive can never place a file elsewhere, and held-out cases are never written.
    """
    wanted = set(_wanted())
    records: dict[str, dict[str, object]] = {}
    try:
        with tarfile.open(archive, mode="r:gz") as tar:
            for member in tar:
                check(cancel)
                match = _MEMBER.fullmatch(member.name)
                if match is None:
                    continue
                name = f"{match['case']}_{match['kind']}.nrrd"
                if name not in wanted or name in records:
                    continue
                source = tar.extractfile(member) if member.isfile() else None
                if source is None:
                    raise SampleError(f"{SDIST_FILENAME}: {member.name} is not a regular file")
                with source:
                    records[name] = _copy_hashing(source, dest / name)
                report(progress, start + (stop - start) * len(records) / len(wanted), f"extracted {name}")
                if len(records) == len(wanted):
                    break
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise SampleError(f"{SDIST_FILENAME} verified but could not be unpacked: {exc}") from exc
    missing = sorted(wanted - set(records))
    if missing:
        raise SampleError(f"{SDIST_FILENAME} does not contain {', '.join(missing)}")
    return records


def case_paths(case: str, progress: ProgressCallback | None = None,
               cancel: CancelToken | None = None) -> SamplePaths:
    """Image and label map of one offered case, fetched on first use."""
    if case not in OFFERED_CASES:
        raise SampleError(f"{case} is not an offered pyradiomics case ({', '.join(OFFERED_CASES)})")
    folder = ensure_cases(progress, cancel)
    return SamplePaths(image=folder / f"{case}_image.nrrd", mask=folder / f"{case}_label.nrrd")
