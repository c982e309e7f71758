"""The napari reader: DICOM folders and files, NIfTI, NRRD and MetaImage as image layers.

Reading goes through ``anomalens.engine.io.read_scan`` (the path registered with ``engine.logredact`` first,
so no log line shows it or the names in it); this module only turns a ``Volume`` into napari
layer data: the voxel grid is placed radiologically (``orientation.layer_geometry``: millimetre scale, the
patient's anterior up and left on the screen's right, whatever the file's voxel order) and the display window
becomes its contrast limits (the file's own window, else a preset for the modality). The ``Volume`` rides
along in the layer's metadata so the docks score exactly what was read, geometry included.

napari's own reader also claims NIfTI, NRRD, MetaImage, DICOM files and every folder, and opens them at
scale (1, 1, 1) or fails. :func:`prefer_anomalens_reader` (run when the plugin is activated, when the
AnomaLens window starts and whenever this reader reads) records AnomaLens as napari's preferred reader for
those patterns in napari's ``extension2reader`` setting, never over a preference the user set; a folder
that is not a scan (a Zarr store, a folder of PNGs) is handed to the one other reader napari would have
used (:func:`get_reader`).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..engine.errors import AnomaLensError, InvalidVolumeError
from ..engine.volume import Volume
from .orientation import install_orientation_overlay, layer_geometry

#: Key of the source ``Volume`` in an image layer's metadata.
VOLUME_KEY = "anomalens_volume"
#: Key saying which role a layer plays for AnomaLens ("scan", "heatmap", "mask", "lesion").
ROLE_KEY = "anomalens_role"

#: ``id()`` of the layer data a stored ``Volume`` was built from (when it is a converted copy).
_DATA_ID = "anomalens_volume_data_id"

LayerData = tuple[Any, dict[str, Any], str]
_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd", ".dcm", ".dicom", ".ima")
#: The npe2 plugin name (``napari.yaml``).
PLUGIN_NAME = "anomalens"
#: napari ``extension2reader`` patterns AnomaLens's reader takes: our suffixes (either case: napari matches the
#: real path, case-sensitively on Linux) and folders (napari matches a folder as its path with a trailing
#: separator).
PREFERRED_PATTERNS = (*(f"*{s}" for s in _SUFFIXES), *(f"*{s.upper()}" for s in _SUFFIXES), f"*{os.sep}")


def image_layer_data(volume: Volume, name: str | None = None, preset: str | None = None) -> LayerData:
    """A napari image-layer tuple for ``volume`` with its spacing as scale and its window as contrast."""
    from ..engine.windows import default_window_limits

    limits, origin = default_window_limits(volume, preset)
    meta = {VOLUME_KEY: volume, ROLE_KEY: "scan", "window_source": origin, "modality": volume.modality}
    kwargs = {
        "name": name or _layer_name(volume),
        **layer_geometry(volume),  # scale, translate, units: radiological orientation, in millimetres
        "contrast_limits": limits,
        "colormap": "gray",
        "metadata": meta,
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
    layers = [image_layer_data(read_scan(Path(p)))]
    on_first_use()
    return layers


def on_first_use() -> None:
    """Reader preference and canvas letters for napari users (no AnomaLens window set them up).

    Only on the UI thread: napari's ``viewer.open`` reads there; the AnomaLens window reads in a worker and
    sets both up itself.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    prefer_anomalens_reader()
    try:
        import napari

        viewer = napari.current_viewer()
    except (ImportError, RuntimeError):
        viewer = None
    if viewer is not None:
        install_orientation_overlay(viewer)


def get_reader(path: str | list[str]) -> Callable[[Any], list[LayerData]] | None:
    """npe2 reader hook: our reader if the engine knows the path.

    Otherwise, for a folder, the reader napari would have used had AnomaLens not claimed it (our folder
    preference matches every folder), when there is exactly one; else None (napari then says no reader could open it
    and, in its window, offers the others).
    """
    from ..engine.io import reader_for

    p = path[0] if isinstance(path, list) else path
    try:
        reader_for(Path(p))
    except (AnomaLensError, OSError):
        # Only a folder (our preference claims every folder) goes on to another reader; a file we do not read
        # was never routed to us by the preference, or is one of ours that is broken or missing.
        return _other_reader(str(p)) if Path(p).is_dir() else None
    return read_layers


