"""The InvDetect bench's saved U-Net: the same weights come back, and only for the slices it was trained on."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from anomalens.plugins.invdetect import InvDetectDetector
from anomalens.plugins.invdetect.patches import extract_patches
from tests.phantoms import phantom_slices

BENCH = Path(__file__).resolve().parents[1] / "bench" / "bench_invdetect.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_invdetect", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_saved_unet_reloads_only_for_its_own_fit_slices(bench, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    normals, _ = phantom_slices(3, 32, seed=4)
    det = InvDetectDetector(InvDetectDetector.test_config(), seed=0)
    patches, _ = extract_patches(det._grid(normals), det.cfg.patch_size, det.stride)
    det._train_unet(patches, None, None)
    path = str(tmp_path / "unet.safetensors")
    meta = bench.save_unet(det, path, normals, {"seed": "0"})
    assert meta["epochs"] == str(det.cfg.epochs)

    again = InvDetectDetector(InvDetectDetector.test_config() | {"epochs": 7}, seed=1)
    bench.load_unet(again, path, normals)
    assert again.cfg.epochs == det.cfg.epochs  # the row reports the training that was actually done
    torch.testing.assert_close(again.invert(patches[:4]), det.invert(patches[:4]))

    other = normals.copy()
    other[0, 0, 0] += np.float32(0.5)
    with pytest.raises(SystemExit, match="other slices"):
        bench.load_unet(InvDetectDetector(InvDetectDetector.test_config()), path, other)
