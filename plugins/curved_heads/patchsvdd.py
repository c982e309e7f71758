"""Patch-SVDD base for the curved heads (paper Tab. VIII / IX build on Patch-SVDD, Yi & Yoon, ACCV 2020).

Patch-SVDD trains a patch encoder ``f`` with two losses: SVDD' pulls the embeddings of spatially adjacent
patches together (a compact, locally smooth description of normal patches), and a self-supervised
classifier predicts the relative position of a second patch to a first one among the 8 neighbouring
positions of a 3×3 grid (Doersch et al.), from ``f(p1) − f(p2)``. Its anomaly score compares a test patch's
embedding with the nearest normal one ("Cpr" in the paper's tables); Patch-SVDD† (Tab. VIII) reads the
score off the position classifier instead, which is where the curved heads plug in: the classifier's
feature extractor gives ``e_E``, and its Euclidean / spherical / hyperbolic branches predict the position.

Here a "patch" is a cell of the frozen backbone's patch-feature grid (as for every AnomaLens detector), so
``f`` is a per-cell MLP and the pairs are cells ``step`` cells apart in one of the 8 directions, jittered by
up to ``jitter`` cells (Patch-SVDD jitters its patches so the task cannot be solved by edge continuity).
Kept apart from the detector so it can be tested without a backbone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .heads import CurvedHeads, HeadOutput

#: The 8 relative positions of the pretext task, (dy, dx) in grid cells per unit step; the class is the index.
DIRECTIONS: tuple[tuple[int, int], ...] = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))
N_POSITIONS = len(DIRECTIONS)


class PatchSVDDNet(nn.Module):
    """Patch encoder ``f`` and the curved heads on pairs: ``heads(f(p1) − f(p2))`` predicts p2's position.

    ``encoder``: per-patch MLP ``in_dim → hidden → dim`` with LeakyReLU(0.1) (Patch-SVDD's activation); its
    output is the patch embedding that SVDD' makes compact and the ``compare`` score measures. ``heads``:
    a ``CurvedHeads`` with 8 classes whose shared extractor takes the embedding difference of a pair.
    """

    def __init__(self, in_dim: int, hidden: int, dim: int, variant: str, kappa_s: float, kappa_h: float,
                 xi: float, score_from: str) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(in_dim, hidden), nn.LeakyReLU(0.1), nn.Linear(hidden, dim))
        self.heads = CurvedHeads(dim, hidden, dim, variant, kappa_s, kappa_h, xi, n_classes=N_POSITIONS,
                                 score_from=score_from)

    def pair(self, h1: Tensor, h2: Tensor) -> HeadOutput:
        """The heads' forward pass on a pair of patch embeddings (…, dim)."""
        return self.heads(h1 - h2)


@dataclass
class PairBatch:
    """Flat cell indices of a training batch: anchors, their position partners and SVDD' neighbours."""

    anchor: Tensor
    partner: Tensor
    neighbour: Tensor
    label: Tensor


def sample_pairs(idx: Tensor, cells: Tensor, tissue: Tensor, grid: tuple[int, int], step: int, jitter: int,
                 gen: torch.Generator) -> PairBatch:
    """The pairs of one batch; ``idx`` indexes ``cells × 8`` (anchor ``idx // 8``, position class ``idx % 8``).

    Every anchor is paired with every position once per epoch, so the classes stay balanced. The partner is
    ``step`` cells away in the class's direction, plus a uniform jitter of up to ``jitter`` cells per axis;
    pairs whose partner leaves the grid or is air (``tissue`` False) are dropped. The SVDD' neighbour is
    one of the 8 adjacent cells, clamped to the grid.

    Args:
        idx: batch indices into ``len(cells) * 8``.
        cells: flat indices (slice·h·w + y·w + x) of the tissue cells that may anchor a pair.
        tissue: (n·h·w,) bool, which cells hold tissue.
        grid: (h, w) of the feature grid.
        step: distance of a partner in cells.
        jitter: the most a partner is moved per axis, in cells.
        gen: the random stream of the jitter and the neighbours (seeded by the caller).
    """
    h, w = grid
    dirs = torch.tensor(DIRECTIONS, dtype=torch.long)
    anchor = cells[idx // N_POSITIONS]
    label = idx % N_POSITIONS
    base = anchor // (h * w) * (h * w)
    y, x = anchor % (h * w) // w, anchor % w
    off = dirs[label] * step + torch.randint(-jitter, jitter + 1, (len(idx), 2), generator=gen)
    py, px = y + off[:, 0], x + off[:, 1]
    ok = (py >= 0) & (py < h) & (px >= 0) & (px < w)
    partner = base + py.clamp(0, h - 1) * w + px.clamp(0, w - 1)
    ok &= tissue[partner]
    nd = dirs[torch.randint(0, N_POSITIONS, (len(idx),), generator=gen)]
    neighbour = base + (y + nd[:, 0]).clamp(0, h - 1) * w + (x + nd[:, 1]).clamp(0, w - 1)
    return PairBatch(anchor[ok], partner[ok], neighbour[ok], label[ok])


def pair_loss(net: PatchSVDDNet, feats: Tensor, batch: PairBatch, svdd_weight: float) -> dict[str, Tensor]:
    """Patch-SVDD's objective: the branches' position cross-entropies + ``svdd_weight`` · SVDD'.

    ``feats``: (n·h·w, C) standardised cell features (any float dtype; used as float32).
    """
    dev = next(net.parameters()).device
    h1 = net.encoder(feats[batch.anchor].to(dev, torch.float32))
    h2 = net.encoder(feats[batch.partner].to(dev, torch.float32))
    hn = net.encoder(feats[batch.neighbour].to(dev, torch.float32))
    label = batch.label.to(dev)
    ssl = net.heads.loss(net.pair(h1, h2), label)
    svdd = ((h1 - hn) ** 2).sum(-1).mean()
    return {"loss": ssl + svdd_weight * svdd, "position": ssl.detach(), "svdd": svdd.detach()}


def _shift(x: Tensor, dy: int, dx: int) -> tuple[Tensor, Tensor]:
    """``x`` (b, h, w, …) moved so that cell (y, x) holds the value of (y + dy, x + dx); and where that exists."""
    b, h, w = x.shape[:3]
    out = torch.zeros_like(x)
    valid = torch.zeros((b, h, w), dtype=torch.bool, device=x.device)
    ys, yd = slice(max(0, -dy), h - max(0, dy)), slice(max(0, dy), h - max(0, -dy))
    xs, xd = slice(max(0, -dx), w - max(0, dx)), slice(max(0, dx), w - max(0, -dx))
    if ys.start < ys.stop and xs.start < xs.stop:
        out[:, ys, xs] = x[:, yd, xd]
        valid[:, ys, xs] = True
    return out, valid


def position_scores(net: PatchSVDDNet, emb: Tensor, tissue: Tensor, step: int) -> tuple[Tensor, Tensor]:
    """Per-cell anomaly score of the position heads: the mean over the cell's 8 pairs, float64 (b, h, w).

    Each cell is paired with the cell ``step`` away in each direction (no jitter at scoring) and scored by
    the variant's rule with that direction as the true class. Pairs with an air partner are left out, as in
    training; a cell with no tissue partner at all uses every partner on the grid, and a cell with none on
    the grid scores 0. Also returns the number of pairs each cell's score averages.

    Args:
        net: the trained network.
        emb: (b, h, w, dim) patch embeddings ``f(p)``.
        tissue: (b, h, w) bool, which cells hold tissue.
        step: the pair distance in cells.
    """
    b, h, w, _ = emb.shape
    total = torch.zeros((b, h, w), dtype=torch.float64, device=emb.device)
    count = torch.zeros_like(total)
    total_any, count_any = torch.zeros_like(total), torch.zeros_like(total)
    for j, (dy, dx) in enumerate(DIRECTIONS):
        partner, inside = _shift(emb, dy * step, dx * step)
        partner_tissue, _ = _shift(tissue, dy * step, dx * step)
        a = net.heads.anomaly_score(net.pair(emb, partner), j)
        use = (inside & partner_tissue).double()
        total += a * use
        count += use
        total_any += a * inside.double()
        count_any += inside.double()
    none = count == 0
    total = torch.where(none, total_any, total)
    count = torch.where(none, count_any, count)
    return total / count.clamp_min(1), count


def tissue_grid(foreground: Tensor, grid: tuple[int, int], min_tissue: float) -> Tensor:
    """(b, 1, H, W) float foreground at input size → (b, h, w) bool: cells with ≥ ``min_tissue`` tissue."""
    return F.adaptive_avg_pool2d(foreground, grid)[:, 0] >= min_tissue
