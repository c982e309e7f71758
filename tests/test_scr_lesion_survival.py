"""SCR that keeps lesions (issue #20): synthetic 5–10 mm lesions in the calibration normals must survive the cut."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from scipy import ndimage

from anomalens.engine.calibration import Calibration, LesionSurvival
from anomalens.engine.detectors.result import AnomalyResult
from anomalens.engine.errors import Cancelled, ModelError
from anomalens.engine.postprocess.calibrate import calibrate
from anomalens.engine.postprocess.scr import scr_refine
from anomalens.engine.postprocess.survival import LesionProbe, count_survivors
from anomalens.engine.progress import CancelToken
from anomalens.engine.recalibration import LESION_SLICES, LESIONS_PER_SLICE, lesion_probe
from anomalens.engine.scoring import apply_calibration
from anomalens.engine.synthesis.lesion import lesion_slices
from tests.fakes import calibrated_patchcore
from tests.phantoms import phantom_slices

SIZE = 48
YY, XX = np.mgrid[:SIZE, :SIZE]


# -- the lesions ---------------------------------------------------------------------------------------

def test_lesions_have_the_asked_size_lie_in_tissue_and_are_reproducible() -> None:
    imgs, _ = phantom_slices(3, 64, seed=4)
    fg = imgs > 0.05
    a = lesion_slices(imgs, np.random.default_rng(7), fg, pixel_mm=1.0, per_slice=2, max_slices=5)
    b = lesion_slices(imgs, np.random.default_rng(7), fg, pixel_mm=1.0, per_slice=2, max_slices=5)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    slices, fgs, labels, diameters = a
    assert slices.shape == (5, 64, 64) and labels.max() == len(diameters) == 10  # 3 slices reused for 5 copies
    assert np.all((diameters >= 5.0) & (diameters <= 10.0))
    for k, d_mm in enumerate(diameters, 1):
        lab = labels == k
        assert np.all(fgs[lab]), "a lesion lies wholly in tissue"
        area_px, d_px = lab.sum(), d_mm
        # an ellipse with the drawn diameter as its short axis and a long axis up to 1.3 times it
        assert 0.8 * np.pi * (d_px / 2) ** 2 <= area_px <= 1.4 * np.pi * (d_px / 2) ** 2
        z = int(np.flatnonzero(lab.reshape(5, -1).any(1))[0])
        changed = np.abs(slices[z] - imgs[z % 3])[lab[z]]
        assert changed.mean() > 0.05, "the lesion changes the tissue it covers"
    # two lesions on one slice never touch
    for z in range(5):
        ids = np.unique(labels[z])[1:]
        assert len(ids) == 2
        gap = ndimage.distance_transform_edt(labels[z] != ids[0])[labels[z] == ids[1]].min()
        assert gap > 2


# -- counting --------------------------------------------------------------------------------------

def test_survival_counts_the_lesions_thresholding_finds_and_the_cut_keeps() -> None:
    labels = np.zeros((1, 20, 20), np.int32)
    labels[0, 2:6, 2:6], labels[0, 10:14, 10:14], labels[0, 2:6, 12:16] = 1, 2, 3
    plain = labels > 0
    plain[0, 2:6, 12:16] = False  # lesion 3 is not seen by thresholding: no test of the cut
    scr = plain.copy()
    scr[0, 10:14, 10:14] = False  # SCR erases lesion 2
    scr[0, 2:3, 2:6] = False  # and trims a quarter of lesion 1: still kept
    c = count_survivors(labels, plain, scr)
    assert (c.inserted, c.seen, c.kept) == (3, 2, 1) and c.rate == 0.5
    scr[0, 2:5, 2:6] = False  # only a quarter of lesion 1 left: no longer kept
    assert count_survivors(labels, plain, scr).kept == 0


# -- the calibration's choice ------------------------------------------------------------------------

def _blobby(seed: int, n: int) -> np.ndarray:
    """Smooth normal maps whose false positives are lesion-sized blobs (like PatchCore's and Lorentz's)."""
    m = ndimage.gaussian_filter(np.random.default_rng(seed).normal(size=(n, SIZE, SIZE)), (0, 3, 3))
    return (m / m.std()).astype(np.float32)


def _erasing_case() -> tuple[np.ndarray, np.ndarray, np.ndarray, LesionProbe]:
    """Normals where the area test accepts a λ that wipes out every blob the size of a 5 mm lesion.

    One normal slice holds a large region that no λ removes, so the area SCR leaves on normals stays near the
    target and the area test sees no erasing; the probe's lesions are blobs of 5 px, well above the noise.
    """
    n = 12
    maps = _blobby(1, n)
    maps[0][(YY - 24) ** 2 + (XX - 24) ** 2 <= 36] += 6.0
    fg = np.zeros(maps.shape, bool)
    fg[:, 4:-4, 4:-4] = True
    lm, labels = _blobby(2, 8), np.zeros((8, SIZE, SIZE), np.int32)
    for i in range(8):
        for j, (cy, cx) in enumerate(((14, 14), (34, 34))):
            lesion = (YY - cy) ** 2 + (XX - cx) ** 2 <= 2.5**2
            labels[i][lesion] = 2 * i + j + 1
            lm[i][lesion] += 3.0
    probe = LesionProbe(maps=lm, labels=labels, foreground=fg[:8], features=None, intensities=np.ones_like(lm),
                        diameter_mm=np.full(16, 5.0))
    return maps, fg, np.ones_like(maps), probe


def _kept_at(cal: Calibration, probe: LesionProbe) -> float:
    """Survival measured afresh at a calibration's SCR point (not by the code under test)."""
    nm = cal.normaliser.transform(probe.maps)
    unary = (nm > cal.scr.threshold) & probe.foreground
    scr = scr_refine(nm, cal.scr.threshold, cal.scr.lam, cal.scr.tau, intensities=probe.intensities,
                     temperature=cal.scr.temperature, foreground=probe.foreground)
    rate = count_survivors(probe.labels, unary, scr).rate
    assert rate is not None
    return rate


