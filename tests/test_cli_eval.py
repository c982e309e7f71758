"""``anomalens calibrate`` and ``anomalens eval`` end to end on phantom files, with the patchcore test config."""

from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anomalens.engine.cli.cmd_eval import STABLE_KEYS
from anomalens.engine.cli.main import main
from tests.phantoms import phantom_slices
from tests.test_cli import PATCHCORE_SET, assert_one_line_error
from tests.test_datasets import make_bmad, make_mvtec, make_pair, write_volume

FAST = ["--device", "cpu", "--bootstrap", "50"]


def _quiet(argv: list[str]) -> tuple[int, str]:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = main(argv)
    return code, buf.getvalue()


def _no_nan(text: str):
    def refuse(name: str):
        raise AssertionError(f"{name} in JSON output")

    return json.loads(text, parse_constant=refuse)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("eval")
    normals, _ = phantom_slices(8, 64, seed=1)
    held_out, _ = phantom_slices(6, 64, seed=3)
    w = {"dir": d,
         "normals": write_volume(d / "normals.nii.gz", (normals * 1000).astype(np.float32)),
         "held_out": write_volume(d / "held_out.nii.gz", (held_out * 1000).astype(np.float32))}
    w["image"], w["mask"] = make_pair(d, n=4, seed=2, n_normal=3)
    w["model"] = d / "model"
    code, _ = _quiet(["train", "--detector", "patchcore", "--normals", str(w["normals"]), "--out", str(w["model"]),
                      "--device", "cpu", *PATCHCORE_SET])
    assert code == 0
    w["old_manifest"] = (w["model"] / "bundle.json").read_bytes()
    w["calibrated"] = d / "calibrated"
    code, out = _quiet(["calibrate", "--model", str(w["model"]), "--normals", str(w["held_out"]),
                        "--out", str(w["calibrated"]), "--device", "cpu", "--json"])
    assert code == 0
    w["calibrate_json"] = out
    return w


def test_calibrate_writes_a_new_version_and_leaves_the_old_one(world) -> None:
    out = _no_nan(world["calibrate_json"])
    assert (world["model"] / "bundle.json").read_bytes() == world["old_manifest"]
    new = json.loads((world["calibrated"] / "bundle.json").read_text())
    assert new["bundle_version"] == 2 and out["bundle_version"] == 2
    assert new["parent"]["path"] is None and new["parent"]["bundle_version"] == 1  # a bundle names no folder
    assert str(world["model"]) not in (world["calibrated"] / "bundle.json").read_text()
    cal = new["calibration"]
    assert cal["schema_version"] == 2 and {"normaliser", "threshold", "scr", "created"} <= set(cal)
    assert cal["scr"]["lambda"] is not None and cal["scr"]["tau"] > 0 and cal["n_slices"] == 6
    assert out["calibration"]["threshold"] == pytest.approx(cal["threshold"])
    assert out["calibration"]["scr"]["lambda"] == pytest.approx(cal["scr"]["lambda"])
    assert out["before"] is None  # the trained model had no calibration
    # Both operating points meet the false-positive budget on the normals they were calibrated on.
    assert out["after"]["fp_area"] <= 0.01 + 1e-9
    assert out["after"]["fp_area_scr"] <= 0.01 + 1e-9
    assert not any("training data" in n for n in out["notes"])


def test_recalibrating_with_fine_tune_reports_before_and_after(world, capsys) -> None:
    out3 = world["dir"] / "v3"
    code = main(["calibrate", "--model", str(world["calibrated"]), "--normals", str(world["held_out"]),
                 str(world["normals"]), "--fine-tune", "--target-fpr", "0.02", "--out", str(out3), "--device", "cpu",
                 "--json"])
    res = _no_nan(capsys.readouterr().out)
    assert code == 0 and res["bundle_version"] == 3 and res["fine_tuned"]
    assert res["n_fine_tune_slices"] + res["n_calibration_slices"] == res["n_normal_slices"] == 14
    assert res["before"] is not None and 0.0 <= res["before"]["fp_area"] <= 1.0
    assert res["after"]["fp_area"] <= 0.02 + 1e-9
    manifest = json.loads((out3 / "bundle.json").read_text())
    assert manifest["training"]["fine_tuned_on"]["n_slices"] == res["n_fine_tune_slices"]


