"""The model folder: profile versions with lineage, an atomic active pointer, rollbacks that delete nothing."""

from __future__ import annotations

import json

import numpy as np
import pytest

from anomalens.engine.errors import ConfigError, ModelError
from anomalens.engine.modelstore import BundleInfo, ModelStore, models_dir
from tests.fakes import MeanDetector


def _fitted(seed: int = 0) -> MeanDetector:
    return MeanDetector().fit(np.random.default_rng(seed).random((3, 16, 16), dtype=np.float32))


def test_versions_lineage_and_rollback(tmp_path):
    store = ModelStore(tmp_path / "models")
    assert store.bundles() == [] and store.profiles() == []
    v1 = store.save_version(_fitted(), "brain-ct", note="trained")
    assert v1.path == tmp_path / "models" / "brain-ct" / "v0001" and v1.parent is None
    v2 = store.save_version(_fitted(1), v1.path, note="fine-tuned on 4 marked slices")
    v3 = store.save_version(_fitted(2), v2.path, note="again")
    assert [v.version for v in store.versions("brain-ct")] == ["v0001", "v0002", "v0003"]
    assert [v.bundle_version for v in store.versions("brain-ct")] == [1, 2, 3]
    assert store.active("brain-ct").path == v3.path
    assert [i.path.name for i in store.lineage(v3.path)] == ["v0003", "v0002", "v0001"]
    assert v2.note == "fine-tuned on 4 marked slices" and v2.parent == str(v1.path.resolve())

    back = store.rollback("brain-ct", 1)
    assert back.path == v1.path and store.active("brain-ct").path == v1.path
    assert json.loads((v1.path.parent / "active.json").read_text())["version"] == "v0001"
    assert all(v.path.is_dir() for v in (v1, v2, v3))  # nothing deleted
    assert store.rollback("brain-ct", "v0003").path == v3.path
    # a version made from an older active one still gets the next free number
    v4 = store.save_version(_fitted(3), v1.path)
    assert v4.version == "v0004" and v4.parent == str(v1.path.resolve())
    assert store.profiles() == ["brain-ct"]
    assert [b.name for b in store.bundles()] == [f"brain-ct/v000{i}" for i in range(1, 5)]


def test_rollback_to_a_missing_version_names_the_existing_ones(tmp_path):
    store = ModelStore(tmp_path)
    store.save_version(_fitted(), "p")
    with pytest.raises(ConfigError, match="v0001"):
        store.rollback("p", 7)
    with pytest.raises(ConfigError, match="profile name"):
        store.versions("../etc")


def test_a_lone_bundle_starts_a_profile_and_damaged_folders_are_skipped(tmp_path):
    store = ModelStore(tmp_path / "models")
    lone = _fitted().save(tmp_path / "models" / "my model")
    (tmp_path / "models" / "broken").mkdir()
    (tmp_path / "models" / "broken" / "bundle.json").write_text("{not json")
    assert [b.name for b in store.bundles()] == ["my model"]
    v = store.save_version(_fitted(1), lone)
    assert v.path == tmp_path / "models" / "my-model" / "v0001" and v.bundle_version == 2
    assert v.parent == str(lone.resolve())


def test_active_falls_back_to_the_newest_when_the_pointer_is_bad(tmp_path):
    store = ModelStore(tmp_path)
    store.save_version(_fitted(), "p")
    v2 = store.save_version(_fitted(1), "p")
    (tmp_path / "p" / "active.json").write_text("garbage")
    assert store.active("p").path == v2.path
    assert store.active("empty") is None
    with pytest.raises(ModelError):
        store.set_active(tmp_path / "p")


def test_a_taken_version_number_moves_to_the_next(tmp_path, monkeypatch):
    store = ModelStore(tmp_path)
    store.save_version(_fitted(), "p")
    real = store.new_version_path
    calls = []

    def stale(base):  # the first answer is a number another process has just used
        calls.append(base)
        return tmp_path / "p" / "v0001" if len(calls) == 1 else real(base)

    monkeypatch.setattr(store, "new_version_path", stale)
    assert store.save_version(_fitted(1), "p").version == "v0002"


def test_a_version_written_meanwhile_by_another_process_is_kept(tmp_path, monkeypatch):
    """The number was free when this save began; another process's v0002 arrived before its rename."""
    import shutil

    from anomalens.engine.detectors import bundle

    store = ModelStore(tmp_path)
    store.save_version(_fitted(), "p")
    theirs = store.save_version(_fitted(2), "other", note="theirs")  # a whole version, to copy in as if raced
    real = bundle._save_weights
    raced = []

    def save_weights(tensors, path):
        real(tensors, path)
        if not raced:
            raced.append(True)
            shutil.copytree(theirs.path, tmp_path / "p" / "v0002")

    monkeypatch.setattr(bundle, "_save_weights", save_weights)
    mine = store.save_version(_fitted(1), "p", note="mine")
    assert mine.version == "v0003" and mine.note == "mine"
    assert BundleInfo.read(tmp_path / "p" / "v0002").note == "theirs"  # nothing written over


