"""One result everywhere: ``anomalens score``, batch scoring, ``anomalens eval`` and the engine's ``score_scan``
give the same map, masks and slice scores for one model and one scan; the typed calibration migrates old
bundles; a scan unlike the training data is warned about.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from anomalens.engine.cli.main import main
from anomalens.engine.io import read_scan
from anomalens.engine.outputs import read_scores_csv
from tests.test_cli import PATCHCORE_SET, run_json

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def brain_model(tmp_path_factory) -> dict[str, Path]:
    """A small PatchCore trained on brain1's first lesion-free slices, calibrated on its last ones."""
    d = tmp_path_factory.mktemp("one-result")
    model, calibrated = d / "model", d / "calibrated"
    assert main(["train", "--detector", "patchcore", "--normals", "sample:brain1#0-3", "--out", str(model),
                 "--device", "cpu", *PATCHCORE_SET]) == 0
    assert main(["calibrate", "--model", str(model), "--normals", "sample:brain1#21-24", "--out", str(calibrated),
                 "--device", "cpu"]) == 0
    return {"dir": d, "model": model, "calibrated": calibrated}


def test_calibrated_score_writes_masks_and_a_scores_table(brain_model, capsys) -> None:
    out = brain_model["dir"] / "scored"
    res = run_json(capsys, ["score", "--model", str(brain_model["calibrated"]), "sample:brain1", "--out", str(out)])
    assert set(res["files"]) == {"heatmap", "mask", "mask_scr", "scores"}
    assert res["unit"] == "normal-quantile" and res["mask"] == "scr" and res["model"]["bundle_version"] == 2
    heat = read_scan(res["files"]["heatmap"])
    mask, mask_scr = (read_scan(res["files"][k]).array > 0 for k in ("mask", "mask_scr"))
    assert heat.shape == mask.shape == mask_scr.shape == (25, 256, 256)
    # The plain mask is the calibrated threshold on the map, inside the tissue; nothing outside it.
    cal_threshold = res["threshold"]
    assert mask.any() and not (mask & (heat.array <= cal_threshold)).any()
    rows = read_scores_csv(res["files"]["scores"])
    assert list(rows[0]) == ["slice", "score", "flagged", "mask_voxels", "volume_ml"] and len(rows) == 25
    voxel_ml = float(np.prod(heat.spacing)) / 1000.0
    for r in rows:
        z = int(r["slice"])
        assert int(r["mask_voxels"]) == int(mask_scr[z].sum())
        assert r["flagged"] == str(int(mask_scr[z].any()))
        assert float(r["volume_ml"]) == pytest.approx(mask_scr[z].sum() * voxel_ml, rel=1e-5, abs=1e-9)
    assert res["flagged_slices"] == [int(r["slice"]) for r in rows if r["flagged"] == "1"]
    assert res["lesion_volume_ml"] == pytest.approx(mask_scr.sum() * voxel_ml, rel=1e-4)
    header = [ln for ln in Path(res["files"]["scores"]).read_text().splitlines() if ln.startswith("#")]
    assert any("normal-quantile" in ln for ln in header) and any(res["model"]["fingerprint"] in ln for ln in header)
    import nibabel

    assert b"normal quantile" in bytes(nibabel.load(res["files"]["heatmap"]).header["descrip"])


def test_cli_batch_and_engine_give_the_same_result_voxel_for_voxel(brain_model, capsys) -> None:
    import torch

    from anomalens.app.results import score_for_viewer
    from anomalens.engine.batch import run_batch, study_id
    from anomalens.engine.detectors import load_bundle
    from anomalens.engine.pipeline import load_volume
    from anomalens.engine.scoring import score_scan

    # One torch thread everywhere: float sums are ordered by the thread count (differences ~1e-6), which no
    # code path should be blamed for; the CLI, a batch worker and the engine call are otherwise the same.
    model, d = brain_model["calibrated"], brain_model["dir"]
    spec = "sample:brain1#8-16"
    cli = run_json(capsys, ["score", "--threads", "1", "--model", str(model), spec, "--out", str(d / "cli")])
    summary = run_batch(model, [spec, "sample:brain1#0-2"], d / "batch", workers=1, processes=False, threads=1)
    assert len(summary.ok) == 2 and not summary.failed
    manifest = json.loads((d / "batch" / "manifest.json").read_text())
    rec = manifest["studies"][study_id(spec)]
    assert rec["model"]["fingerprint"] == cli["model"]["fingerprint"] == manifest["model_fingerprint"]
    torch.set_num_threads(1)
    engine = score_scan(load_bundle(model), load_volume(spec))
    viewer = score_for_viewer(load_bundle(model), load_volume(spec))  # the Detector dock's worker, without Qt
    for key, array in (("heatmap", engine.map), ("mask", engine.mask), ("mask_scr", engine.mask_scr)):
        from_cli = read_scan(cli["files"][key]).array
        from_batch = read_scan(d / "batch" / rec["outputs"][key]).array
        np.testing.assert_array_equal(from_cli, from_batch, err_msg=key)
        np.testing.assert_array_equal(from_cli, array.astype(from_cli.dtype), err_msg=key)
    np.testing.assert_array_equal(viewer.maps, read_scan(cli["files"]["heatmap"]).array)
    np.testing.assert_array_equal(viewer.mask > 0, read_scan(cli["files"]["mask_scr"]).array > 0)
    assert viewer.slice_scores == {s.z: s.score for s in engine.slices}
    assert (d / "cli" / "scores.csv").read_text() == (d / "batch" / rec["outputs"]["scores"]).read_text()
    assert rec["flagged_slices"] == cli["flagged_slices"] and rec["unit"] == cli["unit"]


