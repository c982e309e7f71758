"""The viewer's Qt-free parts: window presets, reader layer data, recent files, model list, live SCR, manifest."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from anomalens.app.livecut import LiveCut, refine_scored
from anomalens.app.paths import list_bundles
from anomalens.app.reader import get_reader, volume_for_layer
from anomalens.app.recent import RecentFiles
from anomalens.app.results import ScanResults, heatmap_contrast
from anomalens.engine.errors import ConfigError
from anomalens.engine.postprocess.scr import scr_refine
from anomalens.engine.scoring import MapUnit, ModelIdentity
from anomalens.engine.volume import Volume, Window
from anomalens.engine.windows import (
    default_window_limits,
    load_presets,
    parse_presets,
    percentile_limits,
    window_to_limits,
)
from tests.io_support import phantom, write_ct_series, write_sitk

MANIFEST = Path(__file__).resolve().parents[1] / "app" / "napari.yaml"


# -- window presets -------------------------------------------------------------------------------
@pytest.mark.parametrize(("center", "width"), [(40, 80), (-600, 1500), (400, 1800), (0.5, 1.0)])
def test_window_to_limits_spans_the_width_around_the_centre(center: float, width: float) -> None:
    lo, hi = window_to_limits(center, width)
    assert hi - lo == pytest.approx(width)
    assert (lo + hi) / 2 == pytest.approx(center)


@pytest.mark.parametrize(("center", "width"), [(40, 0), (40, -5), (float("nan"), 80), (40, float("inf"))])
def test_window_to_limits_refuses_impossible_windows(center: float, width: float) -> None:
    with pytest.raises(ConfigError):
        window_to_limits(center, width)


def test_shipped_presets_cover_the_usual_ct_windows() -> None:
    table = load_presets()
    names = {p.name for p in table.presets}
    assert {"brain", "subdural", "stroke", "lung", "mediastinum", "bone", "abdomen", "liver", "soft tissue"} <= names
    assert table.get("LUNG").center < 0 < table.get("bone").center
    assert all(p.width >= 1 for p in table.presets)
    assert table.defaults["CT"] in names


def test_broken_presets_file_is_refused() -> None:
    good = {"schema_version": 1, "presets": [{"name": "a", "modality": "CT", "center": 1, "width": 10}]}
    assert parse_presets(good).get("a").width == 10
    for bad in ({**good, "schema_version": 2},
                {**good, "presets": [{"name": "a", "center": 1, "width": 0}]},
                {**good, "presets": [{"name": "a", "center": "x", "width": 10}]},
                {**good, "defaults": {"CT": "missing"}}):
        with pytest.raises(ConfigError):
            parse_presets(bad)


def test_default_window_prefers_the_file_then_the_modality_preset_then_percentiles() -> None:
    arr = np.linspace(-1000, 1000, 8 * 8 * 2, dtype=np.float32).reshape(2, 8, 8)
    own = Volume(arr, modality="CT", windows=[Window(-10, 0.0, "broken"), Window(40, 400, "file")])
    assert default_window_limits(own) == ((-160.0, 240.0), "file window file")
    ct = Volume(arr, modality="CT")
    p = load_presets().get(load_presets().defaults["CT"])
    assert default_window_limits(ct)[0] == window_to_limits(p.center, p.width)
    assert default_window_limits(ct, preset="lung")[0] == (-1350.0, 150.0)
    mr = Volume(arr, modality="MR")
    (lo, hi), src = default_window_limits(mr)
    assert src == "percentiles" and -1000 < lo < hi < 1000


def test_percentile_limits_ignore_the_air_floor_and_handle_constant_images() -> None:
    a = np.zeros((4, 32, 32), np.float32)
    a[:, 8:24, 8:24] = np.linspace(100, 200, 16 * 16).reshape(16, 16)
    lo, hi = percentile_limits(a)
    assert 100 <= lo < hi <= 200
    lo, hi = percentile_limits(np.full((3, 3), 7.0))
    assert hi - lo == pytest.approx(1.0)


# -- reader -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha"])
def test_reader_gives_spacing_as_scale(tmp_path: Path, suffix: str) -> None:
    path = write_sitk(tmp_path / f"scan{suffix}", phantom(), spacing=(0.8, 0.9, 2.5))
    reader = get_reader(str(path))
    assert reader is not None
    [(data, kwargs, kind)] = reader(str(path))
    assert kind == "image" and data.shape == (5, 16, 20)
    assert np.abs(kwargs["scale"]) == pytest.approx((2.5, 0.9, 0.8))  # mm; signs: radiological (test_app_orientation)
    lo, hi = kwargs["contrast_limits"]
    assert lo < hi
    assert kwargs["name"] == "scan"


def test_reader_opens_a_dicom_folder_with_its_own_window(tmp_path: Path) -> None:
    write_ct_series(tmp_path / "series", phantom((4, 12, 10)))
    reader = get_reader(str(tmp_path / "series"))
    assert reader is not None
    [(data, kwargs, _)] = reader(str(tmp_path / "series"))
    assert data.shape == (4, 12, 10)
    assert np.abs(kwargs["scale"]) == pytest.approx((2.5, 0.75, 0.5))
    assert kwargs["contrast_limits"] == pytest.approx((-160.0, 240.0))  # the file's window 40/400
    assert kwargs["metadata"]["modality"] == "CT"


def test_reader_declines_what_it_cannot_read(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    assert get_reader(str(tmp_path / "notes.txt")) is None
    assert get_reader(str(tmp_path / "missing.nii")) is None


def test_volume_for_layer_keeps_geometry_and_rebuilds_from_scale() -> None:
    vol = Volume(np.ones((3, 8, 8), np.float32), spacing=(0.5, 0.6, 3.0), modality="MR")

    class FakeLayer:
        name, rgb = "x", False

        def __init__(self, data, scale, metadata):
            self.data, self.scale, self.metadata = data, scale, metadata

    assert volume_for_layer(FakeLayer(vol.array, (3.0, 0.6, 0.5), {"anomalens_volume": vol})) is vol
    edited = volume_for_layer(FakeLayer(vol.array * 2, (3.0, 0.6, 0.5), {"anomalens_volume": vol}))
    assert edited.modality == "MR" and edited.spacing == vol.spacing and edited.array.max() == 2
    int_layer = FakeLayer(np.zeros((2, 8, 8), np.int16), (4.0, 1.5, 2.0), {})
    plain = volume_for_layer(int_layer)
    assert plain.spacing_zyx == (4.0, 1.5, 2.0) and plain.array.dtype == np.float32
    assert volume_for_layer(int_layer) is plain  # one Volume per layer data, so slice scores add up
    int_layer.data = np.ones((2, 8, 8), np.int16)
    assert volume_for_layer(int_layer).array.max() == 1


def test_sample_data_gives_the_scan_and_its_lesion_as_labels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import anomalens.engine.samples as samples_api
    from anomalens.app.samples import brain1
    from anomalens.engine.samples import SamplePaths

    image = write_sitk(tmp_path / "img.nrrd", phantom(), spacing=(0.78, 0.78, 6.5))
    lesion = np.zeros((5, 16, 20), np.float32)
    lesion[2, 4:8, 5:9] = 1
    mask = write_sitk(tmp_path / "lab.nrrd", lesion, spacing=(0.78, 0.78, 6.5))
    asked = []

    def fake_fetch(name: str, *args: object, **kwargs: object) -> SamplePaths:
        asked.append(name)
        return SamplePaths(image, mask)

    monkeypatch.setattr(samples_api, "fetch_sample", fake_fetch)
    (img, ikw, ikind), (lab, lkw, lkind) = brain1()
    assert asked == ["brain1"] and (ikind, lkind) == ("image", "labels")
    assert ikw["name"] == "brain1" and lkw["name"] == "brain1 lesion"
    assert ikw["scale"] == lkw["scale"] and np.abs(ikw["scale"]) == pytest.approx((6.5, 0.78, 0.78))
    assert lab.dtype == np.uint8 and lab.sum() == 16 and lab.shape == img.shape
    from anomalens.app.results import REFERENCE_OPACITY, STYLED_KEY

    # the reference's yellow from the start (napari's default colour until the Detector dock opened)
    assert lkw["metadata"][STYLED_KEY] and lkw["opacity"] == REFERENCE_OPACITY and "colormap" in lkw


# -- recent files, model list -------------------------------------------------------------------------
def test_recent_files_are_most_recent_first_unique_and_bounded(tmp_path: Path) -> None:
    recent = RecentFiles(tmp_path / "cfg" / "recent.json", max_entries=3)
    assert recent.load() == []
    for name in ("a", "b", "a", "c", "d"):
        recent.add(tmp_path / name)
    assert [p.name for p in recent.load()] == ["d", "c", "a"]
    data = json.loads((tmp_path / "cfg" / "recent.json").read_text())
    assert data["version"] == 1
    (tmp_path / "cfg" / "recent.json").write_text("{not json")
    assert recent.load() == []
    (tmp_path / "cfg" / "recent.json").write_text(json.dumps({"version": 99, "recent": ["x"]}))
    assert recent.load() == []


def test_model_list_marks_unreadable_bundles(tmp_path: Path) -> None:
    newer = tmp_path / "newer"
    newer.mkdir()
    (newer / "bundle.json").write_text(json.dumps({"schema_version": 999, "detector": "patchcore", "config": {}}))
    [entry] = list_bundles(tmp_path)
    assert entry.error and "schema version 999" in entry.error
    assert "unreadable" in entry.label
    assert list_bundles(tmp_path / "nothing-here") == []


# -- results helpers --------------------------------------------------------------------------------
def test_heatmap_contrast_starts_below_the_calibrated_threshold() -> None:
    from types import SimpleNamespace

    maps = np.zeros((2, 8, 8), np.float32)
    maps[0, :4] = np.linspace(0.1, 1.7, 32).reshape(4, 8)
    lo, hi = heatmap_contrast(maps, SimpleNamespace(threshold=0.97), MapUnit.QUANTILE)  # type: ignore[arg-type]
    assert lo < 0.97 and hi == pytest.approx(1.7)
    lo, hi = heatmap_contrast(maps, None, MapUnit.RAW)
    assert 0.1 < lo < hi <= 1.7


def test_scr_reset_gives_the_ramp_scoring_gave() -> None:
    """SCR's threshold moves set the ramp by the same rule as scoring: "Reset to calibrated" had left a ramp
    ending at 1.04 where scoring had set 1.00 (a map whose strongest score is under 1)."""
    from types import SimpleNamespace

    from anomalens.app.results import RAMP_KEY, follow_threshold

    maps = np.zeros((2, 8, 8), np.float32)
    maps[0, :4] = np.linspace(0.1, 0.999, 32).reshape(4, 8)
    cal = SimpleNamespace(threshold=0.99)
    scored = heatmap_contrast(maps, cal, MapUnit.QUANTILE)  # type: ignore[arg-type]
    heat = SimpleNamespace(contrast_limits=scored, contrast_limits_range=(0.0, 2.0), metadata={RAMP_KEY: scored})
    viewer = SimpleNamespace(layers={"h": heat})
    res = SimpleNamespace(heatmap_name="h", calibration=cal, unit=MapUnit.QUANTILE, maps=maps,
                          ramp_top=lambda: float(maps.max()))
    follow_threshold(viewer, res, 0.95)  # type: ignore[arg-type]
    assert heat.contrast_limits[0] == pytest.approx(0.95 - (0.99 - scored[0]))
    follow_threshold(viewer, res, 0.99)  # type: ignore[arg-type]  # back to the calibrated point
    assert tuple(heat.contrast_limits) == pytest.approx(scored)


def test_the_colour_ramp_ignores_the_models_own_normal_slices() -> None:
    """After a fine-tune the ramp's top came from a slice the model was fitted on (11.96), and the flagged
    lesion (0.999) got no colour on the canvas or the disk."""
    res = _fake_results(n=3)
    res.scored[:] = True
    res.maps[:] = 0.5
    res.maps[0, 10, 10] = 11.96  # a calibration slice's top
    res.maps[2, 20, 20] = 0.999  # the lesion
    res.normal_slices = frozenset({0})
    assert res.ramp_top() == pytest.approx(0.999) and float(res.ramp_maps().max()) == pytest.approx(0.999)
    res.normal_slices = frozenset({0, 1, 2})  # nothing else scored: its own normals are all there is
    assert res.ramp_top() == pytest.approx(11.96)


# -- live SCR ---------------------------------------------------------------------------------------
def _fake_results(n: int = 3, size: int = 48, seed: int = 0) -> ScanResults:
    from scipy import ndimage

    from anomalens.engine.pipeline import prepare

    rng = np.random.default_rng(seed)
    img = ndimage.gaussian_filter(rng.random((n, size, size)), (0, 2, 2)).astype(np.float32)
    vol = Volume(img, modality="MR")
    prepared = prepare(vol)
    model = ModelIdentity(detector="fake", detector_version="1", name="fake", bundle_version=0,
                          fingerprint="sha256:0", calibrated=True)
    maps = ndimage.gaussian_filter(rng.random((n, size, size)), (0, 1, 1)).astype(np.float32) * 1.2
    return ScanResults(layer_name="scan", volume=vol, prepared=prepared, model=model, unit=MapUnit.QUANTILE,
                       calibration=None, label=model.label, maps=maps, mask=np.zeros(vol.shape, np.uint8),
                       scored=np.ones(n, bool))


def test_live_cut_matches_a_full_cut_and_reuses_alpha() -> None:
    res = _fake_results()
    cut = LiveCut()
    fg = res.prepared.foreground
    for lam in (0.0, 0.2, 1.0):
        got = cut.solve(res, 1, 0.6, lam, 0.1)
        want = scr_refine(res.maps[1], 0.6, lam, 0.1, intensities=res.prepared.slices[1], foreground=fg[1])
        np.testing.assert_array_equal(got, want)
    assert cut.misses == 1 and cut.hits == 1  # λ = 0 needs no α; the second λ > 0 reused it
    cut.solve(res, 1, 0.6, 1.0, 0.2)
    assert cut.misses == 2
    m3 = cut.solve(res, 1, 0.6, 5.0, 0.1, mode="3d")
    want3 = scr_refine(res.maps, 0.6, 5.0, 0.1, intensities=res.prepared.slices, mode="3d", foreground=fg)[1]
    np.testing.assert_array_equal(m3, want3)


def test_refine_scored_covers_scored_slices_only() -> None:
    res = _fake_results(n=4)
    res.scored[2] = False
    idx, masks = refine_scored(res, 0.6, 0.5, 0.1, "3d")
    assert list(idx) == [0, 1, 3]
    fg = res.prepared.foreground
    want = scr_refine(res.maps[:2], 0.6, 0.5, 0.1, intensities=res.prepared.slices[:2], mode="3d", foreground=fg[:2])
    np.testing.assert_array_equal(masks[:2], want)


# -- the npe2 manifest ------------------------------------------------------------------------------
def test_manifest_passes_npe2_validate() -> None:
    npe2 = Path(sys.executable).with_name("npe2")
    out = subprocess.run([str(npe2), "validate", str(MANIFEST)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "valid" in out.stdout


def test_manifest_lists_every_sample_and_the_docks() -> None:
    from npe2 import PluginManifest

    from anomalens.app import samples
    from anomalens.engine.samples import list_samples

    mf = PluginManifest.from_file(MANIFEST)
    keys = {s.key for s in mf.contributions.sample_data}
    assert keys == {s.name for s in list_samples()}
    commands = {c.id: c.python_name for c in mf.contributions.commands}
    for key in keys:
        module, attr = commands[f"anomalens.sample_{key}"].split(":")
        assert module == "anomalens.app.samples" and callable(getattr(samples, attr))
    widgets = {w.display_name: commands[w.command] for w in mf.contributions.widgets}
    assert widgets == {"Detector": "anomalens.app.widgets.detector:DetectorWidget",
                       "SCR": "anomalens.app.widgets.scr:ScrWidget",
                       "Poincaré disk": "anomalens.app.widgets.poincare:PoincareWidget",
                       "Calibration": "anomalens.app.widgets.calibration:CalibrationWidget",
                       "Export": "anomalens.app.widgets.export:ExportWidget"}
    [reader] = mf.contributions.readers
    assert reader.accepts_directories and "*.nii.gz" in reader.filename_patterns


def test_the_napari_manifest_entry_point_value_resolves() -> None:
    """The exact value pyproject.toml declares under [project.entry-points."napari.manifest"]."""
    from importlib.metadata import EntryPoint, distribution

    from npe2 import PluginManifest

    ep = EntryPoint(name="anomalens", value="anomalens.app:napari.yaml", group="napari.manifest")
    mf = PluginManifest._from_entrypoint(ep, distribution("anomalens"))  # also checks name == package name
    assert mf.name == "anomalens" and mf.display_name == "AnomaLens"


def test_gui_script_target_is_the_desktop_main() -> None:
    from importlib.metadata import EntryPoint

    main = EntryPoint(name="anomalens-viewer", value="anomalens.app.desktop:main", group="gui_scripts").load()
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0


def test_the_qt_binding_keeps_python_reference_counts() -> None:
    """PySide6 6.12.0 took a reference off ``True`` per signal delivered to a Python slot, and the interpreter
    aborted at exit (bool_dealloc / none_dealloc: the crash of ``pytest -m gui`` and of closing the app). The
    check runs in a child process, which must also exit cleanly."""
    code = """
