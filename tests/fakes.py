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


class EmbeddingDetector(Detector):
    """Known per-patch embeddings (a 4×4 grid of patches per slice) on a chosen manifold, for the disk's tests.

    Heatmaps are smoothed noise (raw units: the model is not calibrated); embeddings lie on ``manifold``
    (Lorentz points with a hyperplane, or Euclidean features shifted off the origin).
    """

    name = "embedding-test"
    GRID = 4

    def __init__(self, manifold: str = "lorentz", **kwargs) -> None:
        super().__init__(**kwargs)
        self.manifold = manifold

    def _fit(self, normals, progress, cancel):
        return None

    def _score(self, slices, progress, cancel):
        from scipy import ndimage

        from anomalens.engine.detectors import Embeddings
        from anomalens.engine.geometry import lorentz

        n, h, w = slices.shape
        rng = np.random.default_rng(1)
        heat = ndimage.gaussian_filter(rng.random((n, h, w)), (0, 2, 2)).astype(np.float32) * 10.0
        k = self.GRID * self.GRID
        v = rng.standard_normal((n * k, 6)) * 0.6
        extra: dict = {}
        if self.manifold == "lorentz":
            pts = lorentz.expmap0(torch.from_numpy(v), 1.0).numpy()
            extra = {"curvature": 1.0, "hyperplane": np.array([1.0, 0.5, 0, 0, 0, 0]), "hyperplane_offset": 0.2}
        else:
            pts = v + 3.0
        gy = (np.arange(self.GRID) + 0.5) * h / self.GRID
        gx = (np.arange(self.GRID) + 0.5) * w / self.GRID
        centers = np.tile(np.stack(np.meshgrid(gy, gx, indexing="ij"), -1).reshape(-1, 2), (n, 1))
        emb = Embeddings(points=pts, slice_index=np.repeat(np.arange(n), k), centers=centers.astype(np.float32),
                         manifold=self.manifold, scores=rng.random(n * k), **extra)
        return AnomalyResult(heatmaps=heat, scores=heat.reshape(n, -1).max(1), embeddings=emb)

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        return None


def embedding_detector(manifold: str = "lorentz") -> EmbeddingDetector:
    """A fitted ``EmbeddingDetector`` (nothing to learn)."""
    det = EmbeddingDetector(manifold)
    det.fitted = True
    return det


class LesionEmbeddingDetector(EmbeddingDetector):
    """Lorentz embeddings as a trained model gives them: a tight blob far from the origin, lesions across a plane.

    Patches whose centre pixel is brighter than ``LESION_LEVEL`` (a bright square drawn into a dim scan) are
    the "lesion": their embeddings are moved ``DISPLACE`` along the classifier's normal, beyond a hyperplane at
    ``OFFSET`` from the normal blob's centre, and the heatmap is high on bright pixels (so a calibrated model
    flags them). The whole picture is then carried ``FAR`` from the origin by a hyperbolic translation (an
    isometry, hyperplane included): uncentred, the disk shows one small blob near the rim.
    """

    name = "lesion-embedding-test"
    DIM = 6
    LESION_LEVEL = 0.75
    SPREAD = 0.15
    DISPLACE = 1.0
    OFFSET = 0.5
    FAR = 2.5

    def __init__(self, **kwargs) -> None:
        super().__init__("lorentz", **kwargs)

    def _score(self, slices, progress, cancel):
        from scipy import ndimage

        from anomalens.engine.detectors import Embeddings
        from anomalens.engine.geometry import isometries, lorentz

        n, h, w = slices.shape
        rng = np.random.default_rng(2)
        bright = (slices > self.LESION_LEVEL).astype(np.float64)
        heat = (ndimage.gaussian_filter(rng.random((n, h, w)), (0, 2, 2)) * 0.5
                + ndimage.gaussian_filter(bright, (0, 1, 1)) * 10.0).astype(np.float32)
        gy = (np.arange(self.GRID) + 0.5) * h / self.GRID
        gx = (np.arange(self.GRID) + 0.5) * w / self.GRID
        grid = np.stack(np.meshgrid(gy, gx, indexing="ij"), -1).reshape(-1, 2)
        k = len(grid)
        centers = np.tile(grid, (n, 1))
        zi = np.repeat(np.arange(n), k)
        lesion = bright[zi, centers[:, 0].astype(int), centers[:, 1].astype(int)] > 0
        v = rng.standard_normal((n * k, self.DIM)) * self.SPREAD
        v[lesion, 0] += self.DISPLACE
        c = 1.0
        far = np.zeros(self.DIM)
        far[1], far[2] = self.FAR * 0.8, self.FAR * 0.6
        p = lorentz.expmap0(torch.from_numpy(far), c)
        to_far = isometries.lorentz_boost(torch.cat([p[:1], -p[1:]]), c)  # the inverse boost: origin → p
        pts = isometries.lorentz_apply(lorentz.expmap0(torch.from_numpy(v), c), to_far, c).numpy()
        z0 = torch.zeros(self.DIM, dtype=torch.float64)
        z0[0] = 2.0
        z, a = isometries.hyperplane_from_normal(to_far @ lorentz.hyperplane_normal(z0, self.OFFSET, c), c)
        emb = Embeddings(points=pts, slice_index=zi, centers=centers.astype(np.float32), manifold="lorentz",
                         curvature=c, scores=heat[zi, centers[:, 0].astype(int), centers[:, 1].astype(int)],
                         hyperplane=z.numpy(), hyperplane_offset=float(a))
        return AnomalyResult(heatmaps=heat, scores=heat.reshape(n, -1).max(1), embeddings=emb)


def lesion_embedding_detector() -> LesionEmbeddingDetector:
    """A fitted ``LesionEmbeddingDetector`` (nothing to learn; calibrate it to get a mask)."""
    det = LesionEmbeddingDetector()
    det.fitted = True
    return det
