"""Refuse an output location inside what a command reads: outputs never go into a scan's or a model's folder.

Written into a DICOM folder, maps and masks join the series (the source is modified and the next reading
takes them for images of its own); written beside a scan file, ``mask.nii.gz`` replaced an expert's mask of
that name (or, scored with an uncalibrated model, was removed as a stale output); written inside a model
folder, a new bundle sat in the old one.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from ..errors import ConfigError

_NOT_PATHS = ("sample:", "pacs:")


def _candidates(text: str) -> Iterator[str]:
    """The paths a SPEC names: the SPEC's own, an ``@list``'s lines, both sides of an ``IMAGE:MASK`` pair."""
    text = text.strip()
    if not text or text.startswith(_NOT_PATHS):
        return
    if text.startswith("@"):
        lst = Path(text[1:]).expanduser()
        try:
            lines = lst.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError):
            return  # the command itself says why it cannot read the list
        for line in lines:
            line = line.strip()
            if line and not line.startswith("#"):
                spec = line if Path(line).expanduser().is_absolute() else str(lst.parent / line)
                yield from _candidates(spec)
        return
    source = text.split("#")[0]
    yield source
    if ":" in source and not Path(source).exists():  # IMAGE:MASK (split at the last colon, as eval does)
        image, mask = source.rsplit(":", 1)
        yield image
        yield mask


def refuse_source_folder(out: Path | str, sources: Iterable[Any], option: str = "--out") -> None:
    """Refuse ``out`` when it is, or lies inside, a folder the command reads, or is the folder of a scan file.

    ``sources``: SPECs, ``Study`` objects, model folders. A scan file's folder is refused itself only (a
    ``results/`` folder beside the scan is fine); a scan folder (DICOM) or model folder also for anything
    inside it.
    """
    target = Path(out).expanduser().resolve()
    for source in sources:
        for text in _candidates(str(getattr(source, "spec", source))):
            path = Path(text).expanduser().resolve()
            if path.is_dir():
                inside = target == path or path in target.parents
            elif path.is_file():
                inside = target == path.parent or target == path
            else:
                continue
            if inside:
                raise ConfigError(f"{option} {out} is inside {text}, which this command reads: outputs never go "
                                  "into a scan's or a model's folder; choose another one")
