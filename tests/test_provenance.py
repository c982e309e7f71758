"""A model knows which slices of which study it was fitted or calibrated on (hashed key), and says so when scored."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from anomalens.engine.provenance import DIGESTS_KEY, SEEN_KEY, merge_seen, record_seen, seen_in
from anomalens.engine.volume import Volume
from tests.phantoms import phantom_slices
from tests.test_datasets import write_volume


def _volume(seed: int = 1) -> Volume:
    return Volume(phantom_slices(6, 32, seed=seed)[0], spacing=(1.0, 1.0, 3.0), modality="MR")


def test_a_record_maps_a_selection_to_the_file_and_back(tmp_path: Path) -> None:
    from anomalens.engine.pipeline import load_volume

    path = write_volume(tmp_path / "scan.nii.gz", (phantom_slices(6, 32, seed=1)[0] * 1000).astype(np.float32))
    whole, part = load_volume(str(path)), load_volume(f"{path}#2-3,5")
    training: dict = {}
    record_seen(training, part, [0, 2])  # array slices 0 and 2 of the selection: the file's 2 and 5
    [(key, slices)] = training[SEEN_KEY].items()
    assert slices == [2, 5] and "scan" not in key and "/" not in key  # a hash, no path
    assert seen_in(training, whole) == [2, 5]
    assert seen_in(training, part) == [0, 2]
    assert seen_in(training, _volume(seed=9)) == []  # another study
    merge_seen(training, {SEEN_KEY: {key: [0], "s-other": [1]}})
    assert seen_in(training, whole) == [0, 2, 5] and set(training[SEEN_KEY]) == {key, "s-other"}


@pytest.mark.parametrize("forged", [[1, 2], {"k": "0-3"}, {"k": [True]}, {"k": [-1]}, {"k": [0.5]},
                                    {1: [0]}, {"k" * 200: [0]}, {f"k{i}": [0] for i in range(10_001)}])
def test_a_forged_record_is_ignored_not_an_error(forged: object) -> None:
    vol = _volume()
    assert seen_in({SEEN_KEY: forged}, vol) == []
    training = {SEEN_KEY: forged}
    record_seen(training, vol, [1])  # a bad record is replaced by a good one, never trusted or raised on
    assert seen_in(training, vol) == [1]


def test_scoring_the_slices_a_model_was_fitted_on_says_so(tmp_path: Path) -> None:
    import torch

    from anomalens.engine.pipeline import load_volume, train
    from anomalens.engine.scoring import score_scan
    from anomalens.plugins.patchcore import PatchCoreDetector

    torch.set_num_threads(1)
    arrays = [(phantom_slices(6, 64, seed=s)[0] * 1000).astype(np.float32) for s in (1, 2)]
    fitted, other = (write_volume(tmp_path / f"{n}.nii.gz", a) for n, a in zip(("fitted", "other"), arrays,
                                                                                strict=True))
    det = train("patchcore", [f"{fitted}#0-2"], config=PatchCoreDetector.test_config(), device="cpu")
    vol = load_volume(str(fitted))
    result = score_scan(det, vol)
    assert result.seen_slices == (0, 1, 2)
    assert any("3 of the scored slices (0-2) were used to fit or calibrate this model" in w for w in result.warnings)
    assert result.summary()["seen_slices"] == [0, 1, 2]
    assert result.summary()["torch_threads"] == 1  # what the numbers were computed with (set above)
    assert not any("used to fit" in w for w in score_scan(det, vol, [4, 5]).warnings)  # held-out slices: no word
    assert score_scan(det, load_volume(str(other))).seen_slices == ()
    saved = det.save(tmp_path / "model")  # the record survives the bundle (JSON, hashed keys)
    from anomalens.engine.detectors import load_bundle

    assert score_scan(load_bundle(saved), vol, [1]).seen_slices == (0, 1, 2)
    # A selection from slice 1 on: warnings and the summary number slices as the file does (and scores.csv),
    # they named the selection's array indices 0-1 for the file's slices 1-2
    part = score_scan(det, load_volume(f"{fitted}#1-4"))
    assert [s.index for s in part.slices] == [1, 2, 3, 4]
    assert any("2 of the scored slices (1-2) were used" in w for w in part.warnings), part.warnings
    assert part.summary()["seen_slices"] == [1, 2]


def test_eval_leaves_out_the_slices_a_model_was_fitted_on(tmp_path: Path) -> None:
    """No metric counts a fitted slice unless asked; nothing but fitted slices is an error, not a number."""
    import torch

    from anomalens.engine.datasets import load_eval_data
    from anomalens.engine.errors import ConfigError
    from anomalens.engine.evaluation import evaluate_model
    from anomalens.engine.pipeline import train
    from anomalens.plugins.patchcore import PatchCoreDetector

    torch.set_num_threads(1)
    image = (phantom_slices(6, 64, seed=1)[0] * 1000).astype(np.float32)
    scan = write_volume(tmp_path / "scan.nii.gz", image)
    truth = np.zeros_like(image)
    truth[3:, 20:30, 20:30] = 1
    mask = write_volume(tmp_path / "mask.nii.gz", truth)
    det = train("patchcore", [f"{scan}#0-2"], config=PatchCoreDetector.test_config(), device="cpu")

    ev = evaluate_model(det, load_eval_data(f"{scan}:{mask}"), n_boot=0)
    assert ev.names == ["z=3", "z=4", "z=5"] and ev.maps.shape[0] == 3 and ev.metrics["n_left_out_seen"] == 3
    assert ev.metrics["notes"][0].startswith("left out 3 slices the model was fitted or calibrated on (z=0, z=1, z=2)")
    assert not any("their scores are no test of it" in n for n in ev.metrics["notes"])
    counted = evaluate_model(det, load_eval_data(f"{scan}:{mask}"), n_boot=0, include_seen=True)
    assert counted.maps.shape[0] == 6 and counted.metrics["n_left_out_seen"] == 0
    assert any("their scores are no test of it" in n for n in counted.metrics["notes"])
    with pytest.raises(ConfigError, match="every slice of this data"):
        evaluate_model(det, load_eval_data(f"{scan}:{mask}#0-2"), n_boot=0)


@pytest.mark.parametrize("flip", [False, True])
def test_a_normal_scan_turned_to_the_first_ones_orientation_is_recorded_by_its_file_slices(tmp_path: Path,
                                                                                           flip: bool) -> None:
    """``gather_normals`` flips a second scan into the first one's orientation: its slices keep the file's numbers."""
    import SimpleITK as sitk

    from anomalens.engine.pipeline import gather_normals, load_volume

    first = write_volume(tmp_path / "first.nii.gz", (phantom_slices(5, 32, seed=1)[0] * 1000).astype(np.float32))
    array = (phantom_slices(5, 32, seed=2)[0] * 1000).astype(np.float32)
    array[0] = 0  # the file's slice 0 holds no tissue: gather_normals drops it, so it must not be recorded
    img = sitk.GetImageFromArray(array)
    img.SetSpacing((1.0, 1.0, 3.0))
    if flip:  # the slices run the other way: the reoriented array's slice 0 is the file's slice 4
        img.SetDirection((1, 0, 0, 0, 1, 0, 0, 0, -1))
    second = tmp_path / "second.nii.gz"
    sitk.WriteImage(img, str(second))
    info: dict = {}
    gather_normals([str(first), str(second)], info=info, grid=None)
    assert seen_in(info, load_volume(str(second))) == [1, 2, 3, 4]
    assert seen_in(info, load_volume(str(first))) == [0, 1, 2, 3, 4]



def test_the_same_scan_in_another_file_is_known_by_its_voxels(tmp_path: Path) -> None:
    """gzip changed the study key (a hash of the file's head): eval then counted fitted slices as test slices."""
    import gzip
    import shutil

    from anomalens.engine.pipeline import load_volume

    plain = write_volume(tmp_path / "scan.nii", (phantom_slices(6, 32, seed=1)[0] * 1000).astype(np.float32))
    zipped = tmp_path / "copy.nii.gz"
    with plain.open("rb") as src, gzip.open(zipped, "wb") as dst:
        shutil.copyfileobj(src, dst)
    converted = write_volume(tmp_path / "copy.nrrd", load_volume(str(plain)).array)
    training: dict = {}
    record_seen(training, load_volume(f"{plain}#1-3"), [0, 1, 2])
    assert all(len(d) == 32 for d in training[DIGESTS_KEY]) and len(training[DIGESTS_KEY]) == 3
    for other in (zipped, converted):
        assert seen_in(training, load_volume(str(other))) == [1, 2, 3], other
        assert seen_in(training, load_volume(f"{other}#2-5")) == [0, 1]
        assert seen_in(training, load_volume(str(other)), among=[3, 4]) == [3]  # only the slices being scored
    assert seen_in(training, _volume(seed=9)) == []
    blank = Volume(np.zeros((2, 32, 32), np.float32), spacing=(1.0, 1.0, 3.0))
    record_seen(training, blank, [0, 1])  # blank slices are alike in every scan: never taken as known
    assert seen_in(training, Volume(np.zeros((3, 32, 32), np.float32), spacing=(1.0, 1.0, 3.0))) == []
    merged: dict = {}
    merge_seen(merged, training)
    assert merged[DIGESTS_KEY] == training[DIGESTS_KEY]


@pytest.mark.parametrize("forged", [["zz" * 16], "abc", [1, 2], ["a" * 31], ["0" * 32] * 100_001])
def test_a_forged_digest_list_is_ignored(forged: object) -> None:
    vol = _volume()
    assert seen_in({DIGESTS_KEY: forged}, vol) == []
    training = {DIGESTS_KEY: forged}
    record_seen(training, vol, [1])
    assert seen_in(training, vol) == [1]


def test_the_viewer_keeps_one_word_about_fitted_slices_over_every_scoring(tmp_path: Path) -> None:
    """Scoring slice 5 after the volume added "1 of the scored slices (5) were used…" beside the volume's list."""
    import torch

    from anomalens.app.results import ScanResults
    from anomalens.engine.pipeline import load_volume, train
    from anomalens.engine.provenance import seen_warning
    from anomalens.engine.scoring import score_scan
    from anomalens.plugins.patchcore import PatchCoreDetector

    assert seen_warning([5]).startswith("1 of the scored slices (5) was used") and seen_warning([]) == ""
    torch.set_num_threads(1)
    path = write_volume(tmp_path / "scan.nii.gz", (phantom_slices(6, 64, seed=1)[0] * 1000).astype(np.float32))
    det = train("patchcore", [f"{path}#0-2"], config=PatchCoreDetector.test_config(), device="cpu")
    vol = load_volume(str(path))
    res = ScanResults.from_result("scan", score_scan(det, vol, [1, 4]), detector=det)
    res.merge(score_scan(det, vol, [2, 5]))
    seen = [w for w in res.warnings if "used to fit or calibrate" in w]
    assert seen == ["2 of the scored slices (1-2) were used to fit or calibrate this model: their scores are no "
                    "test of it"], res.warnings
