"""One contract, run over every detector registered under the ``anomalens.detectors`` entry point.

Like geoopt's and anomalib's shared tests: a third-party detector passes these or it is not done.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from anomalens.engine.detectors import AnomalyResult, available_detectors, get_detector_class, load_bundle
from anomalens.engine.errors import Cancelled, InvalidVolumeError, ModelError
from anomalens.engine.progress import CancelToken
from tests.phantoms import phantom_slices

DETECTORS = available_detectors()


def test_the_shipped_detectors_are_registered() -> None:
    assert "patchcore" in DETECTORS


@pytest.fixture(scope="module")
def data() -> dict[str, np.ndarray]:
    normals, _ = phantom_slices(6, 64, seed=1)
    tests, masks = phantom_slices(3, 64, seed=2, lesion=True)
    return {"normals": normals, "tests": tests, "masks": masks}


def make(name: str, seed: int = 0):
    cls = get_detector_class(name)
    return cls(config=cls.test_config(), device="cpu", seed=seed)


@pytest.fixture(scope="module", params=DETECTORS)
def fitted(request, data):
    det = make(request.param)
    t0 = time.perf_counter()
    progress: list[float] = []
    det.fit(data["normals"], progress=lambda f, m: progress.append(f))
    det._fit_seconds = time.perf_counter() - t0  # type: ignore[attr-defined]
    det._progress = progress  # type: ignore[attr-defined]
    return det


def test_fits_quickly_and_reports_progress(fitted) -> None:
    assert fitted.fitted
    assert fitted._fit_seconds < 120, "the contract's tiny config must fit in seconds"
    assert fitted._progress and all(0.0 <= f <= 1.0 for f in fitted._progress)


def test_scores_have_the_right_shapes(fitted, data) -> None:
    res = fitted.score(data["tests"])
    assert isinstance(res, AnomalyResult)
    assert res.heatmaps.shape == data["tests"].shape
    assert res.scores.shape == (len(data["tests"]),)
    assert np.isfinite(res.heatmaps).all() and np.isfinite(res.scores).all()
    if res.embeddings is not None:
        e = res.embeddings
        assert e.slice_index.max() < len(data["tests"])
        assert e.centers.shape == (len(e.points), 2)
    if res.features is not None:
        assert res.features.shape[:3] == data["tests"].shape


def test_scores_a_single_2d_slice(fitted, data) -> None:
    res = fitted.score(data["tests"][0])
    assert res.heatmaps.shape == (1, *data["tests"].shape[1:])


def test_deterministic_under_a_seed(fitted, data) -> None:
    other = make(fitted.name, seed=fitted.seed)
    other.fit(data["normals"])
    a, b = fitted.score(data["tests"]), other.score(data["tests"])
    np.testing.assert_allclose(a.heatmaps, b.heatmaps, rtol=1e-4, atol=1e-5)


def test_save_load_round_trip(fitted, data, tmp_path: Path) -> None:
    path = fitted.save(tmp_path / "model")
    assert (path / "weights.safetensors").is_file() and (path / "bundle.json").is_file()
    again = load_bundle(path, device="cpu")
    assert type(again) is type(fitted)
    a, b = fitted.score(data["tests"]), again.score(data["tests"])
    np.testing.assert_allclose(a.heatmaps, b.heatmaps, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(a.scores, b.scores, rtol=1e-5, atol=1e-6)
    with pytest.raises(ModelError, match="already exists"):
        fitted.save(path)


def test_rejects_nan_input_clearly(fitted, data) -> None:
    bad = data["tests"].copy()
    bad[0, 10, 10] = np.nan
    with pytest.raises(InvalidVolumeError, match="NaN"):
        fitted.score(bad)
    with pytest.raises(InvalidVolumeError, match="NaN"):
        make(fitted.name).fit(bad)


def test_rejects_wrong_dimensions(fitted) -> None:
    with pytest.raises(InvalidVolumeError):
        fitted.score(np.zeros((2, 3, 64, 64), np.float32))
    with pytest.raises(InvalidVolumeError):
        fitted.score(np.zeros((1, 4, 4), np.float32))


def test_honours_cancel(fitted, data) -> None:
    token = CancelToken()
    token.cancel()
    det = make(fitted.name)
    with pytest.raises(Cancelled):
        det.fit(data["normals"], cancel=token)
    assert not det.fitted
    with pytest.raises(Cancelled):
        fitted.score(data["tests"], cancel=token)


def test_cancel_midway_stops_fit(fitted, data) -> None:
    token = CancelToken()
    calls = []

    def progress(f: float, m: str) -> None:
        calls.append(f)
        if len(calls) == 1:
            token.cancel()

    det = make(fitted.name)
    with pytest.raises(Cancelled):
        det.fit(data["normals"], progress=progress, cancel=token)
    assert not det.fitted


def test_unfitted_detector_refuses_to_score(fitted, data) -> None:
    with pytest.raises(ModelError, match="not trained"):
        make(fitted.name).score(data["tests"])


def test_fine_tune_keeps_it_working(fitted, data, tmp_path: Path) -> None:
    det = load_bundle(fitted.save(tmp_path / "m"), device="cpu")
    det.fine_tune(data["normals"][:2])
    res = det.score(data["tests"])
    assert res.heatmaps.shape == data["tests"].shape and np.isfinite(res.heatmaps).all()
    assert det.training["fine_tuned_on"]["n_slices"] == 2


def test_runs_on_cpu(fitted, data) -> None:
    assert all(v.device.type == "cpu" for v in fitted.state_dict().values()), "weights left the CPU"
    res = fitted.score(data["tests"][:1])
    assert isinstance(res.heatmaps, np.ndarray) and res.heatmaps.dtype == np.float32