def test_a_lambda_that_erased_the_lesions_gives_way_to_a_smaller_one() -> None:
    maps, fg, flat, probe = _erasing_case()
    old = calibrate(maps, fg, intensities=flat, target_fpr=0.01)  # the false-positive rule and area test only
    assert old.lesions is None and old.scr_threshold_fpr == pytest.approx(0.05)
    assert old.fp_area_scr >= 0.25 * 0.01  # the area test saw no erasing...
    assert _kept_at(old, probe) < 0.5  # ...yet the cut erases most lesions its threshold finds
    new = calibrate(maps, fg, intensities=flat, target_fpr=0.01, lesions=probe)
    assert new.threshold == old.threshold and new.normaliser.to_dict() == old.normaliser.to_dict()
    assert new.scr.lam < old.scr.lam and new.scr_threshold_fpr < old.scr_threshold_fpr
    assert new.fp_area_scr <= 0.01  # the false-positive rule still holds
    les = new.lesions
    assert les is not None and les.checked and les.met and les.rate >= 0.9
    assert les.rate == pytest.approx(_kept_at(new, probe))
    assert any("kept" in n and "tightened" in n for n in new.notes)


def test_when_no_point_keeps_the_lesions_the_compromise_is_flagged() -> None:
    maps, fg, flat, probe = _erasing_case()
    cal = calibrate(maps, fg, intensities=flat, target_fpr=0.01, threshold_fpr=0.05, lesions=probe)
    assert cal.scr_threshold_fpr == 0.05 and cal.fp_area_scr <= 0.01  # the rule on normals is never given up
    assert cal.lesions is not None and cal.lesions.met is False and cal.lesions.rate < 0.9
    assert any("best compromise" in n for n in cal.notes)
    back = Calibration.from_dict(json.loads(json.dumps(cal.to_dict())))
    assert back.lesions == cal.lesions and back.to_dict() == cal.to_dict()


def test_a_point_not_shown_to_keep_lesions_is_not_taken() -> None:
    """Where too few lesions reach a loose threshold to show its cut keeps them, SCR tightens to plain."""
    maps, fg, flat, probe = _erasing_case()
    faint = dataclasses.replace(probe, maps=_blobby(2, 8) - 3.0)  # lesions nowhere near any threshold
    old = calibrate(maps, fg, intensities=flat, target_fpr=0.01)
    assert old.scr.lam > 0
    cal = calibrate(maps, fg, intensities=flat, target_fpr=0.01, lesions=faint)
    assert cal.scr.lam == 0.0 and cal.scr.threshold == pytest.approx(cal.threshold)
    assert cal.lesions is not None and cal.lesions.seen < 10 and not cal.lesions.checked and cal.lesions.met is None
    assert any("could not be shown to keep lesions" in n for n in cal.notes)


# -- with a detector -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def patchcore():
    return calibrated_patchcore()


def test_a_detector_calibration_reports_survival_the_product_masks_confirm(patchcore) -> None:
    cal = patchcore.calibration
    les = cal.lesions
    assert les is not None and les.inserted == LESION_SLICES * LESIONS_PER_SLICE
    assert les.checked and les.seen >= 10 and les.rate >= 0.9 and les.met
    assert cal.scr.usable and cal.fp_area_scr <= cal.target_fpr
    # The same lesions again (seeded by the model), masked by the product's own mask maker.
    normals = phantom_slices(4, 64, seed=1)[0]
    probe, note = lesion_probe(patchcore, normals)
    assert note is not None and "1 mm" in note and any(note == n for n in cal.notes)
    res = AnomalyResult(heatmaps=probe.maps, scores=probe.maps.reshape(len(probe.maps), -1).max(1),
                        features=probe.features)
    unary = apply_calibration(cal, res, probe.intensities, probe.foreground, settings=cal.scr.replace(lam=0.0))
    cut = apply_calibration(cal, res, probe.intensities, probe.foreground)
    c = count_survivors(probe.labels, unary.scr_mask, cut.scr_mask)
    assert (c.inserted, c.seen, c.kept) == (les.inserted, les.seen, les.kept)
    # every lesion the product's plain mask finds is among those tested
    assert count_survivors(probe.labels, cut.mask, cut.mask).seen <= les.seen