import sys
from PySide6.QtCore import QCoreApplication, QObject, Signal
app = QCoreApplication([])
class Emitter(QObject):
    fired = Signal(bool)
got = []
e = Emitter()
e.fired.connect(got.append)
before_true, before_none = sys.getrefcount(True), sys.getrefcount(None)
for _ in range(200):
    e.fired.emit(True)
got.clear()
print(sys.getrefcount(True) - before_true, sys.getrefcount(None) - before_none)
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-500:]
    true_delta, none_delta = (int(v) for v in proc.stdout.split())
    assert true_delta == 0 and abs(none_delta) < 50, proc.stdout


def test_a_sample_is_named_by_its_sample_name_not_a_hash() -> None:
    from anomalens.app.widgets.calibration import study_label

    vol = Volume(np.zeros((2, 8, 8), np.float32), modality="MR", metadata={"sample": "brain1"})
    assert study_label(vol, "f110f2a27deadbeef") == "Series sample brain1"
    assert study_label(Volume(np.zeros((2, 8, 8), np.float32)), "f110f2a27deadbeef").startswith("Study f110f2a2")


def test_modality_text_says_unknown_instead_of_dicom_other() -> None:
    from anomalens.app.naming import modality_text

    assert [modality_text(m) for m in ("MR", "ct", "OT", "", None)] == ["MR", "CT", "modality unknown",
                                                                        "modality unknown", "modality unknown"]


