"""A PatchCore-kind detector (Roth et al. 2022) in the AnomaLens interface.

A memory bank of normal patch features from the same frozen backbone and patch pipeline as our detectors
(``anomalens.engine.patchfeatures``), subsampled by greedy coreset; the anomaly score of a patch is its
distance to the nearest bank entry. It trains nothing, which makes it the honest baseline the Lorentz,
curved-head and other detectors must beat on the same features.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import numpy as np
import torch

from ...engine.backbones import parse_spec
from ...engine.batching import batches
from ...engine.coreset import greedy_coreset, nearest_distance
from ...engine.detectors.base import Detector, DetectorConfig
from ...engine.detectors.result import AnomalyResult, Embeddings
from ...engine.errors import ConfigError
from ...engine.patchfeatures import PatchFeatureExtractor, extractor_for
from ...engine.patchmaps import patch_centers, patch_slice_index, to_heatmap
from ...engine.progress import CancelToken, ProgressCallback, check, report, stage


@dataclasses.dataclass
class PatchCoreConfig(DetectorConfig):
    """Defaults follow PatchCore (patch size 3, 10 % coreset) on the offline EfficientNet-Lite0 backbone.

    ``smoothing_sigma`` is in pixels of the ``input_size`` input, scaled to the slice grid by the shared
    rule of ``anomalens.engine.patchmaps`` (before 2026-12-06 PatchCore alone took it in slice pixels).
    """

    backbone: str = "lite0"
    input_size: int = 224
    levels: tuple[str, ...] = ("s8", "s16")
    patch_size: int = 3
    coreset_ratio: float = 0.1
    max_bank: int = 16384
    projection_dim: int = 128
    smoothing_sigma: float = 4.0
    batch_size: int = 16
    chunk: int = 512

    #: Ranges beyond ``COMMON_LIMITS`` (and tighter ones where this detector's memory needs them). The bank
    #: holds at most ``max_bank`` rows of ΣC ≤ 1,536 channels (wrn50; lite0 152): 131,072 rows are 0.75 GiB
    #: (76 MiB on lite0), 8× the default. Scoring forms a ``chunk`` × bank-rows distance block: 4,096 × 131,072
    #: floats are 2 GiB at the very worst, 256 MiB on the default bank (8× the default chunk).
    LIMITS: ClassVar[dict[str, tuple[float, float]]] = {
        "coreset_ratio": (0.0, 1.0),  # (0, 1]: __post_init__ refuses 0
        "max_bank": (1, 1 << 17),
        "chunk": (1, 4096),
    }

    def __post_init__(self) -> None:
        self.levels = tuple(self.levels)
        parse_spec(self.backbone)  # an unknown backbone is one line now, not at the first feature extraction
        if not 0 < self.coreset_ratio <= 1:
            raise ConfigError(f"coreset_ratio must be in (0, 1], got {self.coreset_ratio}")
        if self.input_size < 32 or self.patch_size < 1 or self.max_bank < 1 or self.batch_size < 1:
            raise ConfigError("input_size ≥ 32, patch_size ≥ 1, max_bank ≥ 1 and batch_size ≥ 1 are required")


class PatchCoreDetector(Detector):
    name: ClassVar[str] = "patchcore"
    version: ClassVar[str] = "1"
    description: ClassVar[str] = "PatchCore-kind reference: nearest-neighbour distance to a coreset memory bank"
    config_class = PatchCoreConfig

    def __init__(self, config: dict[str, Any] | DetectorConfig | None = None, device: str = "cpu",
                 seed: int = 0) -> None:
        super().__init__(config, device, seed)
        self.bank: torch.Tensor | None = None

    @classmethod
    def test_config(cls) -> dict[str, Any]:
        return {"input_size": 64, "max_bank": 256, "smoothing_sigma": 1.0}

    @property
    def extractor(self) -> PatchFeatureExtractor:
        return extractor_for(self.config, self.device, self.backbone_weights)

    def _features(self, slices: np.ndarray, progress: ProgressCallback | None, cancel: CancelToken | None,
                  start: float = 0.0, stop: float = 1.0) -> torch.Tensor:
        """(n, C, h, w) patch features, in batches, honouring cancel between batches."""
        return torch.cat([self.extractor(slices[b]).concat()
                          for b in batches(len(slices), self.config.batch_size, progress, cancel,
                                           "extracting features", start, stop)])

    def _fit(self, normals: np.ndarray, progress: ProgressCallback | None, cancel: CancelToken | None) -> None:
        feats = self._features(normals, progress, cancel, 0.0, 0.4)
        flat = feats.permute(0, 2, 3, 1).reshape(-1, feats.shape[1])
        n_select = min(self.config.max_bank, max(1, round(self.config.coreset_ratio * len(flat))))
        idx = greedy_coreset(flat, n_select, self.config.projection_dim, self.seed,
                             progress=stage(progress, 0.4, 1.0), cancel=cancel)
        self.bank = flat[idx].contiguous()

    def _nearest(self, query: torch.Tensor) -> torch.Tensor:
        """Distance of each query row to its nearest bank row, chunked to bound memory."""
        assert self.bank is not None
        return nearest_distance(query, self.bank, self.config.chunk)

    def _score(self, slices: np.ndarray, progress: ProgressCallback | None,
               cancel: CancelToken | None) -> AnomalyResult:
        feats = self._features(slices, progress, cancel, 0.0, 0.8)
        n, c, h, w = feats.shape
        flat = feats.permute(0, 2, 3, 1).reshape(-1, c)
        check(cancel)
        patch_scores = self._nearest(flat).reshape(n, h, w)
        maps = to_heatmap(patch_scores, slices.shape[1:], self.config.smoothing_sigma, self.config.input_size)
        report(progress, 1.0, "scored")
        emb = Embeddings(points=flat.cpu().numpy(), slice_index=patch_slice_index((h, w), n),
                         centers=patch_centers((h, w), slices.shape[1:], n), manifold="euclidean", curvature=0.0,
                         scores=patch_scores.reshape(-1).cpu().numpy())
        return AnomalyResult(heatmaps=maps, scores=maps.reshape(n, -1).max(1), embeddings=emb,
                             info={"image_score": "max of the heatmap"})

    def state_dict(self) -> dict[str, torch.Tensor]:
        assert self.bank is not None
        return {"memory_bank": self.bank}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        bank = state["memory_bank"]
        if bank.ndim != 2 or bank.shape[0] < 1 or bank.shape[1] != self.extractor.dim:
            raise ValueError(f"memory bank has shape {tuple(bank.shape)}; this configuration's patch features "
                             f"have {self.extractor.dim} channels")
        self.bank = bank.to(self.device, torch.float32)
