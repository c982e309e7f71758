"""``anomalens self-test`` / ``--self-test`` from the normal install (the frozen bundle runs it in test_installer)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from anomalens.engine.cli.main import _self_test_alias, main
from anomalens.engine.selftest import SelfTestFailed, run_self_test


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch) -> None:
    # The MNI152 sample derives its brain mask into the cache: keep that out of the user's cache.
    monkeypatch.setenv("ANOMALENS_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "selftest-cache"))


def test_self_test_writes_a_finite_heatmap_on_the_scan_grid(tmp_path: Path) -> None:
    from anomalens.engine.io import read_scan
    from anomalens.engine.pipeline import load_volume
    from anomalens.engine.selftest import DEFAULT_SAMPLE

    rep = run_self_test(tmp_path)
    steps = [s for s, _, _ in rep.steps]
    assert steps == ["install", "detectors", "read", "train", "bundle", "score", "write", "verify"]
    assert rep.kept and rep.heatmap == tmp_path / "heatmap.nii.gz"
    scan = load_volume(DEFAULT_SAMPLE)
    heat = read_scan(rep.heatmap)
    assert heat.shape == scan.shape == rep.shape
    assert np.isfinite(heat.array).all() and heat.array.max() > heat.array.min()
    assert (tmp_path / "model" / "bundle.json").is_file() and (tmp_path / "scores.csv").is_file()
    assert rep.lines()[-1].startswith("self-test passed")


def test_self_test_without_out_leaves_no_files_behind() -> None:
    rep = run_self_test(None, sample="sample:mni152#80-83", n_train=2)
    assert rep.shape == (4, 233, 197)
    assert not rep.kept and rep.heatmap is not None and not rep.heatmap.exists()


def test_top_level_flag_runs_the_sub_command(capsys, tmp_path: Path) -> None:
    code = main(["--self-test", "--out", str(tmp_path), "--sample", "sample:mni152#80-83", "--json"])
    out = capsys.readouterr()
    assert code == 0, out.err
    data = json.loads(out.out)
    assert data["ok"] and data["shape"] == [4, 233, 197] and Path(data["heatmap"]).is_file()
    names = next(s["detail"] for s in data["steps"] if s["step"] == "detectors")
    assert names.startswith("5:")


def test_a_failing_step_is_named_and_exits_1(capsys, tmp_path: Path) -> None:
    with pytest.raises(SelfTestFailed) as err:
        run_self_test(tmp_path, detector="no-such-detector")
    assert err.value.step == "detectors" and "no-such-detector" in str(err.value)
    code = main(["self-test", "--sample", "sample:no-such-sample"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert "step 'read' failed" in lines[0] and "no-such-sample" in lines[0]
    assert "self-test FAILED" in lines[-1]


@pytest.mark.parametrize(("argv", "expected"), [
    (["--self-test"], ["self-test"]),
    (["-v", "--self-test", "--json"], ["-v", "self-test", "--json"]),
    (["info", "--self-test"], ["info", "--self-test"]),  # after a sub-command it is that command's business
    (["detectors"], ["detectors"]),
])
def test_self_test_alias(argv: list[str], expected: list[str]) -> None:
    assert _self_test_alias(argv) == expected


def test_a_full_disk_is_not_called_a_damaged_installation(capsys, tmp_path: Path, monkeypatch) -> None:
    """With --out on a full disk the self-test said "this installation is incomplete or damaged" (exit 1)."""
    import errno

    import anomalens.engine.selftest as selftest

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(selftest, "write_scan_result", full, raising=False)
    monkeypatch.setattr("anomalens.engine.outputs.write_scan_result", full)
    monkeypatch.setenv("ANOMALENS_PROGRESS", "0")
    code = main(["self-test", "--out", str(tmp_path / "st")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert "could not write its files" in err[0] and "damaged" not in err[0]
