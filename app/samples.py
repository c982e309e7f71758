"""napari sample data: the engine's registry samples as image layers, expert lesion masks as labels.

Each sample has a module attribute named after it (``brain1``, ``mni152``, …) because an npe2 sample
contribution names one command per sample; ``tests/test_app_plugin.py`` checks that the manifest and
``list_samples()`` stay in step.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..engine.volume import Volume
from .orientation import layer_geometry
from .reader import ROLE_KEY, LayerData, image_layer_data, on_first_use


def _labels(volume: Volume, name: str, role: str, visible: bool = True, scan: Volume | None = None) -> LayerData:
    """A labels layer, on exactly the scan's geometry when it is on the scan's grid (files round it differently)."""
    arr = np.rint(np.nan_to_num(volume.array)).astype(np.int32)
    arr = arr.astype(np.uint8) if arr.min() >= 0 and arr.max() < 256 else arr
    grid = scan if scan is not None and _same_grid(scan, volume) else volume
    kwargs: dict = {"name": name, **layer_geometry(grid), "opacity": 0.5, "visible": visible,
                    "metadata": {ROLE_KEY: role}}
    if role == "lesion":  # the reference colour from the start (it came only once the Detector dock opened)
        from .results import REFERENCE_COLOR, REFERENCE_OPACITY, STYLED_KEY, labels_colormap

        kwargs.update(colormap=labels_colormap(REFERENCE_COLOR), opacity=REFERENCE_OPACITY)
        kwargs["metadata"][STYLED_KEY] = True
    return (arr, kwargs, "labels")


def _same_grid(a: Volume, b: Volume) -> bool:
    return a.shape == b.shape and all(np.allclose(getattr(a, k), getattr(b, k), atol=1e-4)
                                      for k in ("spacing", "origin", "direction"))


def load_sample(name: str) -> list[LayerData]:
    """Layers of sample ``name``: the scan, then its lesion mask and its region mask when it has them.

    Raises:
        SampleError: unknown sample or a failed download (napari shows the message).
    """
    from ..engine.io import read_scan
    from ..engine.logredact import remember
    from ..engine.samples import fetch_sample, sample_info

    paths = fetch_sample(name)
    for p in (paths.image, paths.mask, paths.roi_mask):
        remember(p)
    # NIfTI and NRRD carry no modality: the catalogue knows it (as ``sample:NAME`` in the CLI), else "OT"
    volume = read_scan(paths.image, modality=sample_info(name).modality)
    layers = [image_layer_data(volume, name=name)]
    if paths.mask is not None:
        layers.append(_labels(read_scan(paths.mask), f"{name} lesion", "lesion", scan=volume))
    if paths.roi_mask is not None:
        layers.append(_labels(read_scan(paths.roi_mask), f"{name} region", "region", visible=False, scan=volume))
    on_first_use()
    return layers


def _loader(name: str) -> Callable[[], list[LayerData]]:
    def load() -> list[LayerData]:
        return load_sample(name)

    load.__name__ = load.__qualname__ = name
    load.__doc__ = f"Sample {name!r} from the AnomaLens registry."
    return load


brain1 = _loader("brain1")
lung1 = _loader("lung1")
breast1 = _loader("breast1")
mni152 = _loader("mni152")
ct_abdomen = _loader("ct_abdomen")
mr_shoulder = _loader("mr_shoulder")
mr_brain_small = _loader("mr_brain_small")
ct_small = _loader("ct_small")
mr_small = _loader("mr_small")