def test_eval_gives_dice_from_the_masks_score_makes(brain_model, capsys) -> None:
    out = run_json(capsys, ["eval", "--model", str(brain_model["calibrated"]), "--data", "sample:brain1#8-16",
                            "--bootstrap", "0"])
    assert out["dice"] is not None and out["dice_scr"] is not None and out["unit"] == "normal-quantile"


def test_an_mr_model_warns_on_a_ct_scan_in_json_and_on_stderr(brain_model, capsys) -> None:
    code = main(["score", "--model", str(brain_model["calibrated"]), "sample:ct_abdomen", "--out",
                 str(brain_model["dir"] / "ct"), "--json"])
    captured = capsys.readouterr()
    assert code == 0
    res = json.loads(captured.out)
    (warning,) = [w for w in res["warnings"] if "trained on MR" in w]
    assert "CT" in warning and f"warning: {warning}" in captured.err
    # An MR scan like the training data is not warned about.
    same = run_json(capsys, ["score", "--model", str(brain_model["calibrated"]), "sample:brain1#10",
                             "--out", str(brain_model["dir"] / "mr")])
    assert same["warnings"] == []


def test_bundles_with_the_old_string_keyed_calibration_load_and_score_alike(brain_model, tmp_path: Path) -> None:
    """Bundles saved before the typed Calibration (schema 1: no version, flat keys) migrate on load."""
    import shutil

    from anomalens.engine.calibration import CALIBRATION_SCHEMA
    from anomalens.engine.detectors import load_bundle
    from anomalens.engine.pipeline import load_volume
    from anomalens.engine.scoring import score_scan

    new = brain_model["calibrated"]
    old = tmp_path / "old"
    shutil.copytree(new, old)
    manifest = json.loads((new / "bundle.json").read_text())
    c = manifest["calibration"]
    assert c["schema_version"] == CALIBRATION_SCHEMA
    # The layout 2026-11 bundles had: plain threshold as "threshold", SCR's as "scr_threshold", flat SCR keys.
    manifest["calibration"] = {
        "normaliser": c["normaliser"], "threshold": c["threshold"], "scr_threshold": c["scr"]["threshold"],
        "threshold_fpr": c["scr_threshold_fpr"], "lambda": c["scr"]["lambda"], "tau": c["scr"]["tau"],
        "temperature": c["scr"]["temperature"], "mode": c["scr"]["mode"], "target_fpr": c["target_fpr"],
        "fp_area": c["fp_area"], "fp_area_unary": c["fp_area_unary"], "fp_area_scr": c["fp_area_scr"],
        "n_pixels": c["n_pixels"], "notes": c["notes"], "n_slices": c["n_slices"], "fingerprint": c["fingerprint"]}
    (old / "bundle.json").write_text(json.dumps(manifest))
    a, b = load_bundle(new), load_bundle(old)
    assert b.calibration.threshold == a.calibration.threshold and b.calibration.scr == a.calibration.scr
    assert b.calibration.scr_threshold_fpr == a.calibration.scr_threshold_fpr
    vol = load_volume("sample:brain1#10-12")
    ra, rb = score_scan(a, vol), score_scan(b, vol)
    np.testing.assert_array_equal(ra.map, rb.map)
    np.testing.assert_array_equal(ra.mask_scr, rb.mask_scr)


