"""Curved-geometry heads for one-class anomaly localisation (paper: curved-geometric-networks).

A self-supervised base classifier trained on normal slices only, on the frozen backbone's patch features
(stride 8 and 16, concatenated). Two bases (``base``):

- ``rotation``: each slice is rotated by 0/90/180/270° and the heads of the chosen variant predict the
  rotation per patch (RotNet at patch level);
- ``patchsvdd``: Patch-SVDD (what the paper's segmentation tables build on): a patch encoder trained with
  SVDD' and the relative-position pretext, the heads predicting the position of a pair's second patch
  (``patchsvdd.py``); ``compare`` adds Patch-SVDD's nearest-normal comparison (the paper's "Cpr").

At scoring, each patch gets ``AS = 1 − tanh(z)`` with ``z`` read off the trained classifiers (``1 − max
softmax`` for the Euclidean baseline), upsampled to the slice grid. The choices the paper leaves open are
listed and justified in README.md beside this file.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from ...engine.backbones import parse_spec
from ...engine.batching import batches
from ...engine.detectors.base import Detector, DetectorConfig
from ...engine.detectors.result import AnomalyResult, Embeddings
from ...engine.errors import ConfigError, ModelError
from ...engine.geometry.manifolds import C_MAX, C_MIN
from ...engine.patchfeatures import PatchFeatureExtractor, extractor_for
from ...engine.patchmaps import patch_centers, patch_slice_index, to_heatmap
from ...engine.preprocess.foreground import foreground_mask
from ...engine.preprocess.resize import resize_tensor, to_tensor
from ...engine.progress import CancelToken, ProgressCallback, check, report
from ...engine.training import shuffled_batches, train_loop
from .heads import N_ROTATIONS, SCORE_RULES, VARIANTS, CurvedHeads, canonical_variant, default_kappa_h
from .patchsvdd import N_POSITIONS, PatchSVDDNet, pair_loss, position_scores, sample_pairs, tissue_grid

#: The self-supervised bases the heads sit on (module docstring).
BASES = ("patchsvdd", "rotation")
#: What ``extra_state`` records as the saved state's layout. Version-1 models lack it: they had no ``base``
#: (always ``rotation``) and scored by the literal equations, which is how they are read back.
STATE_FORMAT = 2


@dataclasses.dataclass
class CurvedHeadsConfig(DetectorConfig):
    """Paper settings where they exist (κ_S = 1, κ_H = −0.01 for *iO / −1 for *iT, Adam); the rest ours.

    ``variant`` defaults to MiT, the paper's recommendation and the best, steadiest variant on brain1 over
    three seeds on the working grid (README; HiO, the default before the grid, swung 0.23–0.74 there).
    ``kappa_h = None`` picks the paper's value for the variant. ``score_rotations`` = 1 scores the
    unrotated slice; 4 averages the maps of the four rotations after rotating them back (measured worse
    for the best variants on brain1, README).

    ``base``: ``patchsvdd`` or ``rotation`` (module docstring); ``score_from``: ``classifiers`` (the score
    uses the trained classifiers, issue #20) or ``embeddings`` (the literal eqs. 9, 10, 12; version 1).
    Patch-SVDD only: ``position_step`` / ``position_jitter`` (cells) place a pair's second patch,
    ``svdd_weight`` weighs SVDD' against the position loss, and ``compare`` multiplies the heads' score by the
    patch embedding's distance to the nearest of at most ``max_bank`` normal patches (the baseline then
    scores the distance alone, which is Patch-SVDD's own score). The rotation base has no comparison, so
    ``compare`` is set to false with it. Defaults (Patch-SVDD with the comparison) measured on brain1 (README).
    """

    variant: str = "MiT"
    base: str = "patchsvdd"
    score_from: str = "classifiers"
    position_step: int = 3
    position_jitter: int = 1
    svdd_weight: float = 1.0
    compare: bool = True
    max_bank: int = 32768
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
        "position_step": (1, 64),
        "position_jitter": (0, 63),  # < position_step: __post_init__
        "svdd_weight": (0.0, 1000.0),
        "max_bank": (16, 1 << 20),
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
        if self.base not in BASES:
            raise ConfigError(f"base must be one of {', '.join(BASES)}, got {self.base!r}")
        if self.score_from not in SCORE_RULES:
            raise ConfigError(f"score_from must be one of {', '.join(SCORE_RULES)}, got {self.score_from!r}")
        if self.position_jitter >= self.position_step:
            raise ConfigError(f"position_jitter ({self.position_jitter}) must be smaller than position_step "
                              f"({self.position_step}), or a pair's direction becomes ambiguous")
        if self.base != "patchsvdd":
            self.compare = False  # Patch-SVDD's nearest-normal comparison; the rotation base has no patch encoder

    @property
    def kappa_h_effective(self) -> float:
        return default_kappa_h(self.variant) if self.kappa_h is None else float(self.kappa_h)


@dataclasses.dataclass
class _RotationSet:
    """Cached, standardised patch features of all rotations (float16) with their rotation labels."""

    feats: torch.Tensor
    labels: torch.Tensor


@dataclasses.dataclass
class _CellSet:
    """Standardised features of every cell of the unrotated normals (float16), which cells are tissue, the grid."""

    feats: torch.Tensor
    tissue: torch.Tensor
    grid: tuple[int, int]

    @property
    def cells(self) -> torch.Tensor:
        return torch.nonzero(self.tissue).flatten()


class CurvedHeadsDetector(Detector):
    name: ClassVar[str] = "curved"
    variants: ClassVar[tuple[str, ...]] = VARIANTS
    #: 2: ``base`` (Patch-SVDD), scores from the trained classifiers, ``format`` in the extra state.
    version: ClassVar[str] = "2"
    description: ClassVar[str] = ("Curved-geometry heads (spherical / hyperbolic / mixed, in-One and in-Two) on a "
                                  "self-supervised base (Patch-SVDD relative position or patch-level rotation); "
                                  "variant=euclidean is the baseline")
    config_class = CurvedHeadsConfig

    def __init__(self, config: dict[str, Any] | DetectorConfig | None = None, device: str = "cpu",
                 seed: int = 0) -> None:
        super().__init__(config, device, seed)
        self.head: CurvedHeads | PatchSVDDNet | None = None
        self.stats: dict[str, torch.Tensor] = {}
        self.bank: torch.Tensor | None = None  # compare: standardised features of normal tissue cells (float16)
        self.training_log: dict[str, Any] = {}

    @classmethod
    def test_config(cls) -> dict[str, Any]:
        """Tiny settings, on the rotation base that tests/test_curved.py was written for.

        That file reads the rotation base's training log and parameter names; tests/test_curved_paper.py runs
        the contract's checks on the Patch-SVDD base (the default).
        """
        return {"input_size": 64, "epochs": 2, "hidden": 16, "dim": 8, "batch_patches": 256, "smoothing_sigma": 1.0,
                "fine_tune_epochs": 1, "base": "rotation"}

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

    def _cell_set(self, normals: np.ndarray, progress: ProgressCallback | None, cancel: CancelToken | None,
                  start: float, stop: float, fit_stats: bool) -> _CellSet:
        """Features of every cell of the unrotated normals (Patch-SVDD base), standardised, float16, cell-major.

        Air cells are kept (a pair's partner is looked up by grid position) but marked, so no pair involves
        one. ``fit_stats``: compute the feature statistics from these cells' tissue first (fit, not fine-tune).
        """
        c = self.config
        raw, tissue = [], []
        grid: tuple[int, int] | None = None
        for b in batches(len(normals), c.batch_size, progress, cancel, "features of {done}/{total} normal slices",
                         start, stop):
            f = self.extractor.features(self._square(normals[b])).concat()
            grid = (int(f.shape[-2]), int(f.shape[-1]))
            fg = self._square(foreground_mask(normals[b]).astype(np.float32))
            tissue.append(tissue_grid(fg, grid, c.min_tissue).reshape(-1).cpu())
            raw.append(f.permute(0, 2, 3, 1).reshape(-1, f.shape[1]).to(torch.float16))
        assert grid is not None
        feats, mask = torch.cat(raw), torch.cat(tissue)
        if not bool(mask.any()):
            raise ConfigError("the normal slices hold no tissue patches to learn from; they may be empty (air)")
        if c.position_step >= min(grid):
            raise ConfigError(f"position_step {c.position_step} does not fit the {grid[0]}×{grid[1]} feature grid "
                              f"of input_size {c.input_size}; use a smaller step or a larger input_size")
        if fit_stats:
            self._fit_stats(feats[mask.to(feats.device)])
        out = torch.empty_like(feats)
        for b in batches(len(out), 65536):
            out[b] = self._standardise(feats[b].float()).to(torch.float16)
        return _CellSet(out, mask.to(out.device), grid)

    # -- training ------------------------------------------------------------------------------
    @property
    def heads(self) -> CurvedHeads:
        """The variant's classifier branches, whichever base they sit on."""
        assert self.head is not None
        return self.head.heads if isinstance(self.head, PatchSVDDNet) else self.head

    def _new_head(self) -> CurvedHeads | PatchSVDDNet:
        c = self.config
        if c.base == "patchsvdd":
            return PatchSVDDNet(self.extractor.dim, c.hidden, c.dim, c.variant, c.kappa_s, c.kappa_h_effective,
                                c.xi, c.score_from).to(self.device)
        return CurvedHeads(self.extractor.dim, c.hidden, c.dim, c.variant, c.kappa_s, c.kappa_h_effective,
                           c.xi, score_from=c.score_from).to(self.device)

    def _train(self, data: _RotationSet, epochs: int, lr: float, progress: ProgressCallback | None,
               cancel: CancelToken | None, start: float, stop: float, seed: int) -> None:
        """Adam on the summed cross-entropies of the variant's branches, balanced minibatches of patches."""
        head = self.head
        assert isinstance(head, CurvedHeads)
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
        self.training_log = {"pretext": "rotation", "final_loss": log.final_loss, "rotation_accuracy": acc,
                             "n_patches": n, "kappa_s": self.config.kappa_s, "kappa_h": self.config.kappa_h_effective}

    def _train_pairs(self, data: _CellSet, epochs: int, lr: float, progress: ProgressCallback | None,
                     cancel: CancelToken | None, start: float, stop: float, seed: int) -> None:
        """Adam on Patch-SVDD's objective; every tissue cell anchors one pair per position each epoch."""
        net = self.head
        assert isinstance(net, PatchSVDDNet)
        c = self.config
        cells = data.cells.cpu()
        tissue = data.tissue.cpu()
        n = len(cells) * N_POSITIONS
        gen = torch.Generator().manual_seed(seed)  # batch order, then the accuracy subsample
        pairs = torch.Generator().manual_seed(seed + 7919)  # jitter and SVDD' neighbours

        def step(idx: torch.Tensor) -> dict[str, torch.Tensor]:
            batch = sample_pairs(idx, cells, tissue, data.grid, c.position_step, c.position_jitter, pairs)
            if len(batch.label) == 0:  # every partner off the grid or in air: nothing to learn from this batch
                zero = sum(p.sum() for p in net.parameters()) * 0.0
                return {"loss": zero, "position": zero.detach(), "svdd": zero.detach()}
            return pair_loss(net, data.feats, batch, c.svdd_weight)

        log = train_loop(net, step, shuffled_batches(n, min(c.batch_patches, n)), epochs, lr=lr, generator=gen,
                         progress=progress, cancel=cancel, start=start, stop=stop,
                         message="epoch {epoch}/{epochs} loss {loss:.3f} (position {position:.3f}, svdd {svdd:.3f})")
        with torch.no_grad():
            sub = torch.randperm(n, generator=gen)[: min(n, 20000)]
            batch = sample_pairs(sub, cells, tissue, data.grid, c.position_step, 0, pairs)
            dev = self.device
            out = net.pair(net.encoder(data.feats[batch.anchor].to(dev, torch.float32)),
                           net.encoder(data.feats[batch.partner].to(dev, torch.float32)))
            acc = net.heads.accuracy(out, batch.label.to(dev)) if len(batch.label) else {}
        self.training_log = {"pretext": "relative position", "final_loss": log.final_loss,
                             "final_svdd": log.final.get("svdd"), "position_accuracy": acc,
                             "n_patches": len(cells), "kappa_s": c.kappa_s, "kappa_h": c.kappa_h_effective}

    def _set_bank(self, data: _CellSet, seed: int) -> None:
        """Keep (add) the tissue cells' features as the comparison bank, at most ``max_bank`` (random subset).

        Raw standardised features, not embeddings: a fine-tune changes the encoder, and the bank is embedded
        with the current encoder at every scoring.
        """
        new = data.feats[data.tissue]
        bank = new if self.bank is None else torch.cat([self.bank.to(new.device), new])
        if len(bank) > self.config.max_bank:
            keep = torch.randperm(len(bank), generator=torch.Generator().manual_seed(seed))[: self.config.max_bank]
            bank = bank[keep.sort().values.to(bank.device)]
        self.bank = bank.to(torch.float16).contiguous()

    def _fit(self, normals: np.ndarray, progress: ProgressCallback | None, cancel: CancelToken | None) -> None:
        self.bank = None
        if self.config.base == "patchsvdd":
            report(progress, 0.0, "features of the normals")
            cells = self._cell_set(normals, progress, cancel, 0.0, 0.3, fit_stats=True)
            self.head = self._new_head()
            self._train_pairs(cells, self.config.epochs, self.config.lr, progress, cancel, 0.3, 1.0, self.seed)
            if self.config.compare:
                self._set_bank(cells, self.seed)
            return
        report(progress, 0.0, "features of the rotated normals")
        raw = self._rotation_set(normals, progress, cancel, 0.0, 0.45)
        self._fit_stats(raw.feats)
        data = self._standardise_set(raw)
        del raw
        self.head = self._new_head()
        self._train(data, self.config.epochs, self.config.lr, progress, cancel, 0.45, 1.0, self.seed)

    def _fine_tune(self, normals: np.ndarray, progress: ProgressCallback | None,
                   cancel: CancelToken | None) -> None:
        """Continue the pretext task on a site's marked normals (same statistics, lower learning rate).

        Patch-SVDD with ``compare`` also adds the marked normals' patches to the comparison bank.
        """
        c = self.config
        if c.base == "patchsvdd":
            cells = self._cell_set(normals, progress, cancel, 0.0, 0.4, fit_stats=False)
            if c.fine_tune_epochs:
                self._train_pairs(cells, c.fine_tune_epochs, c.fine_tune_lr, progress, cancel, 0.4, 1.0,
                                  self.seed + 1)
            if c.compare:
                self._set_bank(cells, self.seed + 1)
            return
        if c.fine_tune_epochs == 0:
            return
        data = self._standardise_set(self._rotation_set(normals, progress, cancel, 0.0, 0.4))
        self._train(data, c.fine_tune_epochs, c.fine_tune_lr, progress, cancel, 0.4, 1.0, self.seed + 1)

    # -- scoring -------------------------------------------------------------------------------
    def _bank_embeddings(self) -> torch.Tensor | None:
        """The comparison bank through the current encoder (``compare`` only), float32."""
        if not self.config.compare:
            return None
        net = self.head
        assert isinstance(net, PatchSVDDNet) and self.bank is not None
        return torch.cat([net.encoder(self.bank[b].to(self.device, torch.float32))
                          for b in batches(len(self.bank), 65536)])

    def _patch_scores(self, f: torch.Tensor, tissue: torch.Tensor | None, k: int,
                      bank: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, str, float]:
        """Standardised features (b, C, h, w) of a slice batch rotated by k·90° → patch AS (b, h, w), float64.

        Also the per-patch embedding the viewer shows, its manifold and curvature.
        """
        b, d, h, w = f.shape
        flat = f.permute(0, 2, 3, 1)
        if isinstance(self.head, PatchSVDDNet):
            from ...engine.coreset import nearest_distance

            net = self.head
            emb = net.encoder(flat)
            a, _ = position_scores(net, emb, tissue, self.config.position_step)
            if bank is not None:
                dist = nearest_distance(emb.reshape(-1, emb.shape[-1]), bank).reshape(b, h, w).double()
                a = dist if self.config.variant == "euclidean" else dist * a
            e, manifold, curvature = _curved_view(net.heads, emb.reshape(-1, emb.shape[-1]))
            return a, e, manifold, curvature
        assert isinstance(self.head, CurvedHeads)
        out = self.head(flat.reshape(-1, d))
        a = self.head.anomaly_score(out, k).reshape(b, h, w)
        e, manifold, curvature = self.head.viewer_embedding(out)
        return a, e, manifold, curvature

    def _score(self, slices: np.ndarray, progress: ProgressCallback | None,
               cancel: CancelToken | None) -> AnomalyResult:
        assert self.head is not None
        n, H, W = slices.shape
        c = self.config
        maps, points, patch_scores = [], [], []
        manifold, curvature = "euclidean", 0.0
        grid: tuple[int, int] | None = None
        bank = self._bank_embeddings()
        for b in batches(n, c.batch_size, progress, cancel, "scored {done}/{total} slices"):
            x = self._square(slices[b])
            fg = self._square(foreground_mask(slices[b]).astype(np.float32)) if c.base == "patchsvdd" else None
            acc = None
            for k in range(c.score_rotations):
                check(cancel)
                f = self._standardise(self.extractor.features(torch.rot90(x, k, dims=(-2, -1))).concat())
                h, w = f.shape[-2:]
                tissue = None if fg is None else tissue_grid(torch.rot90(fg, k, dims=(-2, -1)), (h, w), c.min_tissue)
                a, e, manifold, curvature = self._patch_scores(f, tissue, k, bank)
                a = torch.rot90(a, -k, dims=(-2, -1))
                acc = a if acc is None else acc + a
                if k == 0:
                    grid = (h, w)
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
        if c.compare:
            score_name = "distance to the nearest normal patch" + ("" if c.variant == "euclidean" else
                                                                   " × (1 - tanh(z))")
        return AnomalyResult(heatmaps=heat, scores=heat.reshape(n, -1).max(1), embeddings=emb,
                             info={"image_score": "max of the heatmap", "variant": c.variant, "base": c.base,
                                   "score_from": c.score_from, "patch_score": score_name,
                                   "score_rotations": c.score_rotations})

    # -- persistence ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        assert self.head is not None
        state = {f"head.{k}": v for k, v in self.head.state_dict().items()}
        state.update({f"stats.{k}": v for k, v in self.stats.items()})
        if self.config.compare:
            assert self.bank is not None
            state["bank"] = self.bank
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.stats = {k[len("stats."):]: v.to(self.device) for k, v in state.items() if k.startswith("stats.")}
        for key in ("mean", "std"):
            if key not in self.stats:
                raise KeyError(f"feature statistics ({key})")
        self.bank = None
        if self.config.compare:
            if "bank" not in state:
                raise KeyError("the comparison bank (compare=true)")
            bank = state["bank"]
            if bank.ndim != 2 or bank.shape[1] != self.stats["mean"].numel():
                raise ValueError(f"the comparison bank has shape {tuple(bank.shape)}, the features "
                                 f"{self.stats['mean'].numel()} channels")
            self.bank = bank.to(self.device, torch.float16)
        self.head = self._new_head()
        self.head.load_state_dict({k[len("head."):]: v for k, v in state.items() if k.startswith("head.")})
        self.head.eval()
        self._check_curvatures()

    def _check_curvatures(self) -> None:
        """The manifolds' stored curvatures are the configured ones (the state, not the config, is what scores).

        A bundle whose ``bundle.json`` was edited to another κ would otherwise score with the saved κ while
        the viewer and the result described the edited one.
        """
        heads, c = self.heads, self.config
        pairs = []
        if "S" in heads.branches:
            pairs.append(("kappa_s", float(heads.sphere.c), c.kappa_s))
        if "H" in heads.branches:
            pairs.append(("kappa_h", -float(heads.ball.c), c.kappa_h_effective))
        for name, stored, configured in pairs:
            if not math.isclose(stored, configured, rel_tol=1e-4):
                raise ValueError(f"the saved curvature {name} = {stored:g} is not the configured {configured:g}")

    def extra_state(self) -> dict[str, Any]:
        return {"training_log": self.training_log, "format": STATE_FORMAT}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Read the training log; a version-1 model (no ``format``) is read as it was made and scored.

        Version 1 knew only the rotation base and the literal score rule, and its calibration was made with
        those scores, so both are set back (its saved configuration has neither key) rather than rescoring
        its weights by the new rule under a calibration that no longer matches.
        """
        fmt = state.get("format", 1)
        if isinstance(fmt, bool) or not isinstance(fmt, int) or not 1 <= fmt <= STATE_FORMAT:
            raise ModelError(f"this curved-heads model was saved in state format {fmt!r}; this AnomaLens reads "
                             f"formats 1 to {STATE_FORMAT}: update AnomaLens, or train the model again")
        if fmt == 1:
            self.config.base = "rotation"
            self.config.compare = False
            self.config.score_from = "embeddings"
            self.notes.append("this curved-heads model was made by version 1 of the detector: it scores by the "
                              "literal equations, where the in-Two and HiO scores ignore the trained classifiers "
                              "(issue #20); train it again for scores from the classifiers")
        self.training_log = dict(state.get("training_log") or {})


def _curved_view(heads: CurvedHeads, emb: torch.Tensor) -> tuple[torch.Tensor, str, float]:
    """A Patch-SVDD patch embedding as the viewer shows it: Γ_H into the ball if the variant has one, else Γ_S."""
    from ...engine.geometry import poincare, sphere

    if "H" in heads.branches:
        return poincare.clip_features(emb, heads.xi, heads.ball.c), "poincare", -heads.kappa_h
    if "S" in heads.branches:
        return sphere.project(emb, heads.sphere.c), "sphere", heads.kappa_s
    return emb, "euclidean", 0.0
