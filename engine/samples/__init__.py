"""Real sample scans, from package registries only: lesion cases with masks, and healthy references.

``brain1``, ``lung1`` and ``breast1`` (with expert lesion masks) come from the pyradiomics source archive
on the package index pip is configured with (so a hospital mirror works unchanged), verified against a
pinned sha256 and cached; the healthy samples ship inside installed packages (nilearn, pydicom-data,
pydicom) and need no network. Nothing here contacts a model or data hub.
"""

from __future__ import annotations

from ..errors import SampleError
from ..progress import CancelToken, ProgressCallback, check, report
from .cache import cache_root
from .info import SampleInfo, SamplePaths

__all__ = ["SampleInfo", "SamplePaths", "cache_root", "fetch_sample", "is_available_offline", "list_samples",
           "sample_info"]


def _entry(name: str):
    from .catalog import ENTRIES

    try:
        return ENTRIES[name]
    except KeyError:
        raise SampleError(f"unknown sample {name!r}; known samples: {', '.join(ENTRIES)}") from None


def list_samples() -> list[SampleInfo]:
    """Every sample, lesion cases first; no network and no file access."""
    from .catalog import ENTRIES

    return [e.info for e in ENTRIES.values()]


def sample_info(name: str) -> SampleInfo:
    """The catalogue record of ``name``.

    Raises:
        SampleError: ``name`` is not a sample; the message lists the known ones.
    """
    return _entry(name).info


def is_available_offline(name: str) -> bool:
    """Whether ``fetch_sample(name)`` can succeed without the network (installed, or already cached)."""
    return _entry(name).offline()


def fetch_sample(
    name: str, progress: ProgressCallback | None = None, cancel: CancelToken | None = None
) -> SamplePaths:
    """Local paths of sample ``name``, downloading and caching it first if needed.

    Raises:
        SampleError: unknown name (the message lists the known ones), or the download failed or did not
            match its pinned hash (the message says which index was tried and how to set
            ``PIP_INDEX_URL`` to a reachable mirror). Nothing half-written is left in the cache.
        Cancelled: ``cancel`` was set.
    """
    entry = _entry(name)
    check(cancel)
    paths = entry.resolve(progress, cancel)
    report(progress, 1.0, f"{name} ready")
    return paths
