"""Core plumbing: devices, progress/cancel, atomic writes, Volume, errors reaching the CLI as one line."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from anomalens.engine.device import available_devices, resolve_device
from anomalens.engine.errors import Cancelled, DeviceError, InvalidVolumeError
from anomalens.engine.fileio import atomic_dir, atomic_write_text
from anomalens.engine.progress import CancelToken, report, track
from anomalens.engine.volume import Volume, Window


def test_resolve_device_cpu_and_auto() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in {"cpu", "cuda", "mps"}
    assert available_devices()[:2] == ["auto", "cpu"]


def test_resolve_device_missing_backend_is_clear() -> None:
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="CUDA was requested"):
            resolve_device("cuda")
    with pytest.raises(DeviceError, match="unknown device"):
        resolve_device("tpu")


def test_track_reports_and_cancels() -> None:
    seen: list[float] = []
    token = CancelToken()
    out = []
    with pytest.raises(Cancelled):
        for i in track(range(10), 10, progress=lambda f, m: seen.append(f), cancel=token):
            out.append(i)
            if i == 3:
                token.cancel()
    assert out == [0, 1, 2, 3]
    assert seen == pytest.approx([0.1, 0.2, 0.3, 0.4])
    report(lambda f, m: seen.append(f), 7.0)
    assert seen[-1] == 1.0


def test_cancel_token_is_thread_safe() -> None:
    token = CancelToken()
    t = threading.Thread(target=token.cancel)
    t.start()
    t.join()
    assert token.cancelled


def test_atomic_write_leaves_old_file_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "calibration.json"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError):
        from anomalens.engine.fileio import atomic_path

        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("disk full")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["calibration.json"]


def test_atomic_dir_replaces_whole_folder(tmp_path: Path) -> None:
    target = tmp_path / "model"
    with atomic_dir(target) as d:
        (d / "a").write_text("1")
    with pytest.raises(FileExistsError):
        with atomic_dir(target):
            pass
    with pytest.raises(ValueError):
        with atomic_dir(target, overwrite=True) as d:
            (d / "b").write_text("2")
            raise ValueError("crash mid-write")
    assert sorted(p.name for p in target.iterdir()) == ["a"]
    with atomic_dir(target, overwrite=True) as d:
        (d / "b").write_text("2")
    assert sorted(p.name for p in target.iterdir()) == ["b"]
    assert sorted(os.listdir(tmp_path)) == ["model"]


def test_atomic_dir_never_replaces_a_folder_another_process_wrote_meanwhile(tmp_path: Path) -> None:
    """Two fine-tunes saving one model version both said "saved v0002", and the first one's was gone."""
    target = tmp_path / "v0002"
    with pytest.raises(FileExistsError):
        with atomic_dir(target) as d:
            (d / "bundle.json").write_text("mine")
            target.mkdir()  # another process renamed its whole version into place while this one wrote
            (target / "bundle.json").write_text("theirs")
    assert (target / "bundle.json").read_text() == "theirs"
    assert sorted(os.listdir(tmp_path)) == ["v0002"]  # and no temporary is left behind
    empty = tmp_path / "empty"
    with atomic_dir(empty) as d:  # a folder made and left empty meanwhile holds nothing to lose
        (d / "a").write_text("1")
        empty.mkdir()
    assert (empty / "a").read_text() == "1"


def test_volume_checks_and_geometry() -> None:
    v = Volume(np.zeros((4, 8, 9)), spacing=(0.5, 0.6, 2.0), windows=[Window(40, 80, "brain")])
    assert v.array.dtype == np.float32 and v.shape == (4, 8, 9)
    assert v.spacing_zyx == (2.0, 0.6, 0.5)
    assert v.windows[0].limits == (0.0, 80.0)
    sub = v.select_slices([2, 3])
    assert sub.origin[2] == pytest.approx(4.0) and sub.metadata["selected_slices"] == [2, 3]
    assert Volume(np.zeros((8, 8))).shape == (1, 8, 8)
    with pytest.raises(InvalidVolumeError):
        Volume(np.zeros((2, 2, 2, 2)))
    with pytest.raises(InvalidVolumeError):
        Volume(np.zeros((2, 4, 4)), spacing=(0.0, 1.0, 1.0))
    with pytest.raises(InvalidVolumeError):
        v.with_array(np.zeros((3, 8, 9)))
    with pytest.raises(InvalidVolumeError):
        v.select_slices([7])


def test_volume_to_sitk_keeps_geometry() -> None:
    v = Volume(np.arange(24, dtype=np.float32).reshape(2, 3, 4), spacing=(0.5, 0.7, 3.0), origin=(1.0, 2.0, 3.0))
    img = v.to_sitk()
    assert img.GetSize() == (4, 3, 2)
    assert img.GetSpacing() == pytest.approx((0.5, 0.7, 3.0))
    assert img.GetOrigin() == pytest.approx((1.0, 2.0, 3.0))
