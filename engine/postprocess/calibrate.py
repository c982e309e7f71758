"""Calibrate threshold and SCR λ from NORMAL data only, so no lesion label is ever needed to set them.

The rule is InvDetect's (following Roth et al. and ADINO-DPMM): pick the smallest λ that keeps the
abnormal area detected on normal images — all of it false positive — below a target (1 %). The smallest
such λ smooths as little as possible, so small lesions survive.

SCR's unary threshold is calibrated first, at a looser false-positive rate (``threshold_fpr``, by default
five times the target): with the threshold already at the target, plain thresholding would meet it and
λ would always be 0. The paper's analogue is its one-class-SVM boundary (η = 0, ν = 0.1), which leaves
about 10 % of normal patches outside and lets SCR bring the area down. A looser threshold catches more of
a lesion's faint rim; SCR then removes the speckle that the looser threshold lets through on normals.

That only works when the looser threshold's extra false positives ARE speckle. On smooth maps (PatchCore,
Lorentz: patch scores upsampled and smoothed) they are a few large regions, and the smallest λ that meets
the target removes them whole: the flagged area on normals falls from 5 % to almost nothing in one step,
and any lesion of their size goes with it (brain1, PatchCore: 1.3 % at λ = 20, 0.005 % at λ = 27.5, and
SCR's Dice on the lesion 0). So when ``threshold_fpr`` is not given, the threshold is tightened step by
step (``THRESHOLD_LADDER``) until λ trims instead of erases, i.e. leaves at least ``ERASE_FRACTION`` of
the target flagged on normals. At the last step the threshold is the target's and λ = 0: SCR's operating
point is then plain thresholding, and λ stays a knob to turn by hand. Every step is decided on normals.
On brain1 (seeds 0–2) PatchCore's SCR Dice goes from 0 to 0.25–0.34 (plain 0.31). The test is on area
only, so it cannot see which regions survive: with the Lorentz detector the ladder stops at 3 % (λ 8.6–14
leaves about 1 % flagged on normals) and the lesion is still erased: nothing is flagged on the evaluated
slices (bench/bench_scr_calibration.py).

So SCR's point must also keep lesions (issue #20). Given ``lesions`` (the detector's output on copies of
the normals with synthetic 5–10 mm lesions, ``engine.postprocess.survival``), a looser step is taken only
when its λ also passes the area test AND its cut is shown to keep at least ``SURVIVAL_TARGET`` (90 %) of
the lesions that step's threshold finds, from at least ``MIN_SEEN`` of them; otherwise the threshold is
tightened. The burden of proof is on SCR: where it cannot be shown to keep lesions, it becomes plain
thresholding (λ = 0 at the target's threshold), which keeps whatever plain thresholding finds. On brain1
that is what happens for both detectors (bench/bench_scr_survival.py): the synthetic lesions the loose
steps find are cut away (Lorentz, seed 0: 7 of 14 kept at 3 %, where the area test took λ 9.9 and the real
lesion's Dice fell from 0.51 to 0).

Inputs may be one array ((n, H, W) slices or a (Z, H, W) volume) or a list of them (volumes of different
sizes); ``foreground``, ``features`` and ``intensities`` follow the same structure. Only foreground pixels
count towards the false-positive area.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..calibration import Calibration, LesionSurvival, ScrSettings
from ..checks import check_fraction, check_positive
from ..errors import ConfigError, InvalidVolumeError
from ..progress import CancelToken, ProgressCallback, check, report, stage
from .normalise import ScoreNormaliser, collect_pixels
from .scr import (
    DEFAULT_TEMPERATURE,
    PairwiseWeights,
    _check_mode,
    estimate_tau,
    pairwise_weights,
    scr_refine,
)
from .survival import MIN_SEEN, SURVIVAL_TARGET, LesionCount, LesionProbe, count_survivors

#: λ values tried before bisection (log-spaced, ×√10 apart).
DEFAULT_LAMBDA_GRID = tuple(float(x) for x in np.geomspace(1e-3, 1e3, 13))
#: Bisection steps between the last failing and first passing grid λ (narrows ×√10 to ~1 %).
BISECT_STEPS = 8
#: Pixels used by the threshold search; beyond this a seeded uniform subsample (error ~1e-4 in FPR).
MAX_THRESHOLD_PIXELS = 20_000_000
#: Pixels cut per λ trial; beyond this whole slices (2d) or volumes (3d) are subsampled with a seed.
MAX_SCR_PIXELS = 2_000_000
#: SCR's unary false-positive rate, as multiples of the target, tried loosest first (then the target itself).
THRESHOLD_LADDER = (5.0, 3.0, 2.0, 1.5)
#: λ "erased" rather than trimmed when it leaves less than this share of the target flagged on normals.
ERASE_FRACTION = 0.25


def _as_list(x: np.ndarray | Sequence[np.ndarray] | None, n: int, what: str) -> list[np.ndarray | None]:
    if x is None:
        return [None] * n
    lst = [x] if isinstance(x, np.ndarray) else list(x)
    if len(lst) != n:
        raise InvalidVolumeError(f"{n} anomaly maps but {len(lst)} {what}")
    return lst


def _listed(
    normal_maps: np.ndarray | Sequence[np.ndarray],
    foreground: np.ndarray | Sequence[np.ndarray] | None,
    features: np.ndarray | Sequence[np.ndarray] | None,
    intensities: np.ndarray | Sequence[np.ndarray] | None,
) -> tuple[list[np.ndarray], list, list, list]:
    """The maps and their companions as equal-length lists, one entry per grid."""
    maps = [normal_maps] if isinstance(normal_maps, np.ndarray) else list(normal_maps)
    if not maps:
        raise InvalidVolumeError("no normal anomaly maps to calibrate on")
    return (maps, _as_list(foreground, len(maps), "foreground masks"),
            _as_list(features, len(maps), "feature arrays"), _as_list(intensities, len(maps), "intensity arrays"))


def threshold_for_fpr(
    normal_maps: np.ndarray | Sequence[np.ndarray],
    foreground: np.ndarray | Sequence[np.ndarray] | None = None,
    target_fpr: float = 0.01,
    max_pixels: int = MAX_THRESHOLD_PIXELS,
    seed: int = 0,
) -> float:
    """The smallest pixel threshold t with at most ``target_fpr`` of normal foreground pixels above it.

    "Above" is strict (``score > t`` is abnormal), matching :func:`scr_refine` at λ = 0. Exact on the
    pixels used (a partial sort); beyond ``max_pixels`` a seeded uniform subsample is used.
    """
    target_fpr = check_fraction("target_fpr", target_fpr)
    v = collect_pixels(normal_maps, foreground, "normal anomaly maps")
    if v.size > max_pixels:
        v = np.random.default_rng(seed).choice(v, size=max_pixels, replace=False)
    n = v.size
    k = math.floor(target_fpr * n)  # false positives allowed
    idx = n - k - 1
    return float(np.partition(v, idx)[idx])


@dataclass
class _Unit:
    scores: np.ndarray
    foreground: np.ndarray
    weights: PairwiseWeights | None


def _units(
    normal_maps: np.ndarray | Sequence[np.ndarray],
    foreground: np.ndarray | Sequence[np.ndarray] | None,
    features: np.ndarray | Sequence[np.ndarray] | None,
    intensities: np.ndarray | Sequence[np.ndarray] | None,
    tau: float | None,
    mode: str,
    max_pixels: int,
    seed: int,
) -> list[_Unit]:
    """Per-grid inputs with α precomputed once (it does not depend on λ), subsampled to ``max_pixels``."""
    maps, fgs, feats, ints = _listed(normal_maps, foreground, features, intensities)
    # Split into the pieces SCR treats independently: slices in 2d mode, volumes in 3d mode.
    pieces: list[tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]] = []
    for m, f, ft, it in zip(maps, fgs, feats, ints, strict=True):
        m = np.asarray(m, dtype=np.float32)
        _check_mode(mode, m.ndim)
        f = np.ones(m.shape, dtype=bool) if f is None else np.asarray(f, dtype=bool)
        if f.shape != m.shape:
            raise InvalidVolumeError(f"foreground mask {f.shape} does not match the normal map {m.shape}")
        if mode == "2d" and m.ndim == 3:
            for i in range(m.shape[0]):
                pieces.append((m[i], f[i], None if ft is None else ft[i], None if it is None else it[i]))
        else:
            pieces.append((m, f, ft, it))
    total = sum(p[0].size for p in pieces)
    if total > max_pixels:
        order = np.random.default_rng(seed).permutation(len(pieces))
        keep, acc = [], 0
        for i in order:
            if acc >= max_pixels:
                break
            keep.append(int(i))
            acc += pieces[i][0].size
        pieces = [pieces[i] for i in sorted(keep)]
    # Stack equally sized 2d slices back into one grid: one graph per batch instead of one per slice.
    groups: dict[tuple, list] = {}
    for p in pieces:
        key = (p[0].shape, p[2] is None, p[3] is None, None if p[2] is None else np.shape(p[2]))
        groups.setdefault(key, []).append(p)
    units = []
    for grp in groups.values():
        if mode == "2d" and len(grp) > 1:
            s = np.stack([p[0] for p in grp])
            f = np.stack([p[1] for p in grp])
            ft = None if grp[0][2] is None else np.stack([np.asarray(p[2]) for p in grp])
            it = None if grp[0][3] is None else np.stack([np.asarray(p[3]) for p in grp])
            items = [(s, f, ft, it)]
        else:
            items = grp
        for s, f, ft, it in items:
            w = None
            if tau is not None and (ft is not None or it is not None):
                w = pairwise_weights(s.shape, tau, ft, it, mode)
            units.append(_Unit(np.asarray(s, dtype=np.float32), np.asarray(f, dtype=bool), w))
    return units


@dataclass
class _Probe:
    """Synthetic-lesion slices in normal-quantile units, ready to be cut at candidate SCR points.

    Always cut slice by slice (2-D): the lesions are in-plane and their slices are copies, not a volume.
    """

    scores: np.ndarray
    foreground: np.ndarray
    weights: PairwiseWeights | None
    labels: np.ndarray
    diameter_range: tuple[float, float]

    @classmethod
    def of(cls, probe: LesionProbe, normaliser: ScoreNormaliser, tau: float) -> _Probe:
        scores = normaliser.transform(np.asarray(probe.maps, np.float32))
        weights = pairwise_weights(scores.shape, tau, probe.features,
                                   None if probe.features is not None else probe.intensities, "2d")
        lo, hi = probe.diameter_range
        return cls(scores=scores, foreground=np.asarray(probe.foreground, bool), weights=weights,
                   labels=np.asarray(probe.labels), diameter_range=(float(lo), float(hi)))

    @property
    def sizes(self) -> str:
        """The lesions' size for notes: ``5–10 mm``."""
        return f"{self.diameter_range[0]:g}–{self.diameter_range[1]:g} mm"

    def count(self, threshold: float, lam: float, temperature: float) -> LesionCount:
        """Lesions seen by thresholding at ``threshold`` and kept by the cut at (threshold, λ)."""
        before = (self.scores > threshold) & self.foreground
        after = scr_refine(self.scores, threshold, lam, mode="2d", temperature=temperature, weights=self.weights,
                           foreground=self.foreground)
        return count_survivors(self.labels, before, after)


