"""Healthy reference scans that ship inside installed Python packages: no network, nothing to verify.

We locate the files through the packages' installation records instead of importing the packages:
importing nilearn is slow, and its dataset functions (and pydicom's ``get_testdata_file``) may
download, which the product must never do implicitly.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
from pathlib import Path

from ..errors import SampleError
from ..fileio import atomic_dir, file_sha256
from ..progress import CancelToken, ProgressCallback, check, report
from .cache import remove_stale_temps, samples_dir
from .info import SamplePaths

log = logging.getLogger(__name__)

MNI152_T1 = "nilearn/datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
#: nilearn's definition of the MNI152 brain mask: template above 20 % of its maximum.
MNI152_MASK_THRESHOLD = 0.2


def installed_file(distribution: str, relpath: str) -> Path:
    """Path of ``relpath`` inside the installed ``distribution``.

    Raises:
        SampleError: the package is missing or does not contain the file.
    """
    try:
        dist = importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError as exc:
        raise SampleError(f"this sample ships in the Python package {distribution}, which is not installed; "
                          f"install it with: pip install {distribution}") from exc
    path = Path(str(dist.locate_file(relpath)))
    if not path.is_file():
        raise SampleError(f"the installed package {distribution} {dist.version} does not contain {relpath}; "
                          f"reinstall it with: pip install --force-reinstall {distribution}")
    return path


def mni152_paths(progress: ProgressCallback | None = None, cancel: CancelToken | None = None) -> SamplePaths:
    """The MNI152 T1 template from nilearn, and its brain mask (derived once into the cache).

    nilearn computes the mask on the fly rather than shipping it; we apply the same rule once and keep
    the result, keyed by the template's hash so that a nilearn upgrade regenerates it.
    """
    template = installed_file("nilearn", MNI152_T1)
    folder = samples_dir() / "mni152"
    mask = folder / "brain_mask.nii.gz"
    stamp = folder / "source.json"
    template_hash = file_sha256(template)
    try:
        recorded = json.loads(stamp.read_text(encoding="utf-8"))
        # the mask's own hash too: a cut-off mask passed "is_file" and failed every later open until the
        # user found and deleted the cache by hand
        if recorded.get("template_sha256") == template_hash and mask.is_file() \
                and recorded.get("mask_sha256") == file_sha256(mask):
            return SamplePaths(image=template, mask=None, roi_mask=mask)
    except (OSError, ValueError, AttributeError):
        pass
    check(cancel)
    report(progress, 0.1, "deriving the MNI152 brain mask")
    import numpy as np
    import SimpleITK as sitk

    remove_stale_temps(folder)
    with atomic_dir(folder, overwrite=True) as tmp:
        tmp.chmod(0o755)  # public data; mkdtemp's 0700 would hide a shared ANOMALENS_CACHE_DIR from others
        image = sitk.ReadImage(str(template))
        values = sitk.GetArrayViewFromImage(image)
        inside = values > MNI152_MASK_THRESHOLD * float(values.max())
        brain = sitk.GetImageFromArray(inside.astype(np.uint8))
        brain.CopyInformation(image)
        sitk.WriteImage(brain, str(tmp / mask.name), useCompression=True)
        (tmp / stamp.name).write_text(json.dumps({"template": MNI152_T1, "template_sha256": template_hash,
                                                  "mask_sha256": file_sha256(tmp / mask.name),
                                                  "threshold": MNI152_MASK_THRESHOLD}), encoding="utf-8")
    report(progress, 1.0, "MNI152 ready")
    return SamplePaths(image=template, mask=None, roi_mask=mask)


def dicom_file(distribution: str, relpath: str) -> SamplePaths:
    """A single DICOM file shipped in an installed package (healthy sample: no masks)."""
    return SamplePaths(image=installed_file(distribution, relpath))