def _other_reader(path: str) -> Callable[[Any], list[LayerData]] | None:
    try:
        from npe2 import PluginManager
    except ImportError:  # pragma: no cover - napari always brings npe2
        return None
    others = {r.plugin_name for r in PluginManager.instance().iter_compatible_readers([path])
              if r.plugin_name != PLUGIN_NAME}
    if len(others) != 1:
        return None
    plugin = others.pop()

    def read_with_other(p: str | list[str]) -> list[LayerData]:
        from npe2 import read

        return read([p] if isinstance(p, str | os.PathLike) else list(p), stack=False, plugin_name=plugin)

    return read_with_other


def prefer_anomalens_reader() -> list[str]:
    """Make AnomaLens napari's preferred reader for the scans it reads; returns the patterns added.

    napari offers every compatible reader and, with several and no preference, asks (in its window) or
    raises (``viewer.open``); its own reader claims our formats and opens them without their geometry. A
    pattern the user already gave a reader keeps it.
    """
    try:
        from napari.settings import get_settings
    except ImportError:  # pragma: no cover - napari is a dependency of the app
        return []
    plugins = get_settings().plugins
    current = dict(plugins.extension2reader)
    added = [p for p in PREFERRED_PATTERNS if p not in current]
    if added:
        plugins.extension2reader = {**current, **dict.fromkeys(added, PLUGIN_NAME)}
    return added


def on_activate(_context: Any = None) -> None:
    """npe2 ``on_activate`` hook (``napari.yaml``): the first use of any AnomaLens command in napari."""
    prefer_anomalens_reader()


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
        vol = _volume_from_source(layer, data)
        if vol is None:
            scale = [abs(float(s)) for s in layer.scale]  # a flipped axis (negative scale) keeps its spacing
            scale = [1.0] * (3 - len(scale)) + scale
            vol = Volume(np.asarray(data, dtype=np.float32), spacing=(scale[2], scale[1], scale[0]),
                         modality=str(meta.get("modality", "OT")))
            if np.ndim(data) == 3 and all(s == 1.0 for s in scale):
                vol.warnings.append(f"layer {layer.name!r} carries no spacing (scale 1 on every axis): volumes in "
                                    "mL and the model's field of view take its pixels as 1 mm; open the scan with "
                                    "AnomaLens's reader to score it in millimetres")
    # Remember it for this layer's data, so scoring slice after slice works on one Volume.
    meta[VOLUME_KEY], meta[_DATA_ID] = vol, id(data)
    return vol


def _volume_from_source(layer: Any, data: Any) -> Volume | None:
    """The scan's own geometry, read from the file another reader opened the layer from (None if not ours).

    napari's own reader opens NIfTI, NRRD and MetaImage at scale 1 and keeps no orientation or modality:
    scored as it is, a brain's 0.78 mm pixels count as 1 mm (lesion volumes off by 1.6×) and the model's field
    of view is misjudged. When the layer's source is a file this reader reads and its voxels are the layer's,
    the file's ``Volume`` (spacing, direction, modality, study key) is used with the layer's data.
    """
    from ..engine.io import read_scan

    path = getattr(getattr(layer, "source", None), "path", None)
    if not path or getattr(getattr(layer, "source", None), "reader_plugin", None) == PLUGIN_NAME:
        return None
    source = Path(path)
    if not (source.is_dir() or source.name.lower().endswith(_SUFFIXES)):
        return None
    try:
        read = read_scan(source)
    except (AnomaLensError, OSError, ValueError, MemoryError):
        return None
    array = np.asarray(data, dtype=np.float32)
    if tuple(read.shape) != tuple(array.shape) or not np.array_equal(read.array, array):
        return None  # not the same voxels in the same order: the file tells nothing sure about this layer
    vol = read  # the same voxels, read once more: keep this copy, with the file's geometry
    spacing = " × ".join(f"{s:.3g}" for s in vol.spacing)
    vol.warnings.append(f"layer {layer.name!r} was opened by another reader, which keeps no spacing: AnomaLens "
                        f"took the scan's geometry ({spacing} mm) from its file; open it with AnomaLens's reader to "
                        "see it in millimetres and in radiological orientation")
    return vol
