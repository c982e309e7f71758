"""Forged bundles are refused with one line, before anything large is allocated (issue #18).

Each case takes a real (tiny) PatchCore bundle and forges one thing the adversarial run tried: absurd or
mistyped options, a JSON nested 100,000 deep, a memory bank that is empty, mis-shaped, NaN, int8 or bool, a
negative schema version. Loading goes through the CLI (one line, exit 2) and through ``load_bundle``
(``ModelError``), each within seconds.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
import torch

from anomalens.engine.detectors import load_bundle
from anomalens.engine.errors import ModelError
from tests.phantoms import phantom_slices
from tests.test_cli import assert_one_line_error


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    from anomalens.plugins.patchcore import PatchCoreDetector

    det = PatchCoreDetector(config=PatchCoreDetector.test_config(), seed=0)
    det.fit(phantom_slices(3, 64, seed=0)[0])
    return det.save(tmp_path_factory.mktemp("forged") / "good")


def _forge_config(bundle: Path, tmp: Path, **changes) -> Path:
    out = tmp / "forged"
    shutil.copytree(bundle, out)
    manifest = json.loads((out / "bundle.json").read_text())
    manifest["config"].update(changes)
    (out / "bundle.json").write_text(json.dumps(manifest))
    return out


def _forge_bank(bundle: Path, tmp: Path, bank: torch.Tensor) -> Path:
    from safetensors.torch import save_file

    from anomalens.engine.detectors.bundle import file_sha256

    out = tmp / "forged"
    shutil.copytree(bundle, out)
    save_file({"memory_bank": bank}, str(out / "weights.safetensors"))
    # a forger rewrites the checksum too: it guards against damage, the checks below against forgery
    manifest = json.loads((out / "bundle.json").read_text())
    manifest["weights_sha256"] = file_sha256(out / "weights.safetensors")
    (out / "bundle.json").write_text(json.dumps(manifest))
    return out


def _refused(path: Path, match: str) -> None:
    t0 = time.perf_counter()
    with pytest.raises(ModelError, match=match):
        load_bundle(path)
    assert time.perf_counter() - t0 < 5.0


@pytest.mark.parametrize(("changes", "match"), [
    ({"smoothing_sigma": 1e9}, "smoothing_sigma must be between"),
    ({"input_size": 100000}, "input_size must be between"),
    ({"input_size": "big"}, "input_size must be a whole number"),
    ({"levels": ["s999"]}, "levels must be one or more of"),
    ({"levels": []}, "levels must be one or more of"),
    ({"chunk": 0}, "chunk must be between"),
    ({"smoothing_sigma": float("nan")}, "smoothing_sigma must be a finite number"),
    ({"max_bank": -1}, "max_bank must be between"),
    ({"no_such_option": 1}, "unknown option"),
])
def test_forged_options_are_refused_before_allocation(bundle, tmp_path, changes, match) -> None:
    _refused(_forge_config(bundle, tmp_path, **changes), match)


@pytest.mark.parametrize(("bank", "match"), [
    (torch.zeros((0, 8)), "empty"),
    (torch.full((4, 8), float("nan")), "NaN"),
    (torch.ones((4, 8), dtype=torch.int8), "I8"),
    (torch.ones((4, 8), dtype=torch.bool), "BOOL"),
    (torch.ones(16), "layout"),
    (torch.ones((4, 7)), "channels"),  # a bank of the wrong feature width: refused at load, not at scoring
])
def test_forged_memory_banks_are_refused(bundle, tmp_path, bank, match) -> None:
    _refused(_forge_bank(bundle, tmp_path, bank), match)


def test_forged_manifests_are_refused(bundle, tmp_path) -> None:
    manifest = json.loads((bundle / "bundle.json").read_text())
    cases = {
        "schema": ({**manifest, "schema_version": -7}, "schema_version"),
        "types": ({**manifest, "config": [1, 2]}, "config must be an object"),
        "seed": ({**manifest, "seed": "zero"}, "seed must be a whole number"),
    }
    for name, (forged, match) in cases.items():
        out = tmp_path / name
        shutil.copytree(bundle, out)
        (out / "bundle.json").write_text(json.dumps(forged))
        _refused(out, match)
    deep = tmp_path / "deep"
    shutil.copytree(bundle, deep)
    (deep / "bundle.json").write_text("[" * 100_000 + "]" * 100_000)
    _refused(deep, "nested too deeply")


@pytest.mark.parametrize("grid", [{"fov_mm": 216.0, "size": 1_000_000}, {"fov_mm": 1e30, "size": 276},
                                  {"fov_mm": 216.0, "size": 276.5}, {"fov_mm": 216.0, "size": "276"},
                                  {"fov_mm": 216.0, "size": True}, {"fov_mm": float("nan"), "size": 276}])
def test_a_forged_working_grid_is_refused_at_load(bundle, tmp_path, grid) -> None:
    """A 10⁶-pixel grid ran scoring out of memory (10 TB asked); a 10³⁰-mm one made one slice 176 mL."""
    out = tmp_path / "forged"
    shutil.copytree(bundle, out)
    manifest = json.loads((out / "bundle.json").read_text())
    manifest["preprocessing"] = {"grid": grid}
    (out / "bundle.json").write_text(json.dumps(manifest))
    _refused(out, "preprocessing is invalid")


def test_the_cli_refuses_a_forged_bundle_in_one_line(bundle, tmp_path, capsys) -> None:
    forged = _forge_config(bundle, tmp_path, input_size=100000)
    msg = assert_one_line_error(capsys, ["score", "--model", str(forged), "sample:mr_brain_small",
                                         "--out", str(tmp_path / "o")])
    assert "input_size" in msg and not (tmp_path / "o").exists()