def test_fine_tune_site_saves_a_calibrated_child_and_reports_false_positives(tmp_path):
    from anomalens.engine.errors import Cancelled
    from anomalens.engine.modelstore import fine_tune_site
    from anomalens.engine.progress import CancelToken
    from anomalens.engine.recalibration import false_positives
    from tests.phantoms import phantom_slices

    store = ModelStore(tmp_path)
    normals = phantom_slices(4, 64, seed=3)[0]
    det = MeanDetector().fit(phantom_slices(4, 64, seed=0)[0])
    v1 = store.save_version(det, "site")
    assert false_positives(det, normals) is None  # not calibrated yet
    steps = []
    up = fine_tune_site(det, normals, store, "site", note="marks", parent=v1.path, target_fpr=0.01,
                        progress=lambda f, m: steps.append(f))
    rec = up.recalibration
    assert rec.before is None and 0 < rec.after.plain <= 0.05
    assert (rec.n_fine_tune, rec.n_calibration) == (2, 2)  # every other slice adapts, the rest calibrate
    assert up.info.version == "v0002" and up.info.parent == str(v1.path.resolve()) and up.info.note == "marks"
    assert "normaliser" in up.info.manifest["calibration"] and store.active("site").path == up.info.path
    assert any("target" in line for line in rec.describe())
    assert steps == sorted(steps) and steps[-1] == 1.0
    again = fine_tune_site(up.detector, normals, store, "site", parent=up.info.path)
    assert again.recalibration.before.plain == pytest.approx(rec.after.plain)  # measured with the calibrated parent

    # what a move to the target means on later scans, in plain words ("1.00 %, was 0.00 %" read as worse)
    import dataclasses

    from anomalens.engine.recalibration import FalsePositives

    def said(before: float) -> str:
        return "\n".join(dataclasses.replace(rec, before=FalsePositives(plain=before, scr=None)).describe())

    assert "more sensitive: it flags more tissue" in said(0.0) and "stricter" not in said(0.0)
    assert "stricter: it flags less tissue" in said(0.05) and "more sensitive" not in said(0.05)
    assert "more sensitive" not in said(0.0101) and "stricter" not in said(0.0101)  # at the target: no move
    assert "calibrated on 2 others" in said(0.0)

    token = CancelToken()
    token.cancel()
    with pytest.raises(Cancelled):
        fine_tune_site(det, normals, store, "site", cancel=token)
    assert [v.version for v in store.versions("site")] == ["v0001", "v0002", "v0003"]


def test_models_dir_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("ANOMALENS_DATA_DIR", str(tmp_path))
    assert models_dir() == tmp_path / "models"
    assert ModelStore().root == tmp_path / "models"


def test_a_profile_knows_the_bundle_it_started_from(tmp_path) -> None:
    store = ModelStore(tmp_path / "store")
    outside = _fitted(0).save(tmp_path / "shipped")
    assert store.base("shipped") is None  # no profile yet
    store.save_version(_fitted(1), outside)
    assert store.base("shipped") == outside.resolve()
    store.save_version(_fitted(2), "plain")  # no parent: no base
    assert store.base("plain") is None
    import shutil

    shutil.rmtree(outside)
    assert store.base("shipped") is None  # gone: nothing to roll back to


def test_a_version_bundle_names_no_file_on_disk(tmp_path):
    """Fine-tunes wrote the parent's absolute path into bundle.json (a folder like /data/Doe_John_model):
    a sibling version is named by its folder name, a base outside the profile in the profile's bases.json."""
    store = ModelStore(tmp_path / "models")
    outside = _fitted().save(tmp_path / "Doe_John_model")
    v1 = store.save_version(_fitted(1), outside)
    v2 = store.save_version(_fitted(2), v1.path)
    for v in (v1, v2):
        text = (v.path / "bundle.json").read_text()
        assert str(tmp_path) not in text and "Doe_John" not in text
    assert json.loads((v2.path / "bundle.json").read_text())["parent"]["path"] == "v0001"
    assert v1.parent == str(outside.resolve()) and v2.parent == str(v1.path.resolve())
    assert store.base(v1.path.parent.name) == outside.resolve()
    assert [i.path for i in store.lineage(v2.path)] == [v2.path, v1.path, outside]
    # a bundle from before, with the absolute path in it, still leads to its parent
    legacy = json.loads((v2.path / "bundle.json").read_text())
    legacy["parent"] = {"created": "x", "bundle_version": 2, "path": str(v1.path.resolve())}
    (v2.path / "bundle.json").write_text(json.dumps(legacy))
    assert store.lineage(v2.path)[1].path.resolve() == v1.path.resolve()


