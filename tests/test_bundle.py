"""Model bundles: safetensors + JSON, atomic, versioned, and never unpickled."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from anomalens.engine.detectors import load_bundle, read_manifest
from anomalens.engine.detectors import registry as reg
from anomalens.engine.detectors.bundle import SCHEMA_VERSION
from anomalens.engine.errors import ConfigError, ModelError, UnsafeModelFileError
from tests.fakes import MeanDetector


class FakeEntryPoint:
    name = "mean-test"

    def load(self):
        return MeanDetector


@pytest.fixture(autouse=True)
def registered(monkeypatch):
    monkeypatch.setattr(reg, "_entry_points", lambda: {"mean-test": FakeEntryPoint()})


def fitted() -> MeanDetector:
    return MeanDetector().fit(np.random.default_rng(0).random((3, 16, 16), dtype=np.float32))


def test_round_trip_and_manifest(tmp_path: Path) -> None:
    from anomalens.engine.calibration import Calibration, ScrSettings
    from anomalens.engine.postprocess.normalise import ScoreNormaliser

    det = fitted()
    norm = ScoreNormaliser().fit(np.random.default_rng(1).random((2, 16, 16)))
    det.calibration = Calibration(normaliser=norm, threshold=0.7, scr=ScrSettings(threshold=0.6, lam=1.5, tau=0.2))
    path = det.save(tmp_path / "m")
    m = read_manifest(path)
    assert m["schema_version"] == SCHEMA_VERSION and m["detector"] == "mean-test"
    for key in ("detector_version", "config", "preprocessing", "training", "calibration", "created",
                "anomalens_version", "bundle_version"):
        assert key in m
    assert m["training"]["fingerprint"].startswith("sha256:")
    again = load_bundle(path)
    assert again.calibration == det.calibration and again.calibration.scr.lam == 1.5
    assert again.content_fingerprint() == det.content_fingerprint()
    torch.testing.assert_close(again.mean, det.mean)


def test_new_version_keeps_the_parent(tmp_path: Path) -> None:
    det = fitted()
    p1 = det.save(tmp_path / "v1")
    parent = read_manifest(p1) | {"path": str(p1)}
    p2 = det.save(tmp_path / "v2", parent=parent)
    assert read_manifest(p2)["bundle_version"] == 2 and read_manifest(p2)["parent"]["path"] == str(p1)
    assert p1.is_dir()


def test_pickle_payload_is_refused_and_never_executed(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (Path.write_text, (marker, "code ran"))

    bundle = tmp_path / "evil"
    bundle.mkdir()
    (bundle / "model.pt").write_bytes(pickle.dumps(Evil()))
    (bundle / "bundle.json").write_text(json.dumps({"schema_version": 1, "detector": "mean-test", "config": {}}))
    with pytest.raises(UnsafeModelFileError, match="never unpickles"):
        load_bundle(bundle)
    with pytest.raises(UnsafeModelFileError):
        load_bundle(bundle / "model.pt")
    # A pickle disguised as safetensors is a damaged file, not code to run.
    (bundle / "model.pt").unlink()
    (bundle / "weights.safetensors").write_bytes(pickle.dumps(Evil()))
    with pytest.raises(ModelError, match="damaged or not a safetensors"):
        load_bundle(bundle)
    assert not marker.exists()


def test_newer_schema_is_refused_with_the_version(tmp_path: Path) -> None:
    path = fitted().save(tmp_path / "m")
    m = json.loads((path / "bundle.json").read_text())
    m["schema_version"] = SCHEMA_VERSION + 1
    (path / "bundle.json").write_text(json.dumps(m))
    with pytest.raises(ModelError, match=f"schema version {SCHEMA_VERSION + 1}"):
        load_bundle(path)


@pytest.mark.parametrize("content", ["{not json", "[]", '{"schema_version": "1"}', '{"schema_version": 1}'])
def test_broken_manifests(tmp_path: Path, content: str) -> None:
    path = fitted().save(tmp_path / "m")
    (path / "bundle.json").write_text(content)
    with pytest.raises(ModelError):
        load_bundle(path)


def test_missing_and_unknown(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="no model"):
        load_bundle(tmp_path / "nothing")
    with pytest.raises(ModelError, match=r"not trained|untrained"):
        MeanDetector().save(tmp_path / "x")
    with pytest.raises(ConfigError, match="unknown detector"):
        reg.get_detector_class("nope")
    with pytest.raises(ConfigError, match="unknown option"):
        MeanDetector(config={"bogus": 1})


def test_weights_that_do_not_fit_the_layout(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    path = fitted().save(tmp_path / "m")
    save_file({"other": torch.zeros(2)}, str(path / "weights.safetensors"))
    with pytest.raises(ModelError, match="checksum"):
        load_bundle(path)
    _rewrite_digest(path)  # forged with its checksum: the layout check still refuses it
    with pytest.raises(ModelError, match="layout"):
        load_bundle(path)


def _rewrite_digest(path: Path, digest: str | None = "auto") -> None:
    from anomalens.engine.detectors.bundle import file_sha256

    manifest = json.loads((path / "bundle.json").read_text())
    if digest == "auto":
        manifest["weights_sha256"] = file_sha256(path / "weights.safetensors")
    elif digest is None:
        manifest.pop("weights_sha256", None)
    else:
        manifest["weights_sha256"] = digest
    (path / "bundle.json").write_text(json.dumps(manifest))


def test_a_changed_weight_byte_is_refused_by_the_checksum(tmp_path: Path) -> None:
    """A model copied with one flipped bit in a tensor loaded and scored with wrong weights; now it is refused."""
    det = fitted()
    path = det.save(tmp_path / "m")
    manifest = json.loads((path / "bundle.json").read_text())
    assert len(manifest["weights_sha256"]) == 64
    assert load_bundle(path).content_fingerprint() == det.content_fingerprint()
    data = bytearray((path / "weights.safetensors").read_bytes())
    data[-3] ^= 0x10  # inside the last tensor's bytes: safetensors' own checks see nothing wrong
    (path / "weights.safetensors").write_bytes(bytes(data))
    with pytest.raises(ModelError, match="does not match the checksum"):
        load_bundle(path)
    _rewrite_digest(path, None)  # a bundle saved before the checksum existed loads as it did
    assert load_bundle(path).content_fingerprint() != det.content_fingerprint()
    _rewrite_digest(path, "not-a-digest")
    with pytest.raises(ModelError, match="weights_sha256 must be 64 hexadecimal digits"):
        load_bundle(path)
