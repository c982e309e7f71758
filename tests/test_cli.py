"""The existing commands through ``main([...])``: exit codes, ``--json``, one-line errors, outputs on the grid."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from anomalens.engine.cli.main import main
from anomalens.engine.outputs import read_scores_csv
from tests.phantoms import phantom_slices
from tests.test_datasets import ORIGIN, SPACING, write_volume

PATCHCORE_SET = ["--set", "input_size=64", "--set", "max_bank=256", "--set", "smoothing_sigma=1.0"]


def run_json(capsys, argv: list[str]):
    code = main([*argv, "--json"])
    out = capsys.readouterr()
    assert code == 0, out.err
    return json.loads(out.out)


def assert_one_line_error(capsys, argv: list[str]) -> str:
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("anomalens: error:"), err
    return lines[0]


@pytest.fixture(scope="module")
def scans(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("scans")
    normals, _ = phantom_slices(6, 64, seed=1)
    tests, _ = phantom_slices(4, 64, seed=2, lesion=True)
    return {"normals": write_volume(d / "normals.nii.gz", (normals * 1000).astype(np.float32)),
            "test": write_volume(d / "test.nii.gz", (tests * 1000).astype(np.float32), spacing=(0.7, 0.7, 3.0)),
            "dir": d}


def test_info_json_gives_shape_and_spacing(capsys, scans) -> None:
    info = run_json(capsys, ["info", str(scans["normals"])])
    assert info["shape"] == [6, 64, 64]
    assert info["spacing"] == pytest.approx([SPACING[2], SPACING[1], SPACING[0]])
    sel = run_json(capsys, ["info", f"{scans['normals']}#1-2"])
    assert sel["shape"] == [2, 64, 64] and sel["selected_slices"] == [1, 2]
    # the path is a token unless asked for (a folder or file name often names the patient)
    assert info["source"].startswith("<path:") and scans["normals"].name not in json.dumps(info)
    assert run_json(capsys, ["info", str(scans["normals"]), "--keep-paths"])["source"] == str(scans["normals"])


def test_info_on_a_non_scan_is_one_line_exit_2(capsys, tmp_path: Path) -> None:
    bad = tmp_path / "notes.txt"
    bad.write_text("not a scan at all\n")
    assert_one_line_error(capsys, ["info", str(bad)])
    assert_one_line_error(capsys, ["info", str(tmp_path / "missing.nii.gz")])


def test_bad_slice_selection_is_one_line(capsys, scans) -> None:
    assert "out of range" in assert_one_line_error(capsys, ["info", f"{scans['normals']}#3-9"])


def test_samples_list_json(capsys) -> None:
    rows = run_json(capsys, ["samples", "list"])
    names = {r["name"] for r in rows}
    assert {"brain1", "lung1", "breast1", "mni152"} <= names
    assert all(r["licence"] and r["provenance"] for r in rows)
    assert next(r for r in rows if r["name"] == "brain1")["has_mask"] is True


def test_detectors_json(capsys) -> None:
    rows = run_json(capsys, ["detectors"])
    pc = next(r for r in rows if r["name"] == "patchcore")
    assert pc["version"] and pc["description"]


def test_train_then_score_writes_outputs_on_the_input_grid(capsys, scans, tmp_path: Path) -> None:
    import SimpleITK as sitk

    model = tmp_path / "model"
    out = run_json(capsys, ["train", "--detector", "patchcore", "--normals", str(scans["normals"]),
                            "--out", str(model), "--device", "cpu", *PATCHCORE_SET])
    assert out["n_training_slices"] == 6 and (model / "bundle.json").is_file()
    manifest = json.loads((model / "bundle.json").read_text())
    assert manifest["bundle_version"] == 1
    assert manifest["preprocessing"]["grid"] == out["working_grid"] and out["working_grid"]["fov_mm"] > 0

    res = run_json(capsys, ["score", "--model", str(model), str(scans["test"]), "--out", str(tmp_path / "o"),
                            "--device", "cpu"])
    assert set(res["files"]) == {"heatmap", "scores"}  # an uncalibrated model: raw map, no mask
    assert res["unit"] == "raw" and res["flagged_slices"] is None and res["model"]["detector"] == "patchcore"
    # -v says what was done, in lines a log keeps ("-v adds nothing" on score, train or batch)
    import logging

    from anomalens.engine.cli.main import main

    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    keep = Keep(level=logging.INFO)
    logging.getLogger("anomalens").addHandler(keep)
    try:
        assert main(["-v", "score", "--model", str(model), str(scans["test"]), "--out", str(tmp_path / "v"),
                     "--device", "cpu"]) == 0
    finally:
        logging.getLogger("anomalens").removeHandler(keep)
        logging.getLogger("anomalens").setLevel(logging.NOTSET)
    capsys.readouterr()
    assert any(m.startswith("loaded a patchcore model (not calibrated)") for m in records), records
    assert any(m.startswith("scored ") and "torch threads" in m for m in records), records
    heat = sitk.ReadImage(res["files"]["heatmap"])
    src = sitk.ReadImage(str(scans["test"]))
    assert heat.GetSize() == src.GetSize()
    assert heat.GetSpacing() == pytest.approx(src.GetSpacing())
    assert heat.GetOrigin() == pytest.approx(src.GetOrigin())
    arr = sitk.GetArrayFromImage(heat)
    assert np.isfinite(arr).all() and arr.max() > 0
    rows = read_scores_csv(res["files"]["scores"])
    assert list(rows[0]) == ["slice", "score", "flagged", "mask_voxels", "volume_ml"]
    assert [int(r["slice"]) for r in rows] == [0, 1, 2, 3] and all(r["flagged"] == "" for r in rows)
    assert res["n_slices"] == 4 and res["seconds_per_slice"] >= 0

    part = run_json(capsys, ["score", "--model", str(model), str(scans["test"]), "--slices", "1-2",
                             "--out", str(tmp_path / "p"), "--device", "cpu"])
    rows = read_scores_csv(part["files"]["scores"])
    assert [int(r["slice"]) for r in rows] == [1, 2]
    arr = sitk.GetArrayFromImage(sitk.ReadImage(part["files"]["heatmap"]))
    assert arr.shape == (4, 64, 64) and arr[0].max() == 0 and arr[1].max() > 0

    # Models are never overwritten.
    assert "already exists" in assert_one_line_error(
        capsys, ["train", "--detector", "patchcore", "--normals", str(scans["normals"]), "--out", str(model),
                 *PATCHCORE_SET])


def test_unknown_detector_option_is_one_line(capsys, scans, tmp_path: Path) -> None:
    msg = assert_one_line_error(capsys, ["train", "--detector", "patchcore", "--normals", str(scans["normals"]),
                                         "--out", str(tmp_path / "m"), "--set", "no_such_option=1"])
    assert "no_such_option" in msg


def test_origin_is_kept_by_the_phantom_writer(scans) -> None:
    import SimpleITK as sitk

    assert sitk.ReadImage(str(scans["normals"])).GetOrigin() == pytest.approx(ORIGIN)


def test_threads_option_and_environment_set_torch_threads(capsys, monkeypatch) -> None:
    import torch

    before = torch.get_num_threads()
    try:
        monkeypatch.delenv("ANOMALENS_THREADS", raising=False)
        assert main(["--threads", "1", "detectors", "--json"]) == 0
        assert torch.get_num_threads() == 1
        torch.set_num_threads(2)
        monkeypatch.setenv("ANOMALENS_THREADS", "1")
        assert main(["detectors", "--json"]) == 0
        assert torch.get_num_threads() == 1
        capsys.readouterr()
        for bad in (["--threads", "0"], ["--threads", "many"]):
            assert main([*bad, "detectors"]) == 2
            assert "--threads must be a whole number" in capsys.readouterr().err
        monkeypatch.setenv("ANOMALENS_THREADS", "-3")
        assert main(["detectors"]) == 2
        assert "$ANOMALENS_THREADS" in capsys.readouterr().err
    finally:
        torch.set_num_threads(before)


def test_score_warns_when_the_tissue_is_wider_than_the_models_field_of_view(capsys, scans, tmp_path: Path) -> None:
    model = tmp_path / "model"
    run_json(capsys, ["train", "--detector", "patchcore", "--normals", str(scans["normals"]), "--out", str(model),
                      "--device", "cpu", *PATCHCORE_SET])
    same, _ = phantom_slices(2, 64, seed=3)
    wide = write_volume(tmp_path / "wide.nii.gz", (same * 1000).astype(np.float32), spacing=(4.0, 4.0, 3.0))
    code = main(["score", "--model", str(model), str(wide), "--out", str(tmp_path / "o"), "--json"])
    out = capsys.readouterr()
    assert code == 0
    res = json.loads(out.out)
    assert any("shrunk to fit" in w for w in res["warnings"]) and "warning:" in out.err
    # Batch scoring records the same warning in the study's manifest entry.
    from anomalens.engine.batch import Study, score_study

    record = score_study(Study("wide", str(wide)), str(model), str(tmp_path / "batch"))
    assert record["status"] == "ok" and record["warnings"] == res["warnings"]
    own = run_json(capsys, ["score", "--model", str(model), str(scans["normals"]), "--out", str(tmp_path / "o2")])
    # its own training scan: no field-of-view warning, only that these slices are no test of it
    assert [w for w in own["warnings"] if "used to fit or calibrate this model" not in w] == []
    assert own["seen_slices"] and any("no test of it" in w for w in own["warnings"])