def test_calibrating_on_the_training_scans_warns(world, capsys) -> None:
    code = main(["calibrate", "--model", str(world["model"]), "--normals", str(world["normals"]),
                 "--out", str(world["dir"] / "on_train"), "--device", "cpu"])
    text = capsys.readouterr().out
    assert code == 0
    assert "training data" in text and "too permissive" in text
    assert "had no calibration before" in text and "λ" in text


def test_calibrate_refuses_an_existing_output(world, capsys) -> None:
    msg = assert_one_line_error(capsys, ["calibrate", "--model", str(world["model"]), "--normals",
                                         str(world["held_out"]), "--out", str(world["calibrated"])])
    assert "already exists" in msg


def _eval(capsys, world, data: str, *extra: str, model: Path | None = None) -> dict:
    code = main(["eval", "--model", str(model or world["calibrated"]), "--data", data, "--json", *FAST, *extra])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    out = _no_nan(captured.out)
    missing = set(STABLE_KEYS) - set(out)
    assert not missing, missing
    return out


def test_eval_on_an_image_mask_pair(world, capsys) -> None:
    out = _eval(capsys, world, f"{world['image']}:{world['mask']}")
    assert out["n_slices"] == 7 and out["n_anomalous_slices"] == 4 and out["seconds_per_slice"] > 0
    assert out["bootstrap"] == 50 and out["confidence"] == 0.95  # what the *_ci intervals rest on
    for key in ("image_auroc", "pixel_auroc", "pixel_ap", "best_dice", "dice", "precision", "dice_scr", "fpr95"):
        assert isinstance(out[key], float) and math.isfinite(out[key]), key
    assert out["pixel_auroc"] > 0.8  # bright disc lesions are easy for a memory bank of normal patches
    assert out["pixel_auroc_ci"][0] <= out["pixel_auroc"] <= out["pixel_auroc_ci"][1]
    assert out["calibrated"] and out["scr"] and out["calibration"]["scr"]["lambda"] is not None
    assert out["unit"] == "normal-quantile"
    assert not any("fitted on" in n for n in out["notes"])
    no_scr = _eval(capsys, world, f"{world['image']}:{world['mask']}#1-3", "--no-scr")
    assert no_scr["n_slices"] == 3 and no_scr["dice_scr"] is None and no_scr["dice"] is not None
    assert any("--no-scr" in n for n in no_scr["notes"])


def test_eval_on_a_bmad_folder(world, capsys, tmp_path: Path) -> None:
    out = _eval(capsys, world, str(make_bmad(tmp_path / "bmad", n_good=3, n_bad=3)), "--reduce", "mean")
    assert out["n_slices"] == 6 and out["n_anomalous_slices"] == 3 and out["reduce"] == "mean"
    assert out["image_auroc"] is not None and out["dice"] is not None


def test_eval_on_an_mvtec_folder(world, capsys, tmp_path: Path) -> None:
    out = _eval(capsys, world, str(make_mvtec(tmp_path / "mvtec")))
    assert out["n_slices"] == 4 and out["n_anomalous_slices"] == 2
    assert any("different sizes" in n for n in out["notes"])


def test_mask_grid_mismatch_exits_2_with_one_line(world, capsys, tmp_path: Path) -> None:
    wrong = write_volume(tmp_path / "wrong.nii.gz", np.zeros((7, 32, 64), np.uint8))
    msg = assert_one_line_error(capsys, ["eval", "--model", str(world["calibrated"]), "--data",
                                         f"{world['image']}:{wrong}"])
    assert "does not match" in msg


def test_empty_masks_give_null_metrics_with_notes(world, capsys, tmp_path: Path) -> None:
    empty = write_volume(tmp_path / "empty.nii.gz", np.zeros((8, 64, 64), np.uint8))
    msg = assert_one_line_error(capsys, ["eval", "--model", str(world["calibrated"]), "--data",
                                         f"{world['normals']}:{empty}", *FAST])
    assert "every slice of this data (8) was used to fit or calibrate the model" in msg  # not a number
    out = _eval(capsys, world, f"{world['normals']}:{empty}", "--include-seen")
    for key in ("image_auroc", "image_ap", "pixel_auroc", "pixel_ap", "best_dice", "fpr95"):
        assert out[key] is None, key
    notes = " ".join(out["notes"])
    assert "no anomalous" in notes and "masks are empty" in notes
    assert "fitted on" in notes  # these are the model's training scans