def _fails(count: LesionCount | None) -> bool:
    """Whether a candidate's lesion count decides against it (enough lesions seen, too few kept)."""
    return count is not None and count.seen >= MIN_SEEN and count.kept < SURVIVAL_TARGET * count.seen


def _fp_area(units: list[_Unit], threshold: float, lam: float, mode: str, temperature: float) -> float:
    fp = 0
    n = 0
    for u in units:
        if lam > 0 and u.weights is None:
            raise ConfigError("λ calibration needs per-pixel features or intensities for SCR's pairwise weights")
        mask = scr_refine(
            u.scores, threshold, lam, mode=mode, temperature=temperature, weights=u.weights, foreground=u.foreground
        )
        fp += int(np.count_nonzero(mask))
        n += int(np.count_nonzero(u.foreground))
    if n == 0:
        raise InvalidVolumeError("the foreground masks of the normal maps are empty")
    return fp / n


def _lambda_search(
    units: list[_Unit],
    threshold: float,
    target_fpr: float,
    grid: Sequence[float],
    mode: str,
    temperature: float,
    bisect_steps: int,
    progress: ProgressCallback | None,
    cancel: CancelToken | None,
) -> tuple[float, float]:
    """(λ, FP area at λ): first passing grid value, then bisection in log-λ towards the failing one."""
    fp0 = _fp_area(units, threshold, 0.0, mode, temperature)
    if fp0 <= target_fpr:
        return 0.0, fp0
    grid = sorted(float(g) for g in grid)
    if not grid or grid[0] <= 0:
        raise ConfigError("the λ grid must hold positive values")
    lo, hi, fp_hi = 0.0, None, None
    steps = len(grid) + bisect_steps
    for i, lam in enumerate(grid):
        check(cancel)
        fp = _fp_area(units, threshold, lam, mode, temperature)
        report(progress, (i + 1) / steps, "calibrating SCR λ")
        if fp <= target_fpr:
            hi, fp_hi = lam, fp
            break
        lo = lam
    if hi is None or fp_hi is None:
        raise ConfigError(
            f"no λ up to {grid[-1]:g} keeps SCR's false-positive area on normals below {target_fpr:.2%}; "
            "the threshold is too low for these normal maps"
        )
    for j in range(bisect_steps):
        check(cancel)
        mid = math.sqrt(lo * hi) if lo > 0 else hi / 10.0
        fp = _fp_area(units, threshold, mid, mode, temperature)
        report(progress, (len(grid) + j + 1) / steps, "calibrating SCR λ")
        if fp <= target_fpr:
            hi, fp_hi = mid, fp
        else:
            lo = mid
    return hi, fp_hi


