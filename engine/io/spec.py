r"""SPECs: how a user names a scan on the command line or in a config.

A SPEC is a file, a DICOM folder or ``sample:NAME``, optionally followed by ``#SLICES``, e.g.
``ct.nii.gz#0-5,20-24`` (slice indices, inclusive ranges, counted from 0 in the read volume's z order).

Splitting rule for ``#`` (file names may contain ``#`` too): if the whole SPEC names an existing file or
folder it is taken as a path with no selection; otherwise everything after the LAST ``#`` is the
selection. So ``scan#2.nii`` (an existing file) reads the whole file and ``scan#2.nii#0-3`` selects slices
0-3 of it. Nothing else is special: Windows paths (``C:\scans\ct.nii``) work as they are; only the
exact lowercase prefix ``sample:`` names a sample, and ``pacs:`` a study or series on a PACS
(``pacs:[NAME:]STUDY_UID[/SERIES_UID]``, see ``engine.pacs.spec``), pulled into the cache when read.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ..errors import ConfigError, SampleError
from ..volume import Volume

SAMPLE_PREFIX = "sample:"
PACS_PREFIX = "pacs:"
_TOKEN = re.compile(r"^\s*(\d+)\s*(?:-\s*(\d+)\s*)?$")


def split_spec(spec: str) -> tuple[str, str | None]:
    """``(source, selection)``; ``selection`` is None when the SPEC has no ``#`` part (see module docstring)."""
    spec = str(spec)
    if "#" not in spec or (not spec.startswith((SAMPLE_PREFIX, PACS_PREFIX)) and Path(spec).expanduser().exists()):
        return spec, None
    source, _, selection = spec.rpartition("#")
    return source, selection


def parse_selection(text: str, n: int) -> list[int]:
    """Slice indices from ``"0-5,20-24,30"``: sorted, unique, inclusive ranges, each within [0, n).

    Raises:
        ConfigError: empty text, bad syntax, a reversed range or an index outside the volume.
    """
    if n <= 0:
        raise ConfigError("the volume has no slices to select from")
    if not text or not text.strip():
        raise ConfigError("the slice selection after '#' is empty; write e.g. #0-5,20-24")
    picked: set[int] = set()
    for token in text.split(","):
        m = _TOKEN.match(token)
        if m is None:
            raise ConfigError(f"bad slice selection {token.strip()!r} in {text!r}: use indices and inclusive "
                              "ranges such as 0-5,20-24")
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) is not None else lo
        if hi < lo:
            raise ConfigError(f"bad slice range {token.strip()!r}: the start is after the end")
        if hi >= n:
            raise ConfigError(f"slice {hi} is out of range: the volume has {n} slices (0-{n - 1})")
        picked.update(range(lo, hi + 1))
    return sorted(picked)


def resolve_source(source: str) -> Path:
    """The path a SPEC's source part names (downloading/verifying a sample, pulling from a PACS if needed)."""
    if source.startswith(PACS_PREFIX):
        from ..pacs.spec import fetch_source

        return fetch_source(source)[0]
    if source.startswith(SAMPLE_PREFIX):
        name = source[len(SAMPLE_PREFIX):].strip()
        if not name:
            raise SampleError("no sample name after 'sample:'; list them with 'anomalens samples list'")
        try:
            from ..samples import fetch_sample
        except ImportError:
            raise SampleError("sample cases are not available in this installation") from None
        return Path(fetch_sample(name).image)
    return Path(source).expanduser()


def load_spec(spec: str, **read_opts: Any) -> Volume:
    """Read the scan a SPEC names, then apply its ``#`` slice selection (``metadata["selected_slices"]``)."""
    from . import read_scan

    source, selection = split_spec(spec)
    if not source.strip():
        raise ConfigError(f"no file, folder or sample before '#' in {spec!r}")
    pacs = None
    if source.startswith(PACS_PREFIX):
        from ..pacs.spec import fetch_source
        from ..progress import stage

        # The pull takes most of the time of a first read; a cached series is only checked and completed.
        path, pacs = fetch_source(source, progress=stage(read_opts.get("progress"), 0.0, 0.8),
                                  cancel=read_opts.get("cancel"))
        if read_opts.get("progress") is not None:
            read_opts["progress"] = stage(read_opts["progress"], 0.8, 1.0)
    else:
        path = resolve_source(source)
    if source.startswith(SAMPLE_PREFIX) and read_opts.get("modality") is None:
        # NRRD/NIfTI carry no modality; the sample catalogue knows it (CT must get the HU window).
        from ..samples import sample_info

        try:
            read_opts["modality"] = sample_info(source[len(SAMPLE_PREFIX):].strip()).modality
        except SampleError:
            pass
    volume = read_scan(path, **read_opts)
    if source.startswith(SAMPLE_PREFIX):
        volume.metadata["sample"] = source[len(SAMPLE_PREFIX):].strip()
    if pacs is not None:
        volume.metadata["pacs"] = pacs
    if selection is None:
        return volume
    return volume.select_slices(parse_selection(selection, volume.n_slices))
