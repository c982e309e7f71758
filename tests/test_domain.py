"""The training-domain check: a scan unlike a model's normals warns before it is scored, a like one does not."""

from __future__ import annotations

import dataclasses
import json
import math
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from anomalens.engine.domain import (
    DOMAIN_SCHEMA,
    TRAINING_KEY,
    TrainingDomain,
    describe_scans,
    domain_warnings,
    tissue_sample,
)
from anomalens.engine.errors import InvalidVolumeError, ModelError
from anomalens.engine.pipeline import load_volume
from anomalens.engine.volume import Volume

from .phantoms import phantom_slices


def mr(seed: int = 0, scale: float = 1000.0, n: int = 6, modality: str = "MR", **metadata: str) -> Volume:
    """A brain-like MR phantom in arbitrary units: dark air at 0, tissue around ``scale`` / 2."""
    slices, _ = phantom_slices(n=n, size=64, seed=seed)
    return Volume(slices * scale, modality=modality, metadata=dict(metadata))


def ct(seed: int = 0, modality: str = "CT", n: int = 6, **metadata: str) -> Volume:
    """A chest-like CT phantom in Hounsfield units: air, fat rim, soft tissue, two lungs and a bone."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:64, 0:64].astype(np.float32) / 64 - 0.5
    body = (yy / 0.4) ** 2 + (xx / 0.45) ** 2 < 1
    inner = (yy / 0.36) ** 2 + (xx / 0.41) ** 2 < 1
    lungs = ((yy / 0.22) ** 2 + ((np.abs(xx) - 0.2) / 0.12) ** 2) < 1
    bone = (yy - 0.28) ** 2 + xx ** 2 < 0.05 ** 2
    out = np.full((n, 64, 64), -1000.0, np.float32)
    for i in range(n):
        img = np.where(body, -100.0, -1000.0) + np.where(inner, 140.0, 0.0)
        img = np.where(lungs, -850.0, img)
        img = np.where(bone, 700.0, img)
        out[i] = img + np.where(body, rng.normal(0, 15, img.shape), rng.normal(0, 5, img.shape))
    return Volume(out, modality=modality, metadata=dict(metadata))


@pytest.fixture(scope="module")
def mni152() -> Volume:
    return load_volume("sample:mni152#60-130")


@pytest.fixture(scope="module")
def ct_abdomen() -> Volume:
    return load_volume("sample:ct_abdomen")


# -- the checks ------------------------------------------------------------------------------------------

def test_an_mr_model_warns_on_a_ct_scan_by_modality(mni152: Volume, ct_abdomen: Volume) -> None:
    domain = describe_scans([mni152, load_volume("sample:mr_brain_small")])
    assert domain.modalities == ("MR",)
    for scan in (ct_abdomen, load_volume("sample:ct_small"), ct()):
        warnings = domain_warnings(domain, scan)
        assert any("trained on MR scans but this scan is CT" in w for w in warnings), warnings
        # the intensity check says the same thing again, so it stays quiet once the modality has warned
        assert not any("intensities" in w for w in warnings)


def test_unknown_modality_ct_warns_against_an_mr_model_by_intensity(mni152: Volume, ct_abdomen: Volume) -> None:
    domain = describe_scans([mni152])
    for scan in (dataclasses.replace(ct_abdomen, modality="OT"), ct(modality="OT")):
        warnings = domain_warnings(domain, scan)
        assert len(warnings) == 1 and "below zero" in warnings[0] and "may not mean much" in warnings[0]


def test_an_unknown_modality_ct_model_warns_on_an_mr_scan_by_intensity(mni152: Volume) -> None:
    domain = describe_scans([ct(modality="OT"), ct(seed=1, modality="OT")])
    assert domain.modalities == () and domain.intensity is not None and domain.intensity.units == "arbitrary"
    warnings = domain_warnings(domain, dataclasses.replace(mni152, modality="OT"))
    assert len(warnings) == 1 and "nothing below zero" in warnings[0]
    assert domain_warnings(domain, ct(seed=2, modality="OT")) == []


def test_scans_of_the_same_kind_do_not_warn(mni152: Volume) -> None:
    own = describe_scans([mni152])
    assert domain_warnings(own, mni152) == []
    assert domain_warnings(own, load_volume("sample:mni152#140-150")) == []  # another slice selection
    assert domain_warnings(describe_scans([mr(seed=0)]), mr(seed=5)) == []
    assert domain_warnings(describe_scans([ct(seed=0)]), ct(seed=5)) == []
    # MR of another scanner's scale (brain1 vs mni152 differ 11x in tissue width): no warning either way
    assert domain_warnings(describe_scans([mr(scale=3000.0)]), mr(seed=1, scale=250.0)) == []
    assert domain_warnings(describe_scans([mr(scale=250.0)]), mr(seed=1, scale=3000.0)) == []
    # a model of several MR scales accepts each of them
    both = describe_scans([mr(scale=3000.0), mni152])
    assert domain_warnings(both, mr(seed=2, scale=3000.0)) == [] and domain_warnings(both, mni152) == []


def test_mr_intensities_many_orders_of_magnitude_off_warn() -> None:
    domain = describe_scans([mr(scale=3000.0)])
    warnings = domain_warnings(domain, mr(seed=1, scale=1.0))  # e.g. a mask or a 0-1 map opened by mistake
    assert len(warnings) == 1 and "times less" in warnings[0]


def test_ct_models_compare_hounsfield_units_absolutely() -> None:
    domain = describe_scans([ct(seed=0), ct(seed=1)])
    assert domain.intensity is not None and domain.intensity.units == "HU"
    base = ct(seed=2)
    warnings = domain_warnings(domain, base.with_array(base.array + 400.0))  # a wrong rescale intercept
    assert len(warnings) == 1 and "far outside" in warnings[0] and "Hounsfield" in warnings[0]
    raw = domain_warnings(domain, base.with_array(base.array + 1024.0))  # stored values without the rescale
    assert len(raw) == 1 and "tissue intensities" in raw[0]
    scaled = ct(seed=2)
    scaled = scaled.with_array(scaled.array / 1000.0)
    assert "times less" in " ".join(domain_warnings(domain, scaled))


def test_real_ct_samples_do_not_warn_against_each_other(ct_abdomen: Volume) -> None:
    assert domain_warnings(describe_scans([load_volume("sample:ct_small")]), ct_abdomen) == []
    assert domain_warnings(describe_scans([ct_abdomen]), load_volume("sample:ct_small")) == []


def test_body_parts_warn_by_region_not_by_spelling() -> None:
    brain = describe_scans([mr(BodyPartExamined="brain ")])
    assert brain.body_parts == ("BRAIN",)
    assert domain_warnings(brain, mr(seed=1, BodyPartExamined="HEAD")) == []
    assert domain_warnings(brain, mr(seed=1)) == []  # unknown body part: no check
    warnings = domain_warnings(brain, mr(seed=1, BodyPartExamined="CHEST"))
    assert warnings == ["this model was trained on BRAIN scans but this scan is CHEST: "
                        "its scores and masks may not mean much"]
    abdomen = describe_scans([ct(BodyPartExamined="PANCREAS")])
    assert domain_warnings(abdomen, ct(seed=1, BodyPartExamined="ABDOMEN")) == []
    assert domain_warnings(abdomen, ct(seed=1, BodyPartExamined="CHEST_ABDOMEN_PELVIS")) == []


def test_warnings_carry_no_path_and_no_header_text() -> None:
    scan = dataclasses.replace(ct(modality="OT"), source=Path("/data/Doe_John/scan.nii.gz"),
                               metadata={"SeriesDescription": "Doe John chest"})
    warnings = domain_warnings(describe_scans([mr()]), scan)
    assert warnings and not any("Doe" in w or "/data" in w for w in warnings)


def test_a_scan_without_tissue_gets_no_intensity_warning() -> None:
    empty = Volume(np.zeros((3, 32, 32), np.float32), modality="OT")
    assert tissue_sample(empty) is None
    assert domain_warnings(describe_scans([mr()]), empty) == []
    assert describe_scans([empty]).intensity is None


def test_no_domain_gives_no_warning() -> None:
    assert domain_warnings(None, ct()) == []


# -- describing training scans ---------------------------------------------------------------------------

def test_describe_scans_records_what_the_normals_are() -> None:
    scans = [mr(scale=1000.0), mr(seed=1, scale=2000.0), mr(seed=2, scale=1000.0, modality="OT")]
    domain = describe_scans(scans)
    assert domain.modalities == ("MR",) and domain.n_scans == 3 and domain.body_parts == ()
    stats = domain.intensity
    assert stats is not None and stats.units == "arbitrary"
    # tissue is about half the scale (phantoms: 0.5 ± texture, 0.3 at the rim), air is not counted
    assert 350 < stats.p50_range[0] < 650 and 700 < stats.p50_range[1] < 1300
    assert stats.p1_range[0] <= stats.p1 <= stats.p50 <= stats.p99 <= stats.p99_range[1]
    assert stats.below_zero_range == (0.0, 0.0)


def test_given_tissue_masks_are_used_and_checked() -> None:
    scan = mr()
    mask = scan.array > 100  # everything but the air
    given = describe_scans([scan], [mask]).intensity
    computed = describe_scans([scan]).intensity
    assert given is not None and computed is not None
    assert math.isclose(given.p50, computed.p50, rel_tol=0.1)
    bright = float(np.percentile(scan.array[mask], 75))
    only_bright = describe_scans([scan], [scan.array > bright]).intensity
    assert only_bright is not None and only_bright.p1 > bright
    with pytest.raises(InvalidVolumeError):
        describe_scans([scan], [mask[:, :10]])
    with pytest.raises(InvalidVolumeError):
        describe_scans([scan], [mask, mask])
    with pytest.raises(InvalidVolumeError):
        describe_scans([])


def test_describe_scans_subsamples_a_big_scan() -> None:
    describe_scans([ct(n=2)])  # lazy imports (scikit-image) out of the measurement
    arr = np.full((160, 512, 512), -1000.0, np.float32)  # 168 MB; all of it would take seconds to mask
    yy, xx = np.mgrid[0:512, 0:512]
    arr[:, ((yy - 256) / 200.0) ** 2 + ((xx - 256) / 160.0) ** 2 < 1] = 40.0
    arr[:, 250:262, 100:400] = 700.0
    big = Volume(arr, modality="CT")
    tracemalloc.start()
    try:
        domain = describe_scans([big])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 40e6, f"describe_scans allocated {peak / 1e6:.0f} MB for a {arr.nbytes / 1e6:.0f} MB scan"
    assert domain.intensity is not None and domain.intensity.p50 == pytest.approx(40.0)


# -- persistence -----------------------------------------------------------------------------------------

def test_to_dict_from_dict_round_trips_through_json() -> None:
    domain = describe_scans([ct(BodyPartExamined="CHEST"), ct(seed=1)])
    data = json.loads(json.dumps(domain.to_dict()))
    assert data["schema_version"] == DOMAIN_SCHEMA
    assert TrainingDomain.from_dict(data) == domain
    bare = TrainingDomain(modalities=("MR",))
    assert TrainingDomain.from_dict(json.loads(json.dumps(bare.to_dict()))) == bare


def _good() -> dict:
    return describe_scans([mr()]).to_dict()


def _with(path: tuple, value: object) -> dict:
    data = _good()
    target = data
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return data


@pytest.mark.parametrize("data", [
    "MR",
    None,
    [1, 2],
    _with(("schema_version",), 2),
    _with(("schema_version",), True),
    {k: v for k, v in _good().items() if k != "schema_version"},
    {k: v for k, v in _good().items() if k != "n_scans"},
    _with(("modalities",), "MR"),
    _with(("modalities",), [1]),
    _with(("body_parts",), None),
    _with(("n_scans",), "3"),
    _with(("n_scans",), -1),
    _with(("n_scans",), True),
    _with(("intensity",), "bright"),
    _with(("intensity", "p50"), float("nan")),
    _with(("intensity", "p99"), float("inf")),
    _with(("intensity", "p1"), "34"),
    _with(("intensity", "units"), 7),
    _with(("intensity", "p50_range"), [3.0, 1.0]),
    _with(("intensity", "width_range"), [1.0, 2.0, 3.0]),
    _with(("intensity", "width_range"), [-1.0, 2.0]),
    _with(("intensity", "below_zero_range"), [0.0, float("nan")]),
])
def test_from_dict_refuses_garbage_with_one_clear_line(data: object) -> None:
    with pytest.raises(ModelError) as info:
        TrainingDomain.from_dict(data)
    message = str(info.value)
    assert "\n" not in message and "training-domain" in message


def test_from_training_reads_new_and_old_bundles() -> None:
    domain = describe_scans([mr(), mr(seed=1)])
    assert TrainingDomain.from_training({TRAINING_KEY: domain.to_dict(), "modality": "MR"}) == domain
    with pytest.raises(ModelError):
        TrainingDomain.from_training({TRAINING_KEY: {"schema_version": 99}})
    # bundles before the domain record: the modality check works, the intensity check is skipped
    old = TrainingDomain.from_training({"modality": "MR", "fingerprint": "abc", "n_slices": 12})
    assert old is not None and old.modalities == ("MR",) and old.intensity is None
    assert any("trained on MR scans but this scan is CT" in w for w in domain_warnings(old, ct()))
    assert domain_warnings(old, ct(modality="OT")) == []  # HU that the full record would flag: no stats to say so
    assert domain_warnings(domain, ct(modality="OT")) != []
    # nothing recorded, or only an unknown modality: no warning rather than a false one
    for training in (None, {}, {"fingerprint": "abc"}, {"modality": "OT"}, {"modality": ""}, {"modality": 3}):
        assert TrainingDomain.from_training(training) is None