def test_the_score_curve_breaks_at_unscored_slices() -> None:
    from anomalens.app.widgets.score_plot import curve_points

    x, y = curve_points({8: 0.5, 10: 0.9, 11: 0.95, 3: 0.2})
    assert list(x) == [3.0, 5.5, 8.0, 9.0, 10.0, 11.0]  # a gap before 8 (4–7 unscored) and before 10 (9)
    assert np.isnan(y[[1, 3]]).all() and list(y[[0, 2, 4, 5]]) == [0.2, 0.5, 0.9, 0.95]
    x, y = curve_points({})
    assert x.size == 0 and y.size == 0


def test_an_export_target_folder_or_wrong_suffix_is_handled(tmp_path: Path) -> None:
    from anomalens.app.widgets.export import with_suffix

    assert with_suffix(tmp_path, "heatmap", "AX_CT_lorentz_v1_anomaly") == tmp_path / "AX_CT_lorentz_v1_anomaly.nii.gz"
    assert with_suffix(tmp_path / "heat", "heatmap") == tmp_path / "heat.nii.gz"
    assert with_suffix(tmp_path / "heat.nrrd", "heatmap") == tmp_path / "heat.nrrd"
    assert with_suffix(tmp_path / "v.PNG", "png") == tmp_path / "v.PNG"
    for name, kind in (("heat.png", "heatmap"), ("scores.nii.gz", "csv"), ("view.csv", "png")):
        with pytest.raises(ConfigError, match="export is written as"):
            with_suffix(tmp_path / name, kind)


def test_model_list_offers_a_fine_tuned_version_and_names_the_site_default(tmp_path: Path) -> None:
    """After a restart the fine-tuned versions of the demo model were not in the Model list at all."""
    from anomalens.engine.modelstore import ModelStore
    from tests.fakes import MeanDetector

    def fitted(seed: int) -> MeanDetector:
        return MeanDetector().fit(np.random.default_rng(seed).random((3, 16, 16), dtype=np.float32))

    base = fitted(0).save(tmp_path / "demo")
    store = ModelStore(tmp_path)
    v1 = store.save_version(fitted(1), base)
    store.save_version(fitted(2), v1.path)
    store.rollback("demo-site", 1)
    labels = {e.path.relative_to(tmp_path).as_posix(): e.label for e in list_bundles(tmp_path)}
    assert set(labels) == {"demo", "demo-site/v0001", "demo-site/v0002"}
    assert labels["demo-site/v0001"].endswith(", site default)") and "site default" not in labels["demo-site/v0002"]
