"""The two records the sample API hands out: what a sample is, and where its files are on disk."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class SampleInfo:
    """What a sample is, shown before anything is fetched.

    Attributes:
        name: the identifier passed to ``fetch_sample`` (``brain1``, ``mni152``, ...).
        modality: DICOM-style modality, ``"CT"`` or ``"MR"``.
        description: one or two sentences for a user choosing a sample.
        licence: the terms the scan is distributed under.
        provenance: where the bytes come from, precisely enough to check them independently.
        has_mask: whether ``SamplePaths.mask`` is an expert lesion segmentation.
        source: ``"index:<project>==<version>"`` for a download from the pip-configured package index,
            ``"installed:<distribution>"`` for a file inside an installed Python package (no network).
    """

    name: str
    modality: str
    description: str
    licence: str
    provenance: str
    has_mask: bool
    source: str


@dataclass(frozen=True)
class SamplePaths:
    """Local files of a fetched sample.

    Attributes:
        image: the scan (NRRD, NIfTI or a DICOM file).
        mask: the lesion label map on the image's grid, or ``None`` for a healthy sample.
        roi_mask: the region a detector should look at (for ``mni152`` the brain), never a lesion; ``None``
            when the sample does not come with one.
    """

    image: Path
    mask: Path | None = None
    roi_mask: Path | None = None