def test_uncalibrated_model_has_null_dice_with_a_note(world, capsys) -> None:
    out = _eval(capsys, world, f"{world['image']}:{world['mask']}", model=world["model"])
    assert out["dice"] is None and out["precision"] is None and out["dice_scr"] is None
    assert out["pixel_auroc"] is not None and out["calibrated"] is False
    assert any("anomalens calibrate" in n for n in out["notes"])
    code = main(["eval", "--model", str(world["model"]), "--data", f"{world['image']}:{world['mask']}", *FAST])
    text = capsys.readouterr().out
    assert code == 0 and "threshold-tuned on the test data (upper bound)" in text


def test_report_writes_all_files(world, capsys, tmp_path: Path) -> None:
    rep = tmp_path / "report"
    out = _eval(capsys, world, f"{world['image']}:{world['mask']}", "--report", str(rep))
    assert out["report"] == str(rep)
    for name in ("metrics.json", "metrics.csv", "metrics.md", "roc.png", "pr.png", "overlay_00.png"):
        assert (rep / name).is_file(), name
    overlays = sorted(rep.glob("overlay_*.png"))
    assert 1 <= len(overlays) <= 6
    for png in [rep / "roc.png", rep / "pr.png", *overlays]:
        with Image.open(png) as img:
            arr = np.asarray(img.convert("RGB"))
        assert arr.std() > 5, f"{png.name} is blank"
    saved = json.loads((rep / "metrics.json").read_text())
    assert saved["pixel_auroc"] == pytest.approx(out["pixel_auroc"])
    assert "upper bound" in (rep / "metrics.md").read_text()


def test_eval_measures_the_masks_score_writes_and_cancel_stops(world, tmp_path: Path) -> None:
    """Dice and Dice with SCR are computed from the very masks ``anomalens score`` writes for the scan."""
    from anomalens.engine.datasets import load_eval_data
    from anomalens.engine.detectors import load_bundle
    from anomalens.engine.errors import Cancelled
    from anomalens.engine.evaluation import evaluate_model
    from anomalens.engine.io import read_scan
    from anomalens.engine.metrics.core import dice
    from anomalens.engine.progress import CancelToken

    det = load_bundle(world["calibrated"], device="cpu")
    data = load_eval_data(f"{world['image']}:{world['mask']}")
    ev = evaluate_model(det, data, n_boot=0)
    code, _ = _quiet(["score", "--model", str(world["calibrated"]), str(world["image"]), "--out",
                      str(tmp_path / "s"), "--device", "cpu"])
    assert code == 0
    written_scr = read_scan(tmp_path / "s" / "mask_scr.nii.gz").array > 0
    written_plain = read_scan(tmp_path / "s" / "mask.nii.gz").array > 0
    np.testing.assert_array_equal(ev.scr_mask, written_scr)
    np.testing.assert_array_equal(ev.mask, written_plain)
    truth = read_scan(world["mask"]).array > 0
    assert ev.metrics["dice_scr"] == pytest.approx(dice(written_scr, truth, foreground=ev.foreground))
    assert ev.metrics["dice"] is not None and ev.metrics["dice_scr"] is not None
    token = CancelToken()
    token.cancel()
    with pytest.raises(Cancelled):
        evaluate_model(det, data, n_boot=0, cancel=token)


def test_eval_refuses_an_absurd_bootstrap_in_one_line(world, capsys) -> None:
    """10⁸ resamples grew by 0.75 GB every 5 s until the kernel killed the process (exit 137, no message)."""
    msg = assert_one_line_error(capsys, ["eval", "--model", str(world["calibrated"]), "--data",
                                         f"{world['image']}:{world['mask']}", "--bootstrap", "100000000"])
    assert "--bootstrap must be between 0 and 20000" in msg