def test_calibration_is_deterministic_and_cancellable(patchcore) -> None:
    from anomalens.engine.recalibration import calibrate_detector

    normals = phantom_slices(4, 64, seed=1)[0]
    first = patchcore.calibration
    again = calibrate_detector(patchcore, normals)
    assert dataclasses.replace(again, created="").to_dict() == dataclasses.replace(first, created="").to_dict()
    token = CancelToken()
    token.cancel()
    with pytest.raises(Cancelled):
        lesion_probe(patchcore, normals, cancel=token)


def test_old_bundles_without_the_check_load_and_score_identically(patchcore) -> None:
    cal = patchcore.calibration
    d = cal.to_dict()
    old = {k: v for k, v in d.items() if k != "lesion_survival"}
    loaded = Calibration.from_dict(json.loads(json.dumps(old)))
    assert loaded.lesions is None and loaded.lesion_survival is None
    assert loaded.to_dict() == old, "an old bundle's calibration keeps exactly its dict (and fingerprint)"
    slices = phantom_slices(2, 64, seed=5, lesion=True)[0]
    res = patchcore.score(slices)
    a = apply_calibration(cal, res, slices)
    b = apply_calibration(loaded, res, slices)
    np.testing.assert_array_equal(a.maps, b.maps)
    np.testing.assert_array_equal(a.mask, b.mask)
    np.testing.assert_array_equal(a.scr_mask, b.scr_mask)
    # schema 1 (string keys, before the typed calibration) still migrates
    v1 = {"normaliser": d["normaliser"], "threshold": d["threshold"], "scr_threshold": d["scr"]["threshold"],
          "lambda": d["scr"]["lambda"], "tau": d["scr"]["tau"]}
    assert Calibration.from_dict(v1).lesions is None


def test_a_damaged_survival_block_is_refused() -> None:
    with pytest.raises(ModelError):
        LesionSurvival(inserted=3, seen=4, kept=1)
    maps, fg, flat, probe = _erasing_case()
    d = calibrate(maps, fg, intensities=flat, target_fpr=0.01, lesions=probe).to_dict()
    d["lesion_survival"]["seen"] = "many"
    with pytest.raises(ModelError, match="malformed"):
        Calibration.from_dict(d)


def test_calibrate_prints_both_rates(tmp_path, capsys) -> None:
    from anomalens.engine.cli.main import main
    from tests.test_cli import PATCHCORE_SET
    from tests.test_datasets import write_volume

    normals = write_volume(tmp_path / "n.nii.gz", (phantom_slices(6, 64, seed=1)[0] * 1000).astype(np.float32))
    held = write_volume(tmp_path / "h.nii.gz", (phantom_slices(5, 64, seed=3)[0] * 1000).astype(np.float32))
    assert main(["train", "--detector", "patchcore", "--normals", str(normals), "--out", str(tmp_path / "m"),
                 "--device", "cpu", *PATCHCORE_SET]) == 0
    capsys.readouterr()
    assert main(["calibrate", "--model", str(tmp_path / "m"), "--normals", str(held), "--out", str(tmp_path / "c"),
                 "--device", "cpu", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    les = out["calibration"]["lesion_survival"]
    assert les["inserted"] == LESION_SLICES * LESIONS_PER_SLICE and les["rate"] == out["after"]["lesion_survival"]
    assert out["after"]["fp_area_scr"] <= 0.01 + 1e-9
    # the model has a working grid: the lesions are sized from it, no pixel size was assumed
    assert not any("assume" in n for n in out["notes"])
    assert main(["calibrate", "--model", str(tmp_path / "m"), "--normals", str(held), "--out", str(tmp_path / "t"),
                 "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    assert f"lesion survival {les['rate']:.0%}" in text and "with SCR (λ" in text


def test_slices_too_small_for_the_lesions_skip_the_check_with_a_note() -> None:
    from anomalens.engine.recalibration import calibrate_detector
    from tests.fakes import MeanDetector

    small = phantom_slices(6, 16, seed=2)[0]
    det = MeanDetector(seed=0).fit(small[:3])
    cal = calibrate_detector(det, small[3:])
    assert cal.lesions is None and cal.scr.usable
    assert any("too small for 10 mm lesions" in n for n in cal.notes)
