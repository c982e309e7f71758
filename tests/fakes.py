"""Small real detectors for tests: a mean-difference detector for bundle mechanics, a calibrated PatchCore."""

from __future__ import annotations

import numpy as np
import torch

from anomalens.engine.detectors import Detector
from anomalens.engine.detectors.result import AnomalyResult
from tests.phantoms import phantom_slices


class MeanDetector(Detector):
    """Scores |x − mean normal slice|: the smallest real detector, for bundle and model-store mechanics."""

    name = "mean-test"

    def _fit(self, normals, progress, cancel):
        self.mean = torch.as_tensor(normals.mean(0))

    def _score(self, slices, progress, cancel):
        maps = np.abs(slices - self.mean.numpy())
        return AnomalyResult(heatmaps=maps, scores=maps.reshape(len(maps), -1).max(1))

    def state_dict(self):
        return {"mean": self.mean}

    def load_state_dict(self, state):
        self.mean = state["mean"]


def calibrated_patchcore(n_calibration: int = 4, modality: str | None = None) -> Detector:
    """PatchCore's tiny test config fitted on 6 phantom slices and calibrated on other phantom normals."""
    from anomalens.engine.recalibration import calibrate_detector
    from anomalens.plugins.patchcore import PatchCoreDetector

    torch.set_num_threads(1)
    det = PatchCoreDetector(config=PatchCoreDetector.test_config(), seed=0)
    det.fit(phantom_slices(6, 64, seed=0)[0])
    calibrate_detector(det, phantom_slices(n_calibration, 64, seed=1)[0])
    if modality is not None:
        det.training["modality"] = modality
    return det


def use_model_folders(monkeypatch, bundle, tmp_path):
    """Point the app's data folder at ``bundle``'s models folder and its config into ``tmp_path``."""
    monkeypatch.setenv("ANOMALENS_DATA_DIR", str(bundle.parent.parent))
    monkeypatch.setenv("ANOMALENS_CONFIG_DIR", str(tmp_path / "config"))
    return bundle
