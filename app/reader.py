"""The napari reader: DICOM folders and files, NIfTI, NRRD and MetaImage as image layers.

Reading goes through ``anomalens.engine.io.read_scan`` (the path registered with ``engine.logredact`` first,
so no log line shows it or the names in it); this module only turns a ``Volume`` into napari
layer data: the voxel spacing becomes the layer's ``scale`` (so millimetres are millimetres on screen) and
the display window its contrast limits (the file's own window, else a preset for the modality). The
``Volume`` rides along in the layer's metadata so the docks score exactly what was read, geometry included.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..engine.errors import AnomaLensError, InvalidVolumeError
from ..engine.volume import Volume

#: Key of the source ``Volume`` in an image layer's metadata.
VOLUME_KEY = "anomalens_volume"
#: Key saying which role a layer plays for AnomaLens ("scan", "heatmap", "mask", "lesion").
ROLE_KEY = "anomalens_role"

#: ``id()`` of the layer data a stored ``Volume`` was built from (when it is a converted copy).
_DATA_ID = "anomalens_volume_data_id"

LayerData = tuple[Any, dict[str, Any], str]
_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd", ".dcm", ".dicom", ".ima")


def image_layer_data(volume: Volume, name: str | None = None, preset: str | None = None) -> LayerData:
    """A napari image-layer tuple for ``volume`` with its spacing as scale and its window as contrast."""
    from ..engine.windows import default_window_limits

    limits, origin = default_window_limits(volume, preset)
    meta = {VOLUME_KEY: volume, ROLE_KEY: "scan", "window_source": origin, "modality": volume.modality}
    kwargs = {
        "name": name or _layer_name(volume),
        "scale": volume.spacing_zyx,
        "contrast_limits": limits,
        "colormap": "gray",
        "metadata": meta,
        "units": ("mm", "mm", "mm"),
    }
    return (volume.array, kwargs, "image")


def _layer_name(volume: Volume) -> str:
    if volume.source is None:
        return "scan"
    name = Path(volume.source).name
    for suffix in (".nii.gz", *_SUFFIXES):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)] or name
    return name


def read_layers(path: str | Path | list[str | Path]) -> list[LayerData]:
    """Read one scan (or the first of several paths) into a list with one image-layer tuple."""
    from ..engine.io import read_scan
    from ..engine.logredact import remember

    p = path[0] if isinstance(path, list) else path
    remember(p)  # before reading: an error or a log line naming it shows a token (folders carry patients' names)
    return [image_layer_data(read_scan(Path(p)))]


def get_reader(path: str | list[str]) -> Callable[[Any], list[LayerData]] | None:
    """npe2 reader hook: our reader if the engine knows the path, else None (napari tries others)."""
    from ..engine.io import reader_for

    p = path[0] if isinstance(path, list) else path
    try:
        reader_for(Path(p))
    except (AnomaLensError, OSError):
        return None
    return read_layers


def volume_for_layer(layer: Any) -> Volume:
    """The ``Volume`` behind an image layer: the one our reader stored, else one built from its data and scale.

    Raises:
        InvalidVolumeError: the layer is RGB or has more than three dimensions.
    """
    from ..engine.logredact import remember

    # Any reader's file (napari's own included): the docks' log lines name the layer, named after that file.
    remember(getattr(getattr(layer, "source", None), "path", None))
    meta = getattr(layer, "metadata", None)
    meta = meta if isinstance(meta, dict) else {}
    vol = meta.get(VOLUME_KEY)
    data = layer.data
    if getattr(layer, "rgb", False) or np.ndim(data) not in (2, 3):
        raise InvalidVolumeError(f"layer {layer.name!r} is not a grey-level 2-D or 3-D image")
    if isinstance(vol, Volume) and (vol.array is data or meta.get(_DATA_ID) == id(data)):
        return vol
    if isinstance(vol, Volume) and (tuple(vol.shape) == tuple(np.shape(data)[-3:])
                                    or (np.ndim(data) == 2 and vol.shape[0] == 1)):
        vol = vol.with_array(np.asarray(data, dtype=np.float32).reshape(vol.shape))
    else:
        scale = [float(s) for s in layer.scale]
        scale = [1.0] * (3 - len(scale)) + scale
        vol = Volume(np.asarray(data, dtype=np.float32), spacing=(scale[2], scale[1], scale[0]),
                     modality=str(meta.get("modality", "OT")))
    # Remember it for this layer's data, so scoring slice after slice works on one Volume.
    meta[VOLUME_KEY], meta[_DATA_ID] = vol, id(data)
    return vol
