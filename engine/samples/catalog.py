"""The sample catalogue: every offered scan, its provenance and licence, and how to get its files."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..progress import CancelToken, ProgressCallback
from . import installed, radiomics_cases
from .info import SampleInfo, SamplePaths

Resolver = Callable[[ProgressCallback | None, CancelToken | None], SamplePaths]


@dataclass(frozen=True)
class _Entry:
    info: SampleInfo
    resolve: Resolver
    offline: Callable[[], bool]


_RADIOMICS_SOURCE = f"index:{radiomics_cases.PROJECT}=={radiomics_cases.VERSION}"
_RADIOMICS_LICENCE = "BSD-3-Clause (pyradiomics, © 2017 Harvard Medical School)"


def _radiomics_provenance(case: str) -> str:
    return (f"data/{case}_image.nrrd and data/{case}_label.nrrd of the source archive "
            f"{radiomics_cases.SDIST_FILENAME} (sha256 {radiomics_cases.SDIST_SHA256}), fetched from the "
            "package index pip is configured with; pyradiomics' test case, the archive does not document "
            "the scan's original source")


def _radiomics(case: str, modality: str, description: str) -> _Entry:
    info = SampleInfo(case, modality, description, _RADIOMICS_LICENCE, _radiomics_provenance(case), True,
                      _RADIOMICS_SOURCE)
    return _Entry(info, lambda p, c: radiomics_cases.case_paths(case, p, c), radiomics_cases.is_cached)


def _dicom(name: str, modality: str, description: str, licence: str, provenance: str, dist: str,
           relpath: str) -> _Entry:
    info = SampleInfo(name, modality, description, licence, f"{relpath} in the installed package {dist}; "
                      + provenance, False, f"installed:{dist}")
    return _Entry(info, lambda p, c: installed.dicom_file(dist, relpath), lambda: True)


_PYDICOM_DATA = "data_store/data/"
_PYDICOM = "pydicom/data/test_files/"
_NEMA = "DICOM WG04 compression test set (ftp://medical.nema.org/MEDICAL/Dicom/DataSets/WG04)"

_ENTRIES: tuple[_Entry, ...] = (
    _radiomics("brain1", "MR", "Contrast-enhanced T1-weighted brain MR with a tumour outlined: 25 axial "
               "slices of 256×256, 0.78×0.78×6.5 mm. Download of the 34 MB pyradiomics archive on first "
               "use."),
    _radiomics("lung1", "CT", "Chest CT with a lung nodule outlined: 48 axial slices of 512×512, "
               "0.57×0.57×5 mm. Download of the 34 MB pyradiomics archive on first use."),
    _radiomics("breast1", "MR", "Breast MR crop with a lesion outlined: 21 slices of 120×45, "
               "0.66×0.66×2.1 mm. Download of the 34 MB pyradiomics archive on first use."),
    _Entry(
        SampleInfo(
            "mni152", "MR",
            "MNI152 T1 template: the skull-stripped average of 152 healthy adult brains, 197×233×189 at "
            "1 mm, with its brain mask as roi_mask. A smooth, healthy reference, not a single scan.",
            "MNI ICBM152 2009 template licence (free use, keep the copyright notice of the McConnell Brain "
            "Imaging Centre, Montreal Neurological Institute; cite Fonov et al., NeuroImage 2011), shipped "
            "in nilearn (BSD-3-Clause)",
            f"{installed.MNI152_T1} in the installed package nilearn (ICBM 2009a nonlinear symmetric); the "
            f"brain mask is the template above {installed.MNI152_MASK_THRESHOLD:.0%} of its maximum, as "
            "nilearn's load_mni152_brain_mask defines it, written once into the cache",
            False, "installed:nilearn"),
        installed.mni152_paths, lambda: True),
    _dicom("ct_abdomen", "CT", "Contrast-enhanced abdominal CT, one 512×512 slice at 0.86 mm (kidneys, "
           "liver, spleen, pancreas), JPEG 2000 lossless DICOM. From a collection of pancreas-normal scans.",
           "pydicom-data: MIT; image from TCIA Pancreas-CT (CC BY 3.0)",
           "pydicom test data (pydicom issue #968), subject PANCREAS_0001 of TCIA Pancreas-CT",
           "pydicom-data", _PYDICOM_DATA + "explicit_VR-UN.dcm"),
    _dicom("mr_shoulder", "MR", "Shoulder MR, one 1024×1024 slice at 0.2 mm (6 mm thick), uncompressed "
           "DICOM with rescale and windowing. No finding is recorded.",
           "pydicom-data: MIT; image from the NEMA " + _NEMA,
           "MR2 image of the " + _NEMA, "pydicom-data", _PYDICOM_DATA + "MR2_UNCR.dcm"),
    _dicom("mr_brain_small", "MR", "Tiny 3 T T1 brain MR crop: 10 frames of 64×64 in one enhanced "
           "multi-frame DICOM file (the file carries no voxel spacing). For quick trials.",
           "pydicom-data: MIT", "pydicom test data emri_small.dcm (de-identified research scan)",
           "pydicom-data", _PYDICOM_DATA + "emri_small.dcm"),
    _dicom("ct_small", "CT", "Tiny thoracic CT slice (vertebra and lungs), 128×128 at 0.66 mm. For quick "
           "trials.", "pydicom: MIT; image from the NEMA " + _NEMA,
           "CT1 image of the " + _NEMA + ", downsized to 128×128 by the pydicom authors",
           "pydicom", _PYDICOM + "CT_small.dcm"),
    _dicom("mr_small", "MR", "Tiny MR slice, 64×64 at 0.31 mm. For quick trials.",
           "pydicom: MIT; image from the NEMA " + _NEMA,
           "MR1 image of the " + _NEMA + ", downsized to 64×64 by the pydicom authors",
           "pydicom", _PYDICOM + "MR_small.dcm"),
)

ENTRIES: dict[str, _Entry] = {e.info.name: e for e in _ENTRIES}