def lambda_for_fpr(
    normal_maps: np.ndarray | Sequence[np.ndarray],
    foreground: np.ndarray | Sequence[np.ndarray] | None,
    threshold: float,
    tau: float,
    features: np.ndarray | Sequence[np.ndarray] | None = None,
    intensities: np.ndarray | Sequence[np.ndarray] | None = None,
    target_fpr: float = 0.01,
    grid: Sequence[float] = DEFAULT_LAMBDA_GRID,
    mode: str = "2d",
    temperature: float = DEFAULT_TEMPERATURE,
    bisect_steps: int = BISECT_STEPS,
    max_pixels: int = MAX_SCR_PIXELS,
    seed: int = 0,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> float:
    """The smallest λ whose SCR mask covers at most ``target_fpr`` of the normal foreground.

    Returns 0.0 when plain thresholding already meets the target. α is computed once; every trial is one
    max-flow per grid (slices of equal size are stacked into one graph). The search assumes the FP area
    falls with λ, which holds in practice though not strictly; the returned λ is always one that was
    verified to pass.

    Raises:
        ConfigError: bad target/τ/grid, or no λ on the grid reaches the target.
    """
    target_fpr = check_fraction("target_fpr", target_fpr)
    tau = check_positive("tau", tau)
    if features is None and intensities is None:
        raise ConfigError("λ calibration needs per-pixel features or intensities for SCR's pairwise weights")
    units = _units(normal_maps, foreground, features, intensities, tau, mode, max_pixels, seed)
    lam, _ = _lambda_search(
        units, float(threshold), target_fpr, grid, mode, temperature, bisect_steps, progress, cancel
    )
    return lam


def _pooled_tau(
    maps: list[np.ndarray],
    fgs: list[np.ndarray | None],
    feats: list[np.ndarray | None],
    ints: list[np.ndarray | None],
    mode: str,
) -> float:
    num, den = 0.0, 0
    for m, f, ft, it in zip(maps, fgs, feats, ints, strict=True):
        t = estimate_tau(np.shape(m), ft, it, mode, f)
        w = int(np.count_nonzero(f)) if f is not None else int(np.size(m))
        num += t * t * w
        den += w
    return math.sqrt(num / den) if den > 0 and num > 0 else 1.0


def calibrate(
    normal_maps: np.ndarray | Sequence[np.ndarray],
    foreground: np.ndarray | Sequence[np.ndarray] | None = None,
    features: np.ndarray | Sequence[np.ndarray] | None = None,
    intensities: np.ndarray | Sequence[np.ndarray] | None = None,
    target_fpr: float = 0.01,
    threshold_fpr: float | None = None,
    tau: float | None = None,
    mode: str = "2d",
    temperature: float = DEFAULT_TEMPERATURE,
    grid: Sequence[float] = DEFAULT_LAMBDA_GRID,
    seed: int = 0,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
    lesions: LesionProbe | None = None,
) -> Calibration:
    """Fit the normaliser, then threshold, τ and λ, all on normal maps (raw detector scores).

    Args:
        normal_maps: Raw anomaly maps of normal data (held-out normals are better than training ones).
        foreground: Tissue masks; only these pixels count.
        features: Per-pixel descriptors for α (the detector's ``AnomalyResult.features``).
        intensities: The slices, the α fallback when there are no features.
        target_fpr: The false-positive area SCR must stay under (the paper's 1 %).
        threshold_fpr: False-positive rate of SCR's unary threshold. Default: the loosest rate of
            ``THRESHOLD_LADDER`` × target (at most 0.5) at which λ trims rather than erases, else the
            target itself (module docstring). A given rate is used as it is.
        tau: τ for α; estimated from the normals (RMS neighbour distance) when None.
        mode: SCR mode, "2d" or "3d".
        temperature: SCR temperature (in normalised units).
        grid: λ grid for the search.
        seed: Seed for every subsample.
        progress: Progress callback.
        cancel: Cancel token.
        lesions: The detector's output on copies of the normals with synthetic 5–10 mm lesions
            (``engine.postprocess.survival``). With it, a candidate unary threshold is kept only when the cut
            at its λ keeps ``SURVIVAL_TARGET`` of the lesions that threshold finds (instead of the area test
            against erasing); without it, or where the threshold finds too few of them, the area test.

    Returns:
        The typed ``Calibration`` (``engine.calibration``): the normaliser, the plain operating point at
        ``target_fpr`` (``threshold``, ``fp_area``) and SCR's (``scr``: its unary threshold, set at
        ``scr_threshold_fpr``, with λ, τ, temperature and mode; ``fp_area_unary`` alone and ``fp_area_scr``
        at λ), ``n_pixels`` and ``notes``. Without features and intensities SCR cannot be calibrated: its λ
        and τ and ``fp_area_scr`` are None and a note says why. The caller adds slice count and fingerprint.
    """
    target_fpr = check_fraction("target_fpr", target_fpr)
    if threshold_fpr is None:
        rates = sorted({max(target_fpr, min(m * target_fpr, 0.5)) for m in THRESHOLD_LADDER} | {target_fpr},
                       reverse=True)
    else:
        rates = [check_fraction("threshold_fpr", threshold_fpr)]
    temperature = check_positive("temperature", temperature)
    notes: list[str] = []
    maps, fgs, feats, ints = _listed(normal_maps, foreground, features, intensities)

    report(progress, 0.0, "fitting the score normaliser")
    normaliser = ScoreNormaliser().fit(maps, None if foreground is None else fgs, seed=seed)
    if normaliser.degenerate:
        notes.append("all normal scores are equal: the normaliser is degenerate and thresholds are not meaningful")
    normed = [normaliser.transform(m) for m in maps]
    fg_arg = None if foreground is None else fgs
    plain = threshold_for_fpr(normed, fg_arg, target_fpr, seed=seed)
    check(cancel)

    lam: float | None = None
    fp_scr: float | None = None
    threshold_fpr = rates[0]
    threshold = threshold_for_fpr(normed, fg_arg, threshold_fpr, seed=seed)
    survival: LesionSurvival | None = None
    if features is None and intensities is None:
        tau = None
        notes.append("no features or intensities were given, so SCR (τ, λ) was not calibrated")
    else:
        if not grid or min(grid) <= 0:
            raise ConfigError("the λ grid must hold positive values")
        tau = check_positive("tau", tau) if tau is not None else _pooled_tau(maps, fgs, feats, ints, mode)
        units = _units(normed, fg_arg, features, intensities, tau, mode, MAX_SCR_PIXELS, seed)
        probe = None if lesions is None else _Probe.of(lesions, normaliser, tau)
        # Candidates that meet the false-positive rule, loosest unary threshold (largest λ) first. One looser
        # than the plain threshold is taken only when its λ trims rather than erases (the area test) and, with
        # lesions, when its cut is shown to keep them: SCR may differ from plain thresholding only where that
        # is shown. The last candidate (the target's own threshold, where λ is normally 0) is taken as it is.
        tried: list[tuple[float, float, float, float, LesionCount | None]] = []
        for i, rate in enumerate(rates):
            last = i == len(rates) - 1
            t_i = threshold if i == 0 else threshold_for_fpr(normed, fg_arg, rate, seed=seed)
            step = stage(progress, i / len(rates), (i + 1) / len(rates))
            try:
                lam_i, fp_i = _lambda_search(
                    units, t_i, target_fpr, grid, mode, temperature, BISECT_STEPS, step, cancel
                )
            except ConfigError:
                if last and not tried:
                    raise
                notes.append(f"no λ met the target at a {rate:.1%} unary threshold, so it was tightened")
                continue
            count = probe.count(t_i, lam_i, temperature) if probe is not None else None
            tried.append((rate, t_i, lam_i, fp_i, count))
            if last or lam_i == 0.0:
                break
            where = f"at a {rate:.1%} unary threshold the smallest passing λ ({lam_i:.3g})"
            if fp_i < ERASE_FRACTION * target_fpr:
                notes.append(f"{where} left {fp_i:.3%} of normal tissue flagged: it erased whole regions rather than "
                             "speckle, so the threshold was tightened")
                continue
            if probe is None or count is None:
                break
            if count.seen < MIN_SEEN:
                notes.append(f"{where} could not be shown to keep lesions: only {count.seen} of the {count.inserted} "
                             f"synthetic {probe.sizes} lesions reach that threshold (at least {MIN_SEEN} are needed), "
                             "so the threshold was tightened")
                continue
            if count.kept >= SURVIVAL_TARGET * count.seen:
                break
            notes.append(f"{where} kept {count.kept} of the {count.seen} synthetic {probe.sizes} lesions that "
                         f"threshold finds ({count.kept / count.seen:.0%}, under {SURVIVAL_TARGET:.0%}), so the "
                         "threshold was tightened")
        threshold_fpr, threshold, lam, fp_scr, count = tried[-1]
        if probe is not None and count is not None and _fails(count):
            # Only where SCR's threshold is fixed (or the target's own needs λ > 0): the false-positive rule is the
            # product's promise on normals and stays; the lesions' loss is flagged instead.
            notes.append(
                f"no SCR point both meets the false-positive target and keeps {SURVIVAL_TARGET:.0%} of the synthetic "
                f"{probe.sizes} lesions: the best compromise, λ {lam:.3g} at a {threshold_fpr:.1%} unary threshold, "
                f"keeps {count.kept} of {count.seen}; SCR may erase small lesions, compare with the plain mask"
            )
        if probe is not None and count is not None:
            survival = LesionSurvival(inserted=count.inserted, seen=count.seen, kept=count.kept,
                                      target=SURVIVAL_TARGET, checked=count.seen >= MIN_SEEN,
                                      diameter_mm=probe.diameter_range)
        if lam == 0.0:
            notes.append("plain thresholding already meets the target on normals, so λ = 0")
    pix = collect_pixels(normed, fg_arg, "normal anomaly maps")
    fp_area = float(np.count_nonzero(pix > threshold)) / pix.size
    fp_plain = float(np.count_nonzero(pix > plain)) / pix.size
    report(progress, 1.0, "calibrated")
    return Calibration(
        normaliser=normaliser, threshold=float(plain),
        scr=ScrSettings(threshold=float(threshold), lam=None if lam is None else float(lam),
                        tau=None if tau is None else float(tau), temperature=float(temperature), mode=mode),
        target_fpr=float(target_fpr), scr_threshold_fpr=float(threshold_fpr), fp_area=fp_plain,
        fp_area_unary=float(fp_area), fp_area_scr=None if fp_scr is None else float(fp_scr), n_pixels=int(pix.size),
        notes=tuple(notes), lesions=survival)
