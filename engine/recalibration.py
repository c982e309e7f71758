"""Calibrating a model on a site's normal slices, with or without fine-tuning it first: one path for all callers.

``anomalens calibrate`` and the viewer's Calibration dock both call ``recalibrate``: with ``fine_tune`` every
other normal slice adapts the model and the rest calibrate it (a model scores the slices it just learnt too
low, which would make thresholds too permissive), and the false-positive area is measured on the
calibration slices before and after, at the plain and the SCR operating point.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import numpy as np

from .calibration import Calibration
from .errors import ConfigError
from .preprocess.foreground import foreground_mask
from .progress import CancelToken, ProgressCallback, check, report, stage

if TYPE_CHECKING:
    from .detectors.base import Detector
    from .detectors.result import AnomalyResult
    from .postprocess.survival import LesionProbe


log = logging.getLogger(__name__)

#: Slice copies with synthetic lesions the calibration has the detector score, and lesions on each (kept apart).
LESION_SLICES = 16
LESIONS_PER_SLICE = 4
#: In-plane pixel size assumed for models without a working grid (bundles from before grids existed).
FALLBACK_PIXEL_MM = 1.0


def calibrate_detector(detector: Detector, normals: np.ndarray, foreground: np.ndarray | None = None,
                       target_fpr: float = 0.01, mode: str = "2d", progress: ProgressCallback | None = None,
                       cancel: CancelToken | None = None, threshold_fpr: float | None = None,
                       result: AnomalyResult | None = None, lesion_check: bool = True,
                       pixel_mm: float | None = None) -> Calibration:
    """Score normal slices (on the model's working grid), fit the calibration and set ``detector.calibration``.

    Use normals the detector was not fitted on where possible: a model's own training slices score lower
    than new normals, which makes thresholds too permissive. ``threshold_fpr`` fixes SCR's unary rate
    instead of the default ladder (``postprocess.calibrate``). ``result``: the detector's output on these
    very normals when the caller has it already (it is not scored again).

    With ``lesion_check`` the detector also scores ``LESION_SLICES`` copies of the normals with synthetic
    5–10 mm lesions (``engine.synthesis.lesion``, seeded by the detector's seed), and SCR's point is one at
    which the cut keeps at least 90 % of the lesions its threshold finds (``engine.postprocess.survival``);
    the calibration reports that rate. ``pixel_mm``: the slices' in-plane pixel size, to size the lesions;
    default the model's working grid, else ``FALLBACK_PIXEL_MM`` (with a note).
    """
    from .detectors.base import fingerprint
    from .postprocess.calibrate import calibrate

    fg = foreground_mask(normals) if foreground is None else np.asarray(foreground, bool)
    extra: list[str] = []
    probe = None
    if lesion_check:
        if result is None:
            result = detector.score(normals, progress=stage(progress, 0.0, 0.35), cancel=cancel)
        check(cancel)
        probe, note = lesion_probe(detector, normals, fg, pixel_mm, progress=stage(progress, 0.35, 0.5),
                                   cancel=cancel)
        extra += [note] if note else []
    elif result is None:
        result = detector.score(normals, progress=stage(progress, 0.0, 0.5), cancel=cancel)
    cal = calibrate(result.heatmaps, fg, features=result.features, intensities=normals, target_fpr=target_fpr,
                    threshold_fpr=threshold_fpr, mode=mode, seed=detector.seed, progress=stage(progress, 0.5, 1.0),
                    cancel=cancel, lesions=probe)
    cal = dataclasses.replace(cal, n_slices=len(normals), fingerprint=fingerprint(normals),
                              created=datetime.now(UTC).isoformat(timespec="seconds"), notes=(*cal.notes, *extra))
    detector.calibration = cal
    log.info("calibrated on %d normal slices: plain threshold %.4g (%.2f%% of normal tissue), SCR threshold "
             "%.4g, lambda %.4g", len(normals), cal.threshold, 100 * cal.target_fpr, cal.scr.threshold, cal.scr.lam)
    detector.bundle_manifest = None  # no longer the saved version it was loaded as
    return cal


def lesion_probe(detector: Detector, normals: np.ndarray, foreground: np.ndarray | None = None,
                 pixel_mm: float | None = None, progress: ProgressCallback | None = None,
                 cancel: CancelToken | None = None) -> tuple[LesionProbe | None, str | None]:
    """Synthetic 5–10 mm lesions in copies of normal slices, scored by the detector: SCR's lesion check.

    Deterministic: the lesions are drawn from the detector's seed. Returns the probe (None: the slices are
    too small to hold the largest lesion twice over, and the check is skipped) and a note for the calibration
    (the pixel size was assumed, or the check skipped), or None.
    """
    from .pipeline import model_grid
    from .postprocess.survival import LesionProbe
    from .synthesis.lesion import DIAMETER_MM, lesion_slices

    note = None
    if pixel_mm is None:
        grid = model_grid(detector)
        if grid is not None:
            pixel_mm = grid.pixel_mm
        else:
            pixel_mm = FALLBACK_PIXEL_MM
            note = (f"the model records no working grid, so the synthetic lesions assume {FALLBACK_PIXEL_MM:g} mm "
                    "pixels")
    side_mm = min(np.shape(normals)[1:]) * float(pixel_mm)
    if side_mm < 2 * DIAMETER_MM[1]:
        return None, (f"the slices are {side_mm:.0f} mm across, too small for {DIAMETER_MM[1]:g} mm lesions: SCR's "
                      "lesion check was skipped and its point follows the false-positive rule alone")
    fg = foreground_mask(normals) if foreground is None else np.asarray(foreground, bool)
    rng = np.random.default_rng([int(detector.seed), 0x5C2])
    report(progress, 0.0, "inserting synthetic lesions")
    slices, fgs, labels, diameters = lesion_slices(normals, rng, fg, pixel_mm=float(pixel_mm),
                                                   per_slice=LESIONS_PER_SLICE, max_slices=LESION_SLICES)
    check(cancel)
    res = detector.score(slices, progress=stage(progress, 0.05, 1.0), cancel=cancel)
    return LesionProbe(maps=res.heatmaps, labels=labels, foreground=fgs, features=res.features, intensities=slices,
                       diameter_mm=diameters, diameter_range=DIAMETER_MM), note


@dataclass(frozen=True)
class FalsePositives:
    """Share of normal tissue flagged at the plain and the SCR operating point (None: SCR not calibrated)."""

    plain: float
    scr: float | None


def false_positives(detector: Detector, normals: np.ndarray, foreground: np.ndarray | None = None,
                    progress: ProgressCallback | None = None, cancel: CancelToken | None = None,
                    result: AnomalyResult | None = None) -> FalsePositives | None:
    """A calibrated model's false-positive area on normal slices, as its calibration stands (None: uncalibrated).

    ``result``: the detector's output on these normals when the caller has it already.
    """
    from .scoring import apply_calibration

    cal = detector.calibration
    if cal is None:
        return None
    fg = foreground_mask(normals) if foreground is None else np.asarray(foreground, bool)
    if result is None:
        result = detector.score(normals, progress=progress, cancel=cancel)
    own = detector.cuts_own_masks and result.own_masks is not None
    c = apply_calibration(cal, result, normals, fg, scr=not own)
    scr_mask = result.own_masks if own else c.scr_mask
    return FalsePositives(plain=_tissue_share(c.mask, fg),
                          scr=None if scr_mask is None else _tissue_share(scr_mask, fg))


#: A fine-tune whose model flags more than this many times its target on the slices it was fine-tuned on
#: gets a warning (its calibration slices do not represent the user's normals).
UNREPRESENTATIVE = 5.0


def _tissue_share(mask: np.ndarray, foreground: np.ndarray) -> float:
    """The share of the tissue a mask flags (0 where there is no tissue)."""
    return float(np.count_nonzero(mask & foreground)) / max(int(np.count_nonzero(foreground)), 1)


@dataclass
class Recalibration:
    """What a (fine-tune and) calibration did, with false positives on the calibration slices before and after."""

    detector: Detector
    calibration: Calibration
    before: FalsePositives | None
    after: FalsePositives
    n_fine_tune: int
    n_calibration: int
    #: The detector's own cut that fills the SCR slot (InvDetect ``scr_mode=paper``), else None: then ``after.scr``
    #: is that cut's false-positive area, and the engine's SCR point is calibrated but not what the user sees.
    own_scr: str | None = None
    #: After a fine-tune: the share of tissue the new model flags on the slices it was fine-tuned on (normal by
    #: the user's word, like the calibration slices; None: no fine-tune).
    tuned_fp: float | None = None

    @property
    def notes(self) -> tuple[str, ...]:
        return self.calibration.notes

    @property
    def warnings(self) -> list[str]:
        """What a user must not miss: SCR's point could not keep the synthetic lesions (a compromise)."""
        out = []
        target = self.calibration.target_fpr
        if self.tuned_fp is not None and self.tuned_fp > UNREPRESENTATIVE * target:
            # the marks are normal by the user's word: a model that flags them was calibrated on slices unlike
            # them. (It sees only the marks: 5 marks once gave a model flagging 23 of 25 slices, the fine-tuned
            # ones scoring low, and this did not fire; the viewer's slice curve shows that case.)
            out.append(f"the new model flags {self.tuned_fp:.1%} of the tissue of the {self.n_fine_tune} slices you "
                       f"marked normal and fine-tuned it on, against the {100 * target:.3g} % target met on the "
                       f"{self.n_calibration} it was calibrated on: those do not represent your normal slices (too "
                       "few, or unlike them). Mark more normal slices across the scan and fine-tune again, or roll "
                       "back")
        les = self.calibration.lesions
        if les is not None and les.met is False and les.rate is not None:
            out.append(f"SCR keeps only {les.rate:.0%} of the synthetic lesions its threshold finds (target "
                       f"{les.target:.0%}) at any point that meets the false-positive target: its mask may erase "
                       "small lesions; compare it with the plain mask")
        return out

    def describe(self) -> list[str]:
        """Plain words for a person: what changed, against the target, on which slices."""
        target = self.calibration.target_fpr
        what = (f"fine-tuned on {self.n_fine_tune} normal slice{'s' * (self.n_fine_tune != 1)} and calibrated on "
                f"{self.n_calibration} other{'s' * (self.n_calibration != 1)}" if self.n_fine_tune
                else f"calibrated on {self.n_calibration} normal slice{'s' * (self.n_calibration != 1)}")
        lines = [f"{what}; target: at most {100 * target:.3g} % of normal tissue flagged"]
        after = self.after
        lines.append(f"false-positive area on these normal slices is now {_vs_target(after.plain, target)}"
                     + ("" if self.before is None else
                        f"; it was {self.before.plain:.2%} ({_word(self.before.plain, target)} the target)"))
        if self.before is not None and _word(self.before.plain, target) != "at":
            # what the move means on every later scan: a radiologist reads "1.00 %, was 0.00 %" as worse
            lines.append("so the model is now more sensitive: it flags more tissue on every scan than before"
                         if self.before.plain < target else
                         "so the model is now stricter: it flags less tissue on every scan than before (fewer false "
                         "positives, and faint lesions may go unflagged)")
        was = "" if self.before is None or self.before.scr is None else f"; it was {self.before.scr:.2%}"
        if self.own_scr:
            lines.append(f"the SCR mask is the model's own cut ({self.own_scr}), which the calibration does not set: "
                         + ("it flags " + f"{after.scr:.2%} of these normal slices' tissue{was}"
                            if after.scr is not None else "it could not be measured"))
        elif after.scr is not None:
            lines.append(f"with SCR (λ {self.calibration.scr.lam:.3g}): {after.scr:.2%}{was}")
        les = self.calibration.lesions
        if les is not None and not self.own_scr:
            lo, hi = les.diameter_mm
            found = f"SCR's threshold finds {les.seen} of {les.inserted} synthetic {lo:g}–{hi:g} mm lesions"
            if les.rate is None:
                lines.append(f"{found}: SCR's lesion survival could not be measured")
            elif not self.calibration.scr.lam:
                lines.append(f"{found}; at λ 0 there is no cut to lose any: lesion survival {les.rate:.0%}")
            else:
                lines.append(f"{found}; its cut keeps {les.kept} of them: lesion survival {les.rate:.0%} "
                             f"(target {les.target:.0%}{'' if les.checked else '; too few lesions to decide'})")
        if self.before is None:
            lines.append("the model had no calibration before: its maps were raw scores and it had no mask")
        lines.append("measured on the calibration slices themselves, so the new value sits at the target by "
                     "construction: it shows the change, not an independent test")
        return lines


def _word(v: float, target: float) -> str:
    """Where an area sits against the target, in a word (within a tenth of it counts as at it)."""
    if abs(v - target) <= 0.1 * target:
        return "at"
    return "under" if v < target else "over"


def _vs_target(v: float, target: float) -> str:
    word = _word(v, target)
    if word == "at":
        return f"at the {100 * target:.3g} % target ({v:.2%})"
    return f"{v:.2%}, {word} the {100 * target:.3g} % target"


def recalibrate(detector: Detector, normals: np.ndarray, *, fine_tune: bool = False, target_fpr: float | None = None,
                mode: str | None = None, progress: ProgressCallback | None = None,
                cancel: CancelToken | None = None) -> Recalibration:
    """Optionally fine-tune a model on half the normal slices, then calibrate it on the other half (or all).

    ``normals`` are slices on the model's working grid (``pipeline.gather_normals`` or ``working_slices``).
    The detector is changed in place: pass a copy when the original must stay usable. Target and SCR mode
    default to the model's current calibration (else 1 % and 2-D).

    Raises:
        ConfigError: fine-tuning with fewer than two slices, or a target outside (0, 0.5).
        Cancelled: the cancel token was set (the detector may be half fine-tuned: discard it).
    """
    old = detector.calibration
    target = target_fpr if target_fpr is not None else (old.target_fpr if old is not None else 0.01)
    if not 0.0 < target < 0.5:
        raise ConfigError(f"the false-positive target must be between 0 and 0.5, got {target}")
    mode = mode or (old.scr.mode if old is not None else "2d")
    tune, calib = None, normals
    if fine_tune:
        if len(normals) < 2:
            raise ConfigError("fine-tuning needs at least two normal slices: half adapt the model, half calibrate it")
        tune, calib = normals[0::2], normals[1::2]
    fg = foreground_mask(calib)
    scored = None  # the model's raw scores of the calibration slices: for "before" and, unchanged, the calibration
    if old is not None or tune is None:
        report(progress, 0.0, "scoring the normal slices")
        scored = detector.score(calib, progress=stage(progress, 0.0, 0.15), cancel=cancel)
    before = false_positives(detector, calib, fg, result=scored)
    if tune is not None:
        check(cancel)
        report(progress, 0.15, "fine-tuning")
        detector.fine_tune(tune, progress=stage(progress, 0.15, 0.55), cancel=cancel)
        scored = None  # the model changed: its scores on the calibration slices are taken again
    check(cancel)
    own, begin = detector.cuts_own_masks, 0.55
    if own and scored is None:  # the own cut's false positives need the scores' masks: score once, for both
        report(progress, begin, "scoring the normal slices")
        scored = detector.score(calib, progress=stage(progress, begin, 0.7), cancel=cancel)
        begin = 0.7
    cal = calibrate_detector(detector, calib, fg, target_fpr=target, mode=mode, progress=stage(progress, begin, 1.0),
                             cancel=cancel, result=scored)
    # Measured by the calibration itself on these slices (plain exactly; SCR on its own pixel sample), or,
    # where the model cuts its own masks, those masks' share of the tissue.
    if own:
        assert scored is not None  # scored above when the model cuts its own masks
        scr_after = None if scored.own_masks is None else _tissue_share(scored.own_masks, fg)
        own_scr = scored.own_masks_method or "the detector's own cut"
    else:
        scr_after, own_scr = cal.fp_area_scr, None
    after = FalsePositives(plain=float(cal.fp_area if cal.fp_area is not None else 0.0), scr=scr_after)
    tuned = None
    if tune is not None:  # normal by the user's word too: a model that flags them was calibrated on too little
        check(cancel)
        fp = false_positives(detector, tune, cancel=cancel)
        tuned = None if fp is None else fp.plain
    report(progress, 1.0, "calibrated")
    return Recalibration(detector=detector, calibration=cal, before=before, after=after,
                         n_fine_tune=0 if tune is None else len(tune), n_calibration=len(calib), own_scr=own_scr,
                         tuned_fp=tuned)
