"""Curved-geometry heads for one-class anomaly localisation (paper: curved-geometric-networks).

A self-supervised base classifier trained on normal slices only: each slice is rotated by 0/90/180/270°,
the frozen backbone's patch features (stride 8 and 16, concatenated) of the rotated slice go through a
small shared extractor, and the heads of the chosen variant predict the rotation per patch. At scoring,
each patch of the slice gets ``AS = 1 − tanh(z)`` from its curved embedding (``1 − max softmax`` for the
Euclidean baseline), upsampled to the slice grid. The choices the paper leaves open are listed and
justified in README.md beside this file.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from ...engine.backbones import parse_spec
from ...engine.batching import batches
from ...engine.detectors.base import Detector, DetectorConfig
from ...engine.detectors.result import AnomalyResult, Embeddings
from ...engine.errors import ConfigError
from ...engine.geometry.manifolds import C_MAX, C_MIN
from ...engine.patchfeatures import PatchFeatureExtractor, extractor_for
from ...engine.patchmaps import patch_centers, patch_slice_index, to_heatmap
from ...engine.preprocess.foreground import foreground_mask
from ...engine.preprocess.resize import resize_tensor, to_tensor
from ...engine.progress import CancelToken, ProgressCallback, check, report
from ...engine.training import shuffled_batches, train_loop
from .heads import N_ROTATIONS, VARIANTS, CurvedHeads, canonical_variant, default_kappa_h


@dataclasses.dataclass
class CurvedHeadsConfig(DetectorConfig):
    """Paper settings where they exist (κ_S = 1, κ_H = −0.01 for *iO / −1 for *iT, Adam); the rest ours.

    ``variant`` defaults to MiT, the paper's recommendation and the best, steadiest variant on brain1 over
    three seeds on the working grid (README; HiO, the default before the grid, swung 0.23–0.74 there).
    ``kappa_h = None`` picks the paper's value for the variant. ``score_rotations`` = 1 scores the
    unrotated slice; 4 averages the maps of the four rotations after rotating them back (measured worse
    for the best variants on brain1, README).
    """

    variant: str = "MiT"
    kappa_s: float = 1.0
    kappa_h: float | None = None
    xi: float = 4e-3
    backbone: str = "lite0"
    input_size: int = 224
    levels: tuple[str, ...] = ("s8", "s16")
    patch_size: int = 3
    hidden: int = 128
    dim: int = 64
    epochs: int = 8
    lr: float = 1e-3
    batch_patches: int = 4096
    min_tissue: float = 0.1
    score_rotations: int = 1
    smoothing_sigma: float = 4.0
    mask_background: bool = True
    batch_size: int = 16
    fine_tune_epochs: int = 3
    fine_tune_lr: float = 3e-4

    #: Ranges beyond ``COMMON_LIMITS`` (tighter where memory needs it), 16× the defaults. The largest head,
    #: ΣC = 1,536 (wrn50) → hidden 2,048 → dim 1,024 plus the dim × dim Möbius layer, holds 6.3 M parameters
    #: (25 MiB); a training batch is 65,536 × ΣC floats (0.4 GiB).
    LIMITS: ClassVar[dict[str, tuple[float, float]]] = {
        "kappa_s": (C_MIN, C_MAX),
        "kappa_h": (-C_MAX, -C_MIN),
        "xi": (0.0, 1.0),  # (0, 1): __post_init__ refuses both ends
        "hidden": (2, 2048),
        "dim": (2, 1024),
        "batch_patches": (16, 1 << 16),
        "min_tissue": (0.0, 1.0),  # [0, 1): __post_init__ refuses 1
        "score_rotations": (1, N_ROTATIONS),  # 1 or 4: __post_init__
    }

    def __post_init__(self) -> None:
        self.levels = tuple(self.levels)
        parse_spec(self.backbone)  # an unknown backbone is one line now, not at the first feature extraction
        try:
            self.variant = canonical_variant(self.variant)
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
        if self.kappa_h is not None and not -C_MAX <= self.kappa_h <= -C_MIN:
            raise ConfigError(f"kappa_h (Poincaré ball curvature) must be in [−{C_MAX:g}, −{C_MIN:g}], "
                              f"got {self.kappa_h}")
        if not C_MIN <= self.kappa_s <= C_MAX:
            raise ConfigError(f"kappa_s (sphere curvature) must be in [{C_MIN:g}, {C_MAX:g}], got {self.kappa_s}")
        if not 0 < self.xi < 1:
            raise ConfigError(f"xi (clipping margin of eq. 4) must be in (0, 1), got {self.xi}")
        if self.score_rotations not in (1, N_ROTATIONS):
            raise ConfigError(f"score_rotations must be 1 or {N_ROTATIONS}, got {self.score_rotations}")
        if self.epochs < 1 or self.hidden < 2 or self.dim < 2 or self.batch_patches < 16 or self.batch_size < 1:
            raise ConfigError("epochs ≥ 1, hidden ≥ 2, dim ≥ 2, batch_patches ≥ 16 and batch_size ≥ 1 are required")
        if self.input_size < 32 or self.patch_size < 1 or self.fine_tune_epochs < 0:
            raise ConfigError("input_size ≥ 32, patch_size ≥ 1 and fine_tune_epochs ≥ 0 are required")
        if not 0 <= self.min_tissue < 1:
            raise ConfigError(f"min_tissue must be in [0, 1), got {self.min_tissue}")

    @property
    def kappa_h_effective(self) -> float:
        return default_kappa_h(self.variant) if self.kappa_h is None else float(self.kappa_h)


@dataclasses.dataclass
class _RotationSet:
    """Cached, standardised patch features of all rotations (float16) with their rotation labels."""

    feats: torch.Tensor
    labels: torch.Tensor


class CurvedHeadsDetector(Detector):
    name: ClassVar[str] = "curved"
    variants: ClassVar[tuple[str, ...]] = VARIANTS
    version: ClassVar[str] = "1"
    description: ClassVar[str] = ("Curved-geometry heads (spherical / hyperbolic / mixed, in-One and in-Two) on a "
                                  "patch-level rotation-prediction task; variant=euclidean is the baseline")
    config_class = CurvedHeadsConfig

    def __init__(self, config: dict[str, Any] | DetectorConfig | None = None, device: str = "cpu",
                 seed: int = 0) -> None:
        super().__init__(config, device, seed)
        self.head: CurvedHeads | None = None
        self.stats: dict[str, torch.Tensor] = {}
        self.training_log: dict[str, Any] = {}

    @classmethod
    def test_config(cls) -> dict[str, Any]:
        return {"input_size": 64, "epochs": 2, "hidden": 16, "dim": 8, "batch_patches": 256, "smoothing_sigma": 1.0,
                "fine_tune_epochs": 1}

    # -- features ------------------------------------------------------------------------------
    @property
    def extractor(self) -> PatchFeatureExtractor:
        return extractor_for(self.config, self.device, self.backbone_weights)

    def _square(self, slices: np.ndarray) -> torch.Tensor:
        """(n, H, W) → (n, 1, S, S) at the backbone's input size, so a rotation by 90° is exact."""
        return resize_tensor(to_tensor(slices, self.device), self.config.input_size)

    def _standardise(self, f: torch.Tensor) -> torch.Tensor:
        """Per-channel z-scores on the normals' statistics; channels last (..., C) or (n, C, h, w)."""
        mean, std = self.stats["mean"].to(f.device), self.stats["std"].to(f.device)
        if f.ndim == 4:
            mean, std = mean.view(1, -1, 1, 1), std.view(1, -1, 1, 1)
        return (f - mean) / std

    def _rotation_set(self, normals: np.ndarray, progress: ProgressCallback | None, cancel: CancelToken | None,
                      start: float, stop: float) -> _RotationSet:
        """Raw features of every rotation of every normal, computed once (the backbone is frozen) and cached.

        Patches with less than ``min_tissue`` tissue are left out: air has no orientation to predict, and
        training on it would only teach the heads to be unsure there. Stored as float16 (half the memory).
        """
        fg = torch.as_tensor(foreground_mask(normals).astype(np.float32)).unsqueeze(1)
        fg = resize_tensor(fg, self.config.input_size)
        feats, labels = [], []
        share = (stop - start) / N_ROTATIONS
        for k in range(N_ROTATIONS):
            for b in batches(len(normals), self.config.batch_size, progress, cancel,
                             f"rotation {k + 1}/{N_ROTATIONS}: features of {{done}}/{{total}} slices",
                             start + k * share, start + (k + 1) * share):
                x = torch.rot90(self._square(normals[b]), k, dims=(-2, -1))
                f = self.extractor.features(x).concat()
                h, w = f.shape[-2:]
                tissue = F.adaptive_avg_pool2d(torch.rot90(fg[b], k, dims=(-2, -1)), (h, w)).reshape(-1)
                flat = f.permute(0, 2, 3, 1).reshape(-1, f.shape[1])
                flat = flat[(tissue >= self.config.min_tissue).to(flat.device)]
                feats.append(flat.to(torch.float16))
                labels.append(torch.full((len(flat),), k, dtype=torch.long, device=flat.device))
        data = _RotationSet(torch.cat(feats), torch.cat(labels))
        if len(data.labels) == 0:
            raise ConfigError("the normal slices hold no tissue patches to learn from; they may be empty (air)")
        return data

    def _fit_stats(self, feats: torch.Tensor, chunk: int = 65536) -> None:
        """Per-channel mean/std of the tissue patches of all rotations (float64 sums over chunks)."""
        total = torch.zeros(feats.shape[1], dtype=torch.float64, device=feats.device)
        sq = torch.zeros_like(total)
        for b in batches(len(feats), chunk):
            x = feats[b].double()
            total += x.sum(0)
            sq += (x * x).sum(0)
        mean = total / len(feats)
        std = torch.sqrt(torch.clamp_min(sq / len(feats) - mean * mean, 0))
        self.stats = {"mean": mean.float(), "std": std.float().clamp_min(1e-3)}

    def _standardise_set(self, data: _RotationSet, chunk: int = 65536) -> _RotationSet:
        out = torch.empty_like(data.feats)
        for b in batches(len(out), chunk):
            out[b] = self._standardise(data.feats[b].float()).to(torch.float16)
        return _RotationSet(out, data.labels)

    # -- training ------------------------------------------------------------------------------
    def _new_head(self) -> CurvedHeads:
        c = self.config
        return CurvedHeads(self.extractor.dim, c.hidden, c.dim, c.variant, c.kappa_s, c.kappa_h_effective,
                           c.xi).to(self.device)

    def _train(self, data: _RotationSet, epochs: int, lr: float, progress: ProgressCallback | None,
               cancel: CancelToken | None, start: float, stop: float, seed: int) -> None:
        """Adam on the summed cross-entropies of the variant's branches, balanced minibatches of patches."""
        head = self.head
        assert head is not None
        gen = torch.Generator().manual_seed(seed)  # the batch order, then the accuracy subsample below
        n = len(data.labels)

        def step(idx: torch.Tensor) -> torch.Tensor:
            idx = idx.to(data.labels.device)
            return head.loss(head(data.feats[idx].to(self.device, torch.float32)), data.labels[idx].to(self.device))

        log = train_loop(head, step, shuffled_batches(n, min(self.config.batch_patches, n)), epochs, lr=lr,
                         generator=gen, progress=progress, cancel=cancel, start=start, stop=stop)
        with torch.no_grad():
            sub = torch.randperm(n, generator=gen)[: min(n, 20000)].to(data.labels.device)
            acc = head.accuracy(head(data.feats[sub].to(self.device, torch.float32)), data.labels[sub].to(self.device))
        self.training_log = {"final_loss": log.final_loss, "rotation_accuracy": acc, "n_patches": n,
                             "kappa_s": self.config.kappa_s, "kappa_h": self.config.kappa_h_effective}

    def _fit(self, normals: np.ndarray, progress: ProgressCallback | None, cancel: CancelToken | None) -> None:
        report(progress, 0.0, "features of the rotated normals")
        raw = self._rotation_set(normals, progress, cancel, 0.0, 0.45)
        self._fit_stats(raw.feats)
        data = self._standardise_set(raw)
        del raw
        self.head = self._new_head()
        self._train(data, self.config.epochs, self.config.lr, progress, cancel, 0.45, 1.0, self.seed)

    def _fine_tune(self, normals: np.ndarray, progress: ProgressCallback | None,
                   cancel: CancelToken | None) -> None:
        """Continue the rotation task on a site's marked normals (same statistics, lower learning rate)."""
        if self.config.fine_tune_epochs == 0:
            return
        data = self._standardise_set(self._rotation_set(normals, progress, cancel, 0.0, 0.4))
        self._train(data, self.config.fine_tune_epochs, self.config.fine_tune_lr, progress, cancel, 0.4, 1.0,
                    self.seed + 1)

    # -- scoring -------------------------------------------------------------------------------
    def _score(self, slices: np.ndarray, progress: ProgressCallback | None,
               cancel: CancelToken | None) -> AnomalyResult:
        assert self.head is not None
        n, H, W = slices.shape
        c = self.config
        maps, points, patch_scores = [], [], []
        manifold, curvature = "euclidean", 0.0
        grid: tuple[int, int] | None = None
        for b in batches(n, c.batch_size, progress, cancel, "scored {done}/{total} slices"):
            x = self._square(slices[b])
            acc = None
            for k in range(c.score_rotations):
                check(cancel)
                f = self._standardise(self.extractor.features(torch.rot90(x, k, dims=(-2, -1))).concat())
                b, d, h, w = f.shape
                out = self.head(f.permute(0, 2, 3, 1).reshape(-1, d))
                a = self.head.anomaly_score(out).reshape(b, h, w)
                a = torch.rot90(a, -k, dims=(-2, -1))
                acc = a if acc is None else acc + a
                if k == 0:
                    grid = (h, w)
                    e, manifold, curvature = self.head.viewer_embedding(out)
                    points.append(e.float().cpu())
                    patch_scores.append(a.reshape(-1).float().cpu())
            assert acc is not None
            maps.append((acc / c.score_rotations).float())
        assert grid is not None
        heat = to_heatmap(torch.cat(maps), (H, W), c.smoothing_sigma, c.input_size)
        if c.mask_background:
            # per slice, so a slice's map never depends on which other slices share its batch
            fg = np.stack([foreground_mask(s) for s in slices])
            heat = np.where(fg, heat, 0.0).astype(np.float32)
        emb = Embeddings(points=torch.cat(points).numpy(), slice_index=patch_slice_index(grid, n),
                         centers=patch_centers(grid, (H, W), n), manifold=manifold, curvature=float(curvature),
                         scores=torch.cat(patch_scores).numpy())
        score_name = "1 - max softmax" if c.variant == "euclidean" else "1 - tanh(z)"
        return AnomalyResult(heatmaps=heat, scores=heat.reshape(n, -1).max(1), embeddings=emb,
                             info={"image_score": "max of the heatmap", "variant": c.variant,
                                   "patch_score": score_name, "score_rotations": c.score_rotations})

    # -- persistence ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        assert self.head is not None
        state = {f"head.{k}": v for k, v in self.head.state_dict().items()}
        state.update({f"stats.{k}": v for k, v in self.stats.items()})
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.stats = {k[len("stats."):]: v.to(self.device) for k, v in state.items() if k.startswith("stats.")}
        for key in ("mean", "std"):
            if key not in self.stats:
                raise KeyError(f"feature statistics ({key})")
        self.head = self._new_head()
        self.head.load_state_dict({k[len("head."):]: v for k, v in state.items() if k.startswith("head.")})
        self.head.eval()

    def extra_state(self) -> dict[str, Any]:
        return {"training_log": self.training_log}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.training_log = dict(state.get("training_log") or {})
