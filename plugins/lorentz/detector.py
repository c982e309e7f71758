"""Lorentz hyperbolic classifier for anomaly localisation (paper: lorentz-hyperbolic-anomaly-detection).

Frozen backbone patch features (two stages) → exp map onto the Lorentz hyperboloid (learnable curvature)
→ Lorentz linear layer per level → confidence-weighted Lorentzian centroid → Lorentz hyperplane
classifier, trained with class-balanced BCE (paper eq. 6) on synthetic anomalies. The choices the paper
leaves open are listed and justified in README.md beside this file.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
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
from ...engine.postprocess.surprise import Surprise
from ...engine.preprocess.foreground import foreground_mask, interior_mask
from ...engine.preprocess.resize import resize_tensor, to_tensor
from ...engine.progress import CancelToken, ProgressCallback, check, report
from ...engine.training import train_loop
from .head import HEADS

GEOMETRIES = tuple(HEADS)
INPUTS = ("residual", "raw")
OUTPUTS = ("fused", "head")
#: What the head-alone map (``output=head``) shows, by the unit a bundle was saved with (``head_map``).
HEAD_MAPS = {"evidence": "the heads' anomaly evidence −log(1 − mean anomaly probability) (nats; monotone in "
                         "the paper's probability, without its saturation at 1)",
             "probability": "the heads' mean anomaly probability"}


@dataclasses.dataclass
class LorentzConfig(DetectorConfig):
    """Paper settings where they exist (patch size 3, c₀ = 1 learnable); the rest measured (Adam 5e-3, see ``lr``)."""

    geometry: str = "lorentz"
    inputs: str = "raw"
    bank_size: int = 8192
    backbone: str = "lite0"
    # Backbone input side (ours; the paper's 224 is ImageNet's). Finer patches find brain1's small
    # cortical lesion: on seed 0, 224 → 0.977 pixel AUROC / best Dice 0.41, 256 → 0.984 / 0.50, 320 →
    # 0.991 / 0.55 (README; PatchCore gains alike, 0.962 → 0.983).
    input_size: int = 320
    levels: tuple[str, ...] = ("s8", "s16")
    patch_size: int = 3
    # The paper's ablation keeps P-AUROC flat down to 16. On brain1 (demo data, seed 0, one head) dim 256 measured
    # 0.967 head alone against 0.979 at 64, for 3× the fit (README, "Issue #20").
    dim: int = 64
    # The paper's and the c₀ = 1. On brain1 flatter is better: c₀ = 0.1 (it learns down to ~0.02)
    # measured 0.9897 fused pixel AUROC / best Dice 0.570 over seeds 0–5 against 0.9891 / 0.553, and 4 →
    # 0.9846 / 0.488 (README, bench/sweep_lorentz_heads.py).
    curvature: float = 1.0
    learn_curvature: bool = True
    # Ours (issue #20's ≤ 60 s fit): 6 epochs at 5e-3 instead of 30 at the paper's 1e-3, 2.4–2.5× less fit time.
    # Over brain1, lung1 and breast1, seeds 0–2 (bench/lorentz_sweep.py, README "Fit time"): fused pixel
    # AUROC 0.986 against 0.985, calibrated Dice 0.254 against 0.261 (brain1 0.321 against 0.352). 1e-2
    # measured brain1's calibrated Dice 0.192; fewer synthetic variants (4) lost on the heads.
    epochs: int = 6
    lr: float = 5e-3
    batch_patches: int = 4096
    n_variants: int = 8
    # Normal patches per synthetic draw are subsampled to this many (anomalous ones never): they are many
    # and alike, and an epoch's cost is linear in them (at 320 px, 200 slices hold ~1.3 M).
    max_negatives: int = 400_000
    # Heads bagged over independent synthetic draws, probabilities averaged (ours, README): which blobs a
    # draw holds decides the hyperplane's direction: one draw's pixel AUROC on brain1 ranged 0.88–0.96.
    n_heads: int = 3
    # Every synthetic version of a slice carries an anomaly (its untouched patches are the negatives). On
    # brain1, one head over seeds 0–11: 0.924 ± 0.027 pixel AUROC against 0.916 ± 0.054 at 0.8, a tie in the
    # mean with half the spread (worst draw 0.881 against 0.807); README.
    p_anomaly: float = 1.0
    # Gaussian intensity anomalies only: on brain1 the paper's full mix (with CutPaste and deformation)
    # measured 0.74 mean pixel AUROC over 3 seeds against 0.90 (plugins/lorentz/README.md); one option away.
    anomaly_kinds: tuple[str, ...] = ("gaussian",)
    p_cross_slice: float = 0.0
    # Synthetic anomalies stay this far (fraction of the slice) inside the body outline; 0 = anywhere in
    # the tissue. On brain1 the rim-straddling blobs made the classifier fire on the scalp (README).
    anomaly_margin: float = 0.1
    # Ours (README): the heads' probability fused with the patch's distance to a coreset memory bank of
    # normal patches (PatchCore's score on the same raw features), both as surprises on normal tissue.
    # The classifier knows what anomalies look like, the bank what normal looks like: on brain1 their maps
    # err in different places. False = the paper's classifier alone.
    fuse_memory: bool = True
    # What the heatmap shows: "fused" (heads + memory bank, the default when a bank was fitted) or "head",
    # the paper's classifier alone (the heads' mean probability). Scoring-time only: one fitted model can
    # show both (issue #20 asks for both numbers side by side). A model without a bank always shows "head".
    output: str = "fused"
    # RMS norm of the standardised features fed to the exp map (ours, issue #20). At 1, √c·r ≲ 1 and the
    # map is nearly linear (Poincaré weight tanh(√c r/2)/√c ≈ r/2); larger values put points where the
    # geometry differs from Euclidean. Swept in README ("Feature norm and dim").
    feature_norm: float = 1.0
    memory_ratio: float = 0.1
    # Scoring cost is linear in the bank: at 4,096 rows the search took 21 ms of a 320-px slice's 51 ms on one
    # thread. 2,048 halves it; on brain1 (seed 0) pixel AUROC 0.990 both, best Dice 0.575 against 0.546.
    memory_max: int = 2048
    smoothing_sigma: float = 4.0
    batch_size: int = 16
    fine_tune_epochs: int = 10
    fine_tune_lr: float = 3e-4

    #: Ranges beyond ``COMMON_LIMITS`` (tighter where memory needs it), ~10–16× the defaults and sweeps. Worst
    #: cases at ΣC = 1,536 channels (wrn50; lite0 has 152): a head is ΣC × (dim + 1) ≈ 1.6 M parameters at
    #: dim 1,024, 32 heads 50 M (0.2 GiB); the residual bank (``bank_size``) 131,072 rows, 0.75 GiB, the fusion
    #: bank (``memory_max``) 32,768 rows, 0.19 GiB; a training batch 65,536 × ΣC floats (0.4 GiB); the
    #: cached negatives ``max_negatives`` × ΣC float16 values, 12 GiB on wrn50 / 1.2 GiB on lite0 at
    #: 4 M, but only as many as the normal slices hold (each already featurised once).
    LIMITS: ClassVar[dict[str, tuple[float, float]]] = {
        "bank_size": (1, 1 << 17),
        "memory_max": (2, 1 << 15),
        "dim": (2, 1024),
        "batch_patches": (16, 1 << 16),
        "curvature": (C_MIN, C_MAX),  # the manifold's own range
        "n_variants": (1, 128),
        "max_negatives": (1, 1 << 22),
        "n_heads": (1, 32),
        "p_anomaly": (0.0, 1.0),  # (0, 1]: __post_init__ refuses 0
        "p_cross_slice": (0.0, 1.0),
        "anomaly_margin": (0.0, 0.5),  # [0, 0.5): __post_init__ refuses 0.5
        "memory_ratio": (0.0, 1.0),  # (0, 1]: __post_init__ refuses 0
        "feature_norm": (0.0, 16.0),  # (0, 16]: __post_init__ refuses 0; √c·r stays far below cosh's clamp
    }

    def __post_init__(self) -> None:
        from ...engine.synthesis.batch import ANOMALY_KINDS

        self.levels = tuple(self.levels)
        self.anomaly_kinds = tuple(self.anomaly_kinds)
        parse_spec(self.backbone)  # an unknown backbone is one line now, not at the first feature extraction
        if not self.anomaly_kinds or any(k not in ANOMALY_KINDS for k in self.anomaly_kinds):
            raise ConfigError(f"anomaly_kinds must be one or more of {', '.join(ANOMALY_KINDS)}, "
                              f"got {self.anomaly_kinds!r}")
        if self.output not in OUTPUTS:
            raise ConfigError(f"output must be one of {', '.join(OUTPUTS)}, got {self.output!r}")
        if not self.feature_norm > 0:
            raise ConfigError(f"feature_norm must be positive, got {self.feature_norm}")
        if self.inputs not in INPUTS:
            raise ConfigError(f"inputs must be one of {', '.join(INPUTS)}, got {self.inputs!r}")
        if self.geometry not in GEOMETRIES:
            raise ConfigError(f"geometry must be one of {', '.join(GEOMETRIES)}, got {self.geometry!r}")
        if self.curvature <= 0:
            raise ConfigError(f"curvature must be positive (it is the magnitude of −c), got {self.curvature}")
        if self.epochs < 1 or self.n_variants < 1 or self.n_heads < 1 or self.dim < 2 or self.batch_patches < 16:
            raise ConfigError("epochs ≥ 1, n_variants ≥ 1, n_heads ≥ 1, dim ≥ 2 and batch_patches ≥ 16 are required")
        if self.max_negatives < 1:
            raise ConfigError(f"max_negatives must be at least 1, got {self.max_negatives}")
        if not 0 < self.p_anomaly <= 1:
            raise ConfigError(f"p_anomaly must be in (0, 1], got {self.p_anomaly}")
        if not 0 < self.memory_ratio <= 1 or self.memory_max < 2:
            raise ConfigError("memory_ratio must be in (0, 1] and memory_max at least 2")
        if not 0 <= self.anomaly_margin < 0.5:
            raise ConfigError(f"anomaly_margin must be in [0, 0.5), got {self.anomaly_margin}")


@dataclasses.dataclass
class _PatchSet:
    """Cached, standardised patch features with labels: 1 anomalous, 0 normal tissue, −1 ignored."""

    feats: dict[str, torch.Tensor]
    labels: torch.Tensor


def _head_prefix(k: int) -> str:
    return "head." if k == 0 else f"head{k}."


class LorentzDetector(Detector):
    name: ClassVar[str] = "lorentz"
    version: ClassVar[str] = "1"
    description: ClassVar[str] = "Lorentz hyperbolic classifier on frozen patch features (geometry=euclidean: ablation)"
    config_class = LorentzConfig

    def __init__(self, config: dict[str, Any] | DetectorConfig | None = None, device: str = "cpu",
                 seed: int = 0) -> None:
        super().__init__(config, device, seed)
        self.heads: list[torch.nn.Module] = []
        self.stats: dict[str, torch.Tensor] = {}
        self.bank: torch.Tensor | None = None
        self.memory: torch.Tensor | None = None  # raw-feature coreset for fusion (fuse_memory)
        self.surprise: dict[str, Surprise] = {}  # "memory", "heads": each score's normal reference
        # The unit of the head-alone map (``output=head``): "evidence" since 2026-12-06; bundles saved before
        # keep the mean probability they may have been calibrated on (a calibration is tied to its unit).
        self.head_map = "evidence"

    @classmethod
    def test_config(cls) -> dict[str, Any]:
        return {"input_size": 64, "epochs": 2, "n_variants": 1, "n_heads": 2, "dim": 8, "batch_patches": 256,
                "bank_size": 256, "smoothing_sigma": 1.0, "fine_tune_epochs": 1}

    @property
    def head(self) -> torch.nn.Module | None:
        """The first head: its embedding and hyperplane come first in a result (the others' as alternatives)."""
        return self.heads[0] if self.heads else None

    # -- features ------------------------------------------------------------------------------
    @property
    def extractor(self) -> PatchFeatureExtractor:
        return extractor_for(self.config, self.device, self.backbone_weights)

    def _raw_features(self, slices: np.ndarray, cancel: CancelToken | None) -> dict[str, torch.Tensor]:
        """(n, C, h, w) per level, in batches."""
        parts: dict[str, list[torch.Tensor]] = {lv: [] for lv in self.config.levels}
        for b in batches(len(slices), self.config.batch_size, cancel=cancel):
            grid = self.extractor.features(slices[b])
            for lv in self.config.levels:
                parts[lv].append(grid.levels[lv])
        return {lv: torch.cat(p) for lv, p in parts.items()}

    def _standardise(self, feats: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per-channel z-scores on normal statistics, scaled to RMS norm ``feature_norm`` before the exp map.

        Raw backbone features have norms of tens; cosh of that overflows the hyperboloid in float32, so
        the map onto the manifold starts from features of a set norm (1 by default, see README: a choice the
        paper leaves open; ``feature_norm`` moves the points outwards, into the curved regime).
        """
        out = {}
        for lv, f in feats.items():
            mean, std = self.stats[f"{lv}.mean"], self.stats[f"{lv}.std"]
            out[lv] = (f - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1) / math.sqrt(f.shape[1])
            if self.config.feature_norm != 1.0:
                out[lv] = out[lv] * self.config.feature_norm
        return out

    @staticmethod
    def _flatten(feats: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {lv: f.permute(0, 2, 3, 1).reshape(-1, f.shape[1]) for lv, f in feats.items()}

    def _fit_stats(self, feats: dict[str, torch.Tensor]) -> None:
        for lv, f in feats.items():
            flat = f.permute(1, 0, 2, 3).reshape(f.shape[1], -1)
            self.stats[f"{lv}.mean"] = flat.mean(1)
            self.stats[f"{lv}.std"] = flat.std(1).clamp_min(1e-3)

    def _concat(self, flat: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.cat([flat[lv] for lv in self.config.levels], dim=1)

    def _split(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        sizes = [self.extractor.channels[lv] for lv in self.config.levels]
        return dict(zip(self.config.levels, torch.split(x, sizes, dim=1), strict=True))

    def _inputs(self, flat: dict[str, torch.Tensor], bank: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """What goes onto the hyperboloid: standardised features, or their residual to the nearest normal.

        ``residual`` (default) maps r = f − NN_normal(f) per level, scaled so a typical normal residual has
        norm 1. The exp map's time coordinate cosh(√c‖r‖)/√c then carries the distance to normal anatomy,
        which the Lorentz linear layer can use and a Euclidean linear layer cannot (README: our choice).
        """
        if self.config.inputs == "raw":
            return flat
        assert bank is not None
        from ...engine.coreset import nearest_distance

        q = self._concat(flat)
        _, idx = nearest_distance(q, bank, return_index=True)
        res = self._split(q - bank[idx])
        return {lv: r / self.stats[f"{lv}.rscale"] * self.config.feature_norm for lv, r in res.items()}

    def _fold_banks(self, std_flat: torch.Tensor, n_slices: int, cancel: CancelToken | None) -> list[torch.Tensor]:
        """Two memory banks from alternate normal slices, so training residuals never see their own slice."""
        from ...engine.coreset import greedy_coreset

        per = std_flat.reshape(n_slices, -1, std_flat.shape[1])
        folds = [per[0::2], per[1::2]] if n_slices >= 2 else [per, per]
        banks = []
        for k, fold in enumerate(folds):
            check(cancel)
            flat = fold.reshape(-1, fold.shape[-1])
            n_sel = min(len(flat), max(1, self.config.bank_size // 2))
            banks.append(flat[greedy_coreset(flat, n_sel, 128, self.seed + k, cancel=cancel)].contiguous())
        return banks

    def _patch_set(self, normals: np.ndarray, n_variants: int, rng: np.random.Generator,
                   banks: list[torch.Tensor] | None, progress: ProgressCallback | None,
                   cancel: CancelToken | None, start: float, stop: float) -> _PatchSet:
        """Synthetic-anomaly versions of the normals, featurised once and cached for all epochs.

        With two fold banks, slice i's residuals are taken against the bank built without it.
        """
        from ...engine.synthesis import synthesize_batch

        fg = foreground_mask(normals)
        place = interior_mask(fg, self.config.anomaly_margin)
        feats: dict[str, list[torch.Tensor]] = {lv: [] for lv in self.config.levels}
        labels: list[torch.Tensor] = []
        for v in range(n_variants):
            check(cancel)
            images, masks = synthesize_batch(normals, rng, foregrounds=place, p_anomaly=self.config.p_anomaly,
                                             kinds=self.config.anomaly_kinds, p_cross_slice=self.config.p_cross_slice)
            f = self._standardise(self._raw_features(images, cancel))
            grid = next(iter(f.values())).shape[-2:]
            frac = self._to_grid(masks, grid)
            lab = torch.full_like(frac, -1.0)
            lab[(frac == 0) & self._tissue(fg, grid)] = 0.0
            # Anomalous where half a cell is covered; small blobs on a coarse grid (few-shot slices, small
            # inputs) may cover no cell that much, so the bar drops to half the largest coverage then.
            lab[frac >= min(0.5, max(0.5 * float(frac.max()), 1e-3))] = 1.0
            inputs = self._fold_inputs(f, banks)
            lab = lab.reshape(-1)
            neg = torch.nonzero(lab == 0).squeeze(1)
            cap = max(1, self.config.max_negatives // n_variants)
            if len(neg) > cap:
                drop = neg[torch.as_tensor(rng.permutation(len(neg))[cap:])]
                lab[drop] = -1.0
            keep = lab >= 0
            for lv, x in inputs.items():
                feats[lv].append(x[keep].to(torch.float16))
            labels.append(lab[keep])
            report(progress, start + (stop - start) * (v + 1) / n_variants, f"synthetic set {v + 1}/{n_variants}")
        return _PatchSet({lv: torch.cat(x) for lv, x in feats.items()}, torch.cat(labels))

    def _fold_inputs(self, f: dict[str, torch.Tensor], banks: list[torch.Tensor] | None) -> dict[str, torch.Tensor]:
        """Head inputs for (n, C, h, w) features of training slices, slice i against bank (i + 1) % 2."""
        n = next(iter(f.values())).shape[0]
        if banks is None or self.config.inputs == "raw":
            return self._flatten(f)
        per_slice = [self._inputs(self._flatten({lv: x[i:i + 1] for lv, x in f.items()}),
                                  banks[(i + 1) % 2] if n >= 2 else banks[0]) for i in range(n)]
        return {lv: torch.cat([p[lv] for p in per_slice]) for lv in self.config.levels}

    def _to_grid(self, masks: np.ndarray, grid: tuple[int, int]) -> torch.Tensor:
        """Fraction of each patch cell covered by a mask, on the feature grid."""
        t = resize_tensor(to_tensor(masks.astype(np.float32)), self.config.input_size)
        return F.adaptive_avg_pool2d(t, tuple(grid)).squeeze(1)

    # -- training ------------------------------------------------------------------------------
    def _new_head(self) -> torch.nn.Module:
        c = self.config
        dims = {lv: self.extractor.channels[lv] for lv in c.levels}
        return HEADS[c.geometry](dims, c.dim, c.curvature, c.learn_curvature).to(self.device)

    def _train(self, head: torch.nn.Module, data: _PatchSet, epochs: int, lr: float, batch_seed: int,
               progress: ProgressCallback | None, cancel: CancelToken | None, start: float, stop: float) -> float:
        """Class-balanced BCE (paper eq. 6: one mean over anomalous, one over normal patches); final loss."""
        pos = torch.nonzero(data.labels == 1).squeeze(1)
        neg = torch.nonzero(data.labels == 0).squeeze(1)
        if len(pos) == 0 or len(neg) == 0:
            raise ConfigError("the synthetic training set has no anomalous or no normal tissue patches; "
                              "the normal slices may be empty or too small")
        half = self.config.batch_patches // 2
        steps = max(1, math.ceil(max(len(pos), len(neg)) / half))

        def epoch_batches(gen: torch.Generator) -> list[torch.Tensor]:
            """``half`` anomalous then ``half`` normal patches per step; the smaller class cycles."""
            perm_pos = pos[torch.randperm(len(pos), generator=gen)]
            perm_neg = neg[torch.randperm(len(neg), generator=gen)]
            cells = [torch.arange(s * half, (s + 1) * half) for s in range(steps)]
            return [torch.cat([perm_pos[c % len(pos)], perm_neg[c % len(neg)]]) for c in cells]

        def step(idx: torch.Tensor) -> torch.Tensor:
            # index_select, not x[idx]: the same rows, 4× faster on CPU (bench/lorentz_fit_speed.py)
            batch = {lv: x.index_select(0, idx).to(self.device, torch.float32) for lv, x in data.feats.items()}
            logit = head(batch)
            y = data.labels[idx].to(self.device)
            return F.binary_cross_entropy_with_logits(logit[:half], y[:half]) + \
                F.binary_cross_entropy_with_logits(logit[half:], y[half:])

        log = train_loop(head, step, epoch_batches, epochs, lr=lr, seed=batch_seed, progress=progress, cancel=cancel,
                         start=start, stop=stop)
        return log.final_loss

    def _draw_rng(self, k: int, offset: int = 0) -> np.random.Generator:
        """Head k's synthetic draw; head 0 keeps the single-head detector's stream."""
        return np.random.default_rng(self.seed + offset if k == 0 else (self.seed + offset, k))

    def _train_heads(self, normals: np.ndarray, n_variants: int, banks: list[torch.Tensor] | None, epochs: int,
                     lr: float, offset: int, progress: ProgressCallback | None, cancel: CancelToken | None,
                     start: float, stop: float) -> list[float]:
        """Train every head on its own synthetic draw; one draw's feature cache is held at a time."""
        n = len(self.heads)
        step = (stop - start) / n
        losses = []
        for k, head in enumerate(self.heads):
            a = start + k * step
            data = self._patch_set(normals, n_variants, self._draw_rng(k, offset), banks, progress, cancel,
                                   a, a + 0.5 * step)
            batch_seed = self.seed + offset + 7919 * k  # head 0 keeps the single-head seed; others differ
            losses.append(self._train(head, data, epochs, lr, batch_seed, progress, cancel, a + 0.5 * step, a + step))
            del data
        return losses

    def _fit(self, normals: np.ndarray, progress: ProgressCallback | None, cancel: CancelToken | None) -> None:
        report(progress, 0.0, "normal feature statistics")
        raw = self._raw_features(normals, cancel)
        self._fit_stats(raw)
        banks = None
        if self.config.inputs == "residual":
            report(progress, 0.03, "normal memory banks")
            std_flat = self._concat(self._flatten(self._standardise(raw)))
            banks = self._fold_banks(std_flat, len(normals), cancel)
            self._fit_residual_scale(std_flat, len(normals), banks)
            self.bank = torch.cat(banks)
        self.memory, self.surprise = None, {}
        if self.config.fuse_memory:
            report(progress, 0.04, "normal memory bank for fusion")
            self._fit_memory(raw, normals, cancel)
        report(progress, 0.05, "synthesising anomalies")
        self.heads = [self._new_head() for _ in range(self.config.n_heads)]
        losses = self._train_heads(normals, self.config.n_variants, banks, self.config.epochs, self.config.lr, 0,
                                   progress, cancel, 0.05, 0.97)
        if self.config.fuse_memory:
            report(progress, 0.97, "normal reference of the heads")
            self._fit_head_reference(raw, normals, cancel)
        self.training_log = {"final_loss": losses, "curvature": [h.curvature for h in self.heads]}

    def _tissue(self, foreground: np.ndarray, grid: tuple[int, int]) -> torch.Tensor:
        """Patch cells with tissue (over a tenth of the cell): the normal training labels and the references."""
        return self._to_grid(foreground, grid) > 0.1

    def _memory_features(self, raw: dict[str, torch.Tensor]) -> torch.Tensor:
        """(n, h·w, ΣC) raw patch features: PatchCore's metric on the same extractor."""
        f = torch.cat([raw[lv] for lv in self.config.levels], dim=1)
        return f.permute(0, 2, 3, 1).reshape(f.shape[0], -1, f.shape[1])

    def _fit_memory(self, raw: dict[str, torch.Tensor], normals: np.ndarray, cancel: CancelToken | None) -> None:
        """Coreset memory bank of normal patches, and the normal reference of its distances, leak-free.

        A bank scores its own patches near zero, so the reference comes from two coresets of alternate
        slices: each slice's tissue patches are measured against the coreset built without it (half the
        bank, so the reference runs a little high, which errs towards calling less anomalous). Scoring
        uses both coresets.
        """
        from ...engine.coreset import greedy_coreset, nearest_distance

        per = self._memory_features(raw)
        grid = next(iter(raw.values())).shape[-2:]
        tissue = self._tissue(foreground_mask(normals), tuple(grid)).reshape(len(normals), -1)
        idx = np.arange(len(normals))
        folds = [idx[0::2], idx[1::2]] if len(normals) >= 2 else [idx, idx]  # one slice: no held-out half
        banks = []
        for k, fold in enumerate(folds):
            check(cancel)
            flat = per[fold].reshape(-1, per.shape[-1])
            n_sel = min(len(flat), max(1, round(self.config.memory_ratio * len(flat))),
                        max(1, self.config.memory_max // 2))
            banks.append(flat[greedy_coreset(flat, n_sel, 128, self.seed + 101 + k, cancel=cancel)])
        ref = []
        for k, fold in enumerate(folds):
            q = per[fold][tissue[fold]]
            if len(q):
                ref.append(nearest_distance(q, banks[1 - k]))
        if not ref:
            raise ConfigError("the normal slices hold no tissue to build a memory bank from")
        self.memory = torch.cat(banks).contiguous()
        self.surprise["memory"] = Surprise.fit(torch.cat(ref))

    def _logits(self, x: dict[str, torch.Tensor], zs: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
        """(heads, N) anomaly logits per patch (``zs``: every head's embedding of ``x``, if already computed)."""
        zs = [head.embed(x) for head in self.heads] if zs is None else zs
        return torch.stack([head.logit(z) for head, z in zip(self.heads, zs, strict=True)])

    def _mean_prob(self, x: dict[str, torch.Tensor]) -> torch.Tensor:
        """The heads' mean anomaly probability per patch."""
        return torch.sigmoid(self._logits(x)).mean(0)

    @staticmethod
    def _evidence(logits: torch.Tensor) -> torch.Tensor:
        """−log(1 − p̄), p̄ the heads' mean probability, from the logits: monotone in p̄ but never flat.

        In float32 σ(z) is exactly 1 from z ≈ 17 on, so a map of p̄ ties at its top, where thresholds are
        set; 1 − p̄ = mean σ(−z) in log space does not. (It did not change brain1's head-alone numbers: README.)
        """
        return math.log(logits.shape[0]) - torch.logsumexp(F.logsigmoid(-logits), dim=0)

    def _fit_head_reference(self, raw: dict[str, torch.Tensor], normals: np.ndarray,
                            cancel: CancelToken | None) -> None:
        """The heads' probabilities on the normals' tissue patches: the reference for their surprise.

        ``raw`` holds the normals' backbone features, already extracted for the statistics and the bank.
        These slices were the heads' negatives, so the reference runs a little low (the same slices
        untouched, not held out: the heads see every normal slice).
        """
        grid = tuple(next(iter(raw.values())).shape[-2:])
        tissue = self._tissue(foreground_mask(normals), grid).reshape(-1)
        x = self._inputs(self._flatten(self._standardise(raw)), self.bank)
        with torch.no_grad():
            probs = [self._mean_prob({lv: v[b] for lv, v in x.items()})
                     for b in batches(len(tissue), self.config.batch_patches, cancel=cancel)]
        ref = torch.cat(probs)[tissue]
        if len(ref) < 2:
            raise ConfigError("the normal slices hold no tissue to take the heads' reference from")
        self.surprise["heads"] = Surprise.fit(ref)

    def _fit_residual_scale(self, std_flat: torch.Tensor, n_slices: int, banks: list[torch.Tensor]) -> None:
        """Median residual norm per level of normal patches against the other fold's bank → 1."""
        from ...engine.coreset import nearest_distance

        per = std_flat.reshape(n_slices, -1, std_flat.shape[1])
        res = []
        for i in range(n_slices):
            bank = banks[(i + 1) % 2] if n_slices >= 2 else banks[0]
            _, idx = nearest_distance(per[i], bank, return_index=True)
            res.append(per[i] - bank[idx])
        for lv, r in self._split(torch.cat(res)).items():
            self.stats[f"{lv}.rscale"] = r.norm(dim=1).median().clamp_min(1e-4).reshape(1)

    def _fine_tune(self, normals: np.ndarray, progress: ProgressCallback | None,
                   cancel: CancelToken | None) -> None:
        """Few-shot: train on synthetic anomalies made from the site's marked normals, then remember them.

        Residuals of the new slices are taken against the existing bank (which does not hold them); after
        training, a coreset of the new normal patches joins the bank, the strongest few-shot adaptation a
        memory of normal anatomy allows.
        """
        from ...engine.coreset import greedy_coreset

        n_var = max(1, min(self.config.n_variants, math.ceil(64 / max(1, len(normals)))))
        banks = None if self.bank is None else [self.bank, self.bank]
        self._train_heads(normals, n_var, banks, self.config.fine_tune_epochs, self.config.fine_tune_lr, 1,
                          progress, cancel, 0.0, 0.95)
        if self.bank is None and self.memory is None:
            return
        raw = self._raw_features(normals, cancel)
        if self.bank is not None:
            new = self._concat(self._flatten(self._standardise(raw)))
            n_sel = min(len(new), max(1, self.config.bank_size // 4))
            self.bank = torch.cat([self.bank, new[greedy_coreset(new, n_sel, 128, self.seed + 7)]])
        if self.memory is not None:
            # The site's normals join the fusion bank; the heads changed, so their reference is retaken
            # on the site's normals (the only normals at hand; the bank's reference stays).
            new = self._memory_features(raw).reshape(-1, self.memory.shape[1])
            n_sel = min(len(new), max(1, round(self.config.memory_ratio * len(new))))
            merged = torch.cat([self.memory, new[greedy_coreset(new, n_sel, 128, self.seed + 107)]])
            if len(merged) > self.config.memory_max:
                # Scoring cost is linear in the bank: thin the union back to the cap, evenly over both.
                merged = merged[greedy_coreset(merged, self.config.memory_max, 128, self.seed + 108)]
            self.memory = merged.contiguous()
            self._fit_head_reference(raw, normals, cancel)

    # -- scoring -------------------------------------------------------------------------------
    def _score(self, slices: np.ndarray, progress: ProgressCallback | None,
               cancel: CancelToken | None) -> AnomalyResult:
        assert self.head is not None
        n, H, W = slices.shape
        probs, patch = [], []
        points: list[list[torch.Tensor]] = [[] for _ in self.heads]  # every head's embedding of the patches
        fuse = self._fusing
        grid = None
        for b in batches(n, self.config.batch_size, progress, cancel, "scored {done}/{total} slices"):
            raw = self._raw_features(slices[b], cancel)
            grid = tuple(next(iter(raw.values())).shape[-2:])
            x = self._inputs(self._flatten(self._standardise(raw)), self.bank)
            zs = [head.embed(x) for head in self.heads]  # kept for the Poincaré disk: every head's view
            logits = self._logits(x, zs)
            prob = torch.sigmoid(logits).mean(0)
            for kept, z in zip(points, zs, strict=True):
                kept.append(z)
            probs.append(prob)
            if fuse:
                patch.append(torch.as_tensor(self._fused(raw, prob)))
            else:
                patch.append(self._evidence(logits) if self.head_map == "evidence" else prob)
        assert grid is not None
        p = torch.cat(probs)
        maps = to_heatmap(torch.cat(patch).reshape(n, *grid), (H, W), self.config.smoothing_sigma,
                          self.config.input_size)
        probability_map = not fuse and self.head_map == "probability"
        maps = np.clip(maps, 0, 1) if probability_map else np.maximum(maps, 0)
        slice_index, centers = patch_slice_index(grid, n), patch_centers(grid, (H, W), n)
        scores = p.cpu().numpy()  # the heads' mean probability (the classifier's own output)
        views = []
        for k, (head, kept) in enumerate(zip(self.heads, points, strict=True)):
            normal, offset = head.hyperplane()
            views.append(Embeddings(
                points=torch.cat(kept).cpu().numpy(), slice_index=slice_index, centers=centers,
                manifold=head.manifold_name, curvature=head.curvature, scores=scores,
                hyperplane=normal.detach().cpu().numpy(), hyperplane_offset=float(offset),
                hyperplane_of="" if len(self.heads) == 1 else
                f"head {k + 1} of {len(self.heads)}, the heatmap averaging all {len(self.heads)}"))
        emb = dataclasses.replace(views[0], alternatives=tuple(views[1:]))
        heatmap = ("surprise (nats) of the heads' mean probability plus that of the distance to the normal "
                   "memory bank" if fuse else HEAD_MAPS[self.head_map])
        return AnomalyResult(heatmaps=maps, scores=maps.reshape(n, -1).max(1), embeddings=emb,
                             info={"image_score": "max of the heatmap", "curvature": self.head.curvature,
                                   "heatmap": heatmap,
                                   "heads": f"mean probability of {len(self.heads)} heads; the embedding and "
                                            "hyperplane are the first head's, the others' in its alternatives, "
                                            "points coloured by the mean probability"})

    @property
    def _fusing(self) -> bool:
        return (self.config.output == "fused" and self.config.fuse_memory and self.memory is not None
                and {"memory", "heads"} <= set(self.surprise))

    def _fused(self, raw: dict[str, torch.Tensor], prob: torch.Tensor) -> np.ndarray:
        """Per patch: surprise of the heads' probability + surprise of the distance to the memory bank."""
        from ...engine.coreset import nearest_distance

        assert self.memory is not None
        q = self._memory_features(raw).reshape(-1, self.memory.shape[1])
        dist = nearest_distance(q, self.memory)
        return self.surprise["heads"].transform(prob) + self.surprise["memory"].transform(dist)

    # -- persistence ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        """Head 0 under ``head.``, as single-head bundles had it; head k under ``head{k}.``."""
        assert self.heads
        state = {f"{_head_prefix(i)}{k}": v for i, h in enumerate(self.heads) for k, v in h.state_dict().items()}
        state.update({f"stats.{k}": v for k, v in self.stats.items()})
        if self.bank is not None:
            state["bank"] = self.bank
        if self.memory is not None:
            state["memory_bank"] = self.memory
            state.update({f"surprise.{k}": v.to_tensor() for k, v in self.surprise.items()})
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.stats = {k[len("stats."):]: v.to(self.device) for k, v in state.items() if k.startswith("stats.")}
        channels = self.extractor.channels
        for lv in self.config.levels:
            if f"{lv}.mean" not in self.stats or f"{lv}.std" not in self.stats:
                raise KeyError(f"normalisation statistics for level {lv}")
            for k in (f"{lv}.mean", f"{lv}.std"):
                if tuple(self.stats[k].shape) != (channels[lv],):
                    raise ValueError(f"statistics {k} have shape {tuple(self.stats[k].shape)}, the features "
                                     f"{channels[lv]} channels")
        self.bank = state["bank"].to(self.device) if "bank" in state else None
        if self.config.inputs == "residual" and self.bank is None:
            raise KeyError("bank (the normal memory bank of a residual-input model)")
        # Bundles saved before fusion hold no memory bank: they score with the heads alone, as trained.
        self.memory = state["memory_bank"].to(self.device) if "memory_bank" in state else None
        dim = sum(channels[lv] for lv in self.config.levels)
        if self.memory is not None and (self.memory.ndim != 2 or self.memory.shape[1] != dim):
            raise ValueError(f"memory bank has shape {tuple(self.memory.shape)}; the features have {dim} channels")
        self.surprise = {k[len("surprise."):]: Surprise.from_tensor(v) for k, v in state.items()
                         if k.startswith("surprise.")}
        if self.memory is None:
            self.config.fuse_memory = False
        elif self.config.fuse_memory and {"memory", "heads"} - set(self.surprise):
            raise KeyError("surprise.memory / surprise.heads (the normal references of a fused model)")
        # The bundle says how many heads it holds: ones saved before n_heads existed hold one.
        n = 1
        while any(k.startswith(_head_prefix(n)) for k in state):
            n += 1
        self.config.n_heads = n
        self.heads = []
        for i in range(n):
            head = self._new_head()
            prefix = _head_prefix(i)
            head.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
            self.heads.append(head.eval())

    def extra_state(self) -> dict[str, Any]:
        return {"training_log": getattr(self, "training_log", {}), "head_map": self.head_map}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.training_log = dict(state.get("training_log") or {})
        head_map = state.get("head_map", "probability")  # absent: saved before the evidence map existed
        if head_map not in HEAD_MAPS:
            raise ValueError(f"head_map must be one of {', '.join(HEAD_MAPS)}, got {head_map!r}")
        self.head_map = head_map
