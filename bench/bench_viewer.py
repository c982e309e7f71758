"""Slider-to-mask latency of the SCR dock on a 256² slice (target ≤ 50 ms), with the real napari widgets.

Run under a display: ``xvfb-run -a .venv/bin/python bench/bench_viewer.py``. The scan is a 256² phantom
stack with normalised-score-like maps; each move sets a slider the way a drag does. Two times per move:
until the mask layer holds the new cut (the slot chain: state, cached-α graph cut, layer update), and
until the canvas has been repainted (adds the OpenGL draw, which under xvfb is software rendering and
says little about a workstation's GPU). Prints the median and 90th percentile of 50 moves.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

TARGET_MS = 50.0


def _phantom(n: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Textured ellipses in air with a bright round lesion (like tests/phantoms.py, without importing tests)."""
    from scipy import ndimage

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size - 0.5
    head = (yy / 0.38) ** 2 + (xx / 0.3) ** 2 < 1
    lesion = (yy - 0.05) ** 2 + (xx + 0.05) ** 2 < 0.08**2
    out = np.zeros((n, size, size), np.float32)
    for i in range(n):
        tex = ndimage.gaussian_filter(rng.standard_normal((size, size)).astype(np.float32), 2) * 0.15
        out[i] = np.clip(np.where(head, 0.5 + tex, 0.0) + 0.45 * lesion, 0, 1)
    return out, np.broadcast_to(lesion, out.shape)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--moves", type=int, default=50)
    args = parser.parse_args()

    import napari
    from qtpy.QtWidgets import QApplication
    from scipy import ndimage

    from anomalens.app.reader import image_layer_data
    from anomalens.app.results import ScanResults, show_results
    from anomalens.app.state import get_state
    from anomalens.app.widgets.scr import ScrWidget
    from anomalens.engine.calibration import Calibration, ScrSettings
    from anomalens.engine.pipeline import prepare
    from anomalens.engine.postprocess.normalise import ScoreNormaliser
    from anomalens.engine.scoring import MapUnit, ModelIdentity
    from anomalens.engine.volume import Volume

    slices, lesions = _phantom(3, args.size)
    volume = Volume(slices, modality="MR")
    viewer = napari.Viewer(show=True)
    data, kwargs, _ = image_layer_data(volume, name="scan")
    viewer.add_image(data, **kwargs)
    widget = ScrWidget(viewer)
    viewer.window.add_dock_widget(widget)

    rng = np.random.default_rng(0)
    normaliser = ScoreNormaliser().fit(rng.random(10_000).astype(np.float32))
    calibration = Calibration(normaliser=normaliser, threshold=0.99,
                              scr=ScrSettings(threshold=0.9, lam=0.5, tau=0.1, temperature=0.05))

    class Model:  # a calibrated model as far as the dock is concerned
        def __init__(self) -> None:
            self.calibration = calibration

    state = get_state(viewer)
    model = Model()
    ident = ModelIdentity(detector="bench", detector_version="1", name="bench", bundle_version=0,
                          fingerprint="sha256:bench", calibrated=True)
    noise = ndimage.gaussian_filter(rng.random(slices.shape), (0, 2, 2)).astype(np.float32)
    res = ScanResults(layer_name="scan", volume=volume, prepared=prepare(volume), model=ident, unit=MapUnit.QUANTILE,
                      calibration=calibration, label=ident.label,
                      maps=np.clip(noise * 1.1 + 0.6 * lesions, 0, 2).astype(np.float32),
                      mask=np.zeros(volume.shape, np.uint8), scored=np.ones(len(slices), bool), detector=model)
    state.set_model(model, None)  # type: ignore[arg-type]
    state.add_results(res)
    show_results(viewer, res)
    state.select_results(res)
    viewer.dims.set_point(0, 1)
    QApplication.processEvents()

    mask_layer = viewer.layers[res.mask_name]
    sweeps = (("λ", widget.lam_slider, np.linspace(0.0, widget.lam_slider.maximum(), args.moves)),
              ("threshold", widget.threshold_slider, np.linspace(0.7, 1.2, args.moves)),
              ("τ (α recomputed)", widget.tau_slider, np.linspace(0.05, 0.3, args.moves)))
    handler: dict[str, list[float]] = {name: [] for name, _, _ in sweeps}
    drawn: dict[str, list[float]] = {name: [] for name, _, _ in sweeps}
    for name, slider, values in sweeps:
        state.reset_scr()
        QApplication.processEvents()
        for v in values:
            t0 = time.perf_counter()
            slider.setValue(float(v))  # the slot chain: state update, cut, write into the labels layer
            t1 = time.perf_counter()
            QApplication.processEvents()  # the canvas repaint that shows it
            t2 = time.perf_counter()
            handler[name].append(1000 * (t1 - t0))
            drawn[name].append(1000 * (t2 - t0))
    assert mask_layer.data[1].any(), "the benchmark produced an empty mask"

    print(f"SCR slider → mask on a {args.size}² slice, median (p90) of {args.moves} moves; "
          f"target ≤ {TARGET_MS:.0f} ms for λ and threshold moves")
    print(f"  {'move':<18} {'mask updated':>20} {'… and repainted':>20}")
    for name, _, _ in sweeps:
        h, d = handler[name], drawn[name]
        verdict = "" if name.startswith("τ") else ("OK" if statistics.median(h) <= TARGET_MS else "OVER TARGET")
        print(f"  {name:<18} {statistics.median(h):9.1f} ms ({np.percentile(h, 90):5.1f}) "
              f"{statistics.median(d):9.1f} ms ({np.percentile(d, 90):5.1f})   {verdict}")
    print("  (repaint time depends on the OpenGL driver: under xvfb it is software rendering)")
    viewer.close()


if __name__ == "__main__":
    main()