def test_a_fine_tune_of_a_bundle_in_the_store_is_listed_after_a_restart(tmp_path):
    """The demo model lives in the store as 'demo-brain1-lorentz'; its fine-tunes were saved inside its own
    folder, where neither the model list nor the profile list looked: after a restart they were unreachable."""
    import shutil

    store = ModelStore(tmp_path)
    base = _fitted().save(tmp_path / "demo")
    v1 = store.save_version(_fitted(1), base, note="site fine-tune")
    assert v1.path == tmp_path / "demo-site" / "v0001" and store.base("demo-site") == base.resolve()
    fresh = ModelStore(tmp_path)  # the next session
    assert fresh.profiles() == ["demo-site"] and fresh.active("demo-site").path == v1.path
    assert {b.path for b in fresh.bundles()} == {base, v1.path}
    # versions an earlier release saved inside the bundle's folder are listed too, and new ones follow them
    legacy = tmp_path / "old"
    shutil.copytree(base, legacy)
    shutil.copytree(v1.path, legacy / "v0001")
    assert legacy / "v0001" in {b.path for b in fresh.bundles()} and "old" in fresh.profiles()
    assert fresh.new_version_path(legacy) == legacy / "v0002"


def test_retraining_the_demo_keeps_the_site_versions_saved_inside_it(tmp_path):
    """Earlier releases saved the demo model's fine-tunes inside its folder; a retrain deleted the folder."""
    import shutil


    store = ModelStore(tmp_path)
    demo = _fitted().save(tmp_path / "demo-brain1-lorentz")
    v1 = store.save_version(_fitted(1), demo, note="site")
    shutil.move(str(v1.path), str(demo / "v0001"))  # the old layout
    shutil.move(str(v1.path.parent / "active.json"), str(demo / "active.json"))
    shutil.rmtree(v1.path.parent)
    assert ModelStore(tmp_path).move_versions_out(demo) == tmp_path / "demo-brain1-lorentz-site"
    _fitted(2).save(demo, overwrite=True)
    assert sorted(p.name for p in demo.iterdir()) == ["bundle.json", "weights.safetensors"]
    kept = tmp_path / "demo-brain1-lorentz-site"
    assert ModelStore(tmp_path).active(kept.name).note == "site"


def test_a_fine_tune_whose_calibration_slices_do_not_represent_the_marks_warns():
    """A model that flags the very slices the user marked normal was calibrated on slices unlike them; the report
    said only "more sensitive"."""
    from anomalens.engine.recalibration import recalibrate
    from tests.phantoms import phantom_slices

    normals = phantom_slices(6, 64, seed=3)[0]
    det = MeanDetector().fit(normals)
    alike = normals.copy()
    alike[1::2] = normals.mean(0)  # the calibration slices (every other one): as quiet as a slice can be
    rec = recalibrate(det, alike, fine_tune=True)
    assert rec.tuned_fp is not None and rec.tuned_fp > 5 * rec.calibration.target_fpr
    assert any("slices you marked normal and fine-tuned it on" in w for w in rec.warnings), rec.warnings
    fair = recalibrate(MeanDetector().fit(normals), normals, fine_tune=True)
    assert not any("marked normal" in w for w in fair.warnings), (fair.tuned_fp, fair.warnings)


def test_a_version_saved_but_not_made_active_says_so(tmp_path, monkeypatch):
    """With room for the bundle but not for active.json, the user read "disk full …: nothing was replaced"
    while a new version sat in the profile."""
    from anomalens.engine.errors import OutputError

    store = ModelStore(tmp_path)
    v1 = store.save_version(_fitted(), "p")

    def full(*args, **kwargs):
        raise OutputError("disk full while writing active.json: nothing was replaced")

    monkeypatch.setattr(store, "set_active", full)
    with pytest.raises(OutputError, match=r"saved p/v0002, but could not make it the version in use .*the one in use "
                                          r"is unchanged"):
        store.save_version(_fitted(1), "p")
    monkeypatch.undo()
    assert [v.version for v in store.versions("p")] == ["v0001", "v0002"] and store.active("p").path == v1.path