@pytest.mark.parametrize("calibration, message", [
    ({"schema_version": -7, "threshold": 1.0}, "schema version"),
    ({"schema_version": 2, "threshold": "high"}, "malformed"),
    ("garbage", "JSON object"),
    ({"threshold": 0.9}, "normaliser"),
])
def test_a_forged_calibration_block_is_refused_on_load(brain_model, tmp_path: Path, calibration, message) -> None:
    import shutil

    from anomalens.engine.detectors import load_bundle
    from anomalens.engine.errors import ModelError

    bad = tmp_path / "bad"
    shutil.copytree(brain_model["calibrated"], bad)
    manifest = json.loads((bad / "bundle.json").read_text())
    if isinstance(calibration, dict) and calibration.get("schema_version") == 2:
        calibration = {**manifest["calibration"], **calibration}
    manifest["calibration"] = calibration
    (bad / "bundle.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelError, match=message):
        load_bundle(bad)
    nan = json.loads((brain_model["calibrated"] / "bundle.json").read_text())
    nan["calibration"]["scr"]["lambda"] = float("nan")
    (bad / "bundle.json").write_text(json.dumps(nan))
    with pytest.raises(ModelError, match="finite"):
        load_bundle(bad)


def test_no_string_keyed_calibration_reads_outside_the_calibration_class() -> None:
    """One name per quantity: the calibration is read by attribute everywhere but in its own (de)serialiser."""
    pattern = re.compile(r"""(calibration|\bcal)\s*(\[\s*["']|\.get\(\s*["'])|["']normaliser["']\s+(not\s+)?in\b""")
    allowed = {ROOT / "engine" / "calibration.py"}
    offenders = []
    for folder in ("app", "engine", "plugins", "bench"):
        for py in (ROOT / folder).rglob("*.py"):
            if py in allowed:
                continue
            for n, line in enumerate(py.read_text(encoding="utf-8").splitlines(), 1):
                if pattern.search(line):
                    offenders.append(f"{py.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


def test_nothing_outside_scoring_builds_masks_from_a_calibration() -> None:
    """Masks and units come from engine.scoring only: no other module thresholds a normalised map or cuts SCR."""
    pattern = re.compile(r"\.normalise\(|ScoreNormaliser\.from_dict|[<>]=?\s*[\w.()]*\.threshold\b|scr_refine\(")
    allowed = {ROOT / "engine" / "scoring.py", ROOT / "engine" / "calibration.py",
               ROOT / "engine" / "postprocess" / "calibrate.py", ROOT / "engine" / "postprocess" / "normalise.py",
               ROOT / "engine" / "postprocess" / "scr.py"}
    offenders = [str(py.relative_to(ROOT)) for folder in ("app", "engine", "plugins")
                 for py in (ROOT / folder).rglob("*.py")
                 if py not in allowed and pattern.search(py.read_text(encoding="utf-8"))]
    assert not offenders, offenders


def test_a_slice_without_tissue_scores_0_and_says_so(tmp_path) -> None:
    """An all-zero scan scored 0.991 on every slice against a 0.990 threshold, flagged nowhere, with no word."""

    from anomalens.engine.scoring import score_scan
    from anomalens.engine.volume import Volume
    from tests.fakes import calibrated_patchcore
    from tests.phantoms import phantom_slices

    det = calibrated_patchcore(6, modality="MR")
    slices = phantom_slices(3, 64, seed=3)[0]
    slices[1] = 0.0  # one blank slice between two with tissue
    result = score_scan(det, Volume(slices, spacing=(1.0, 1.0, 3.0), modality="MR"))
    by_z = {s.z: s for s in result.slices}
    assert by_z[1].score == 0.0 and not by_z[1].flagged
    assert by_z[0].score > 0 and by_z[2].score > 0
    assert any("1 of the scored slices (1) holds no tissue: it scores 0" in w for w in result.warnings), result.warnings


def test_the_flagged_slices_are_listed_as_runs() -> None:
    """A 300-slice scan listed every flagged slice number on one line: runs read at a glance."""
    from types import SimpleNamespace

    from anomalens.engine.cli.cmd_model import score_lines

    flagged = [*range(10, 200), 250, 251]
    result = SimpleNamespace(
        model=SimpleNamespace(label="m v1", fingerprint="sha256:x"), unit=SimpleNamespace(description="u"),
        indices=list(range(300)), calibrated=True, flagged_slices=flagged, lesion_mask_kind="scr",
        lesion_volume_ml=1.0, seconds_per_slice=0.1)
    lines = score_lines(result, {"heatmap": Path("/o/heatmap.nii.gz")})
    assert "192 of 300 slices flagged (SCR mask): 10-199,250-251" in lines


def test_scoring_a_slice_again_keeps_its_hand_edits() -> None:
    """The same model scoring a slice again wrote its mask over the reader's drawing on it."""
    import numpy as np

    from anomalens.app.results import ScanResults
    from anomalens.engine.scoring import score_scan
    from anomalens.engine.volume import Volume
    from tests.fakes import calibrated_patchcore
    from tests.phantoms import phantom_slices

    det = calibrated_patchcore(6, modality="MR")
    vol = Volume(phantom_slices(3, 64, seed=3, lesion=True)[0], spacing=(1.0, 1.0, 3.0), modality="MR")
    res = ScanResults.from_result("scan", score_scan(det, vol), detector=det)
    res.mask[1, 5:9, 5:9] = 1  # drawn by hand
    drawn = res.mask[1].copy()
    res.mask[2] = 0  # not an edit: a slice wiped and scored again comes back
    res.note_written([2])
    res.merge(score_scan(det, vol, [1, 2]))
    np.testing.assert_array_equal(res.mask[1], drawn)
    assert res.hand_edited(1) and not res.hand_edited(2)
