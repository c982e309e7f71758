"""A model's calibration as one typed object: what turns its raw scores into a map and masks a site can trust.

Every quantity has one name, read by attribute: the normaliser (raw score → normal-quantile units), the
plain operating point (``threshold``), SCR's operating point (``scr``: its own unary threshold, λ, τ,
temperature and graph mode) and how they were measured on the site's normals. Bundles store it as
``to_dict()`` under a schema version; bundles written before the type existed (string keys, no version)
migrate on load through ``from_dict``, and anything malformed is refused there with one clear line
rather than read silently and failing later.

Calibration needs no anomalous example: every number here comes from normal slices only
(``engine.postprocess.calibrate``).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import ModelError
from .postprocess.normalise import ScoreNormaliser

#: Version of ``Calibration.to_dict()``; 1 was the string-keyed dict bundles held before (no version key).
CALIBRATION_SCHEMA = 2
SCR_MODES = ("2d", "3d")
#: SCR's temperature in normal-quantile units when a calibration does not say (engine.postprocess.scr).
DEFAULT_TEMPERATURE = 0.05


@dataclass(frozen=True)
class ScrSettings:
    """SCR's operating point: the unary threshold (normal-quantile units), λ, τ, temperature and graph mode.

    λ = 0 (or None: SCR could not be calibrated, no descriptors) is plain thresholding at ``threshold``.
    """

    threshold: float
    lam: float | None = None
    tau: float | None = None
    temperature: float = DEFAULT_TEMPERATURE
    mode: str = "2d"

    def __post_init__(self) -> None:
        _finite("SCR threshold", self.threshold)
        if self.lam is not None and (not math.isfinite(self.lam) or self.lam < 0):
            raise ModelError(f"the calibration's λ must be a finite number ≥ 0, got {self.lam!r}")
        if self.tau is not None and (not math.isfinite(self.tau) or self.tau <= 0):
            raise ModelError(f"the calibration's τ must be a finite number > 0, got {self.tau!r}")
        if not math.isfinite(self.temperature) or self.temperature <= 0:
            raise ModelError(f"the calibration's SCR temperature must be > 0, got {self.temperature!r}")
        if self.mode not in SCR_MODES:
            raise ModelError(f"the calibration's SCR mode must be one of {', '.join(SCR_MODES)}, got {self.mode!r}")

    @property
    def usable(self) -> bool:
        """Whether an SCR mask can be cut at this point (λ and τ known)."""
        return self.lam is not None and self.tau is not None

    def replace(self, **changes: Any) -> ScrSettings:
        """A copy with some values changed (the viewer's sliders), checked like the original."""
        return dataclasses.replace(self, **changes)

    def key(self) -> tuple[float, float, float, str]:
        """A hashable form, to tell whether a mask was cut at these values."""
        return (round(self.threshold, 9), round(self.lam or 0.0, 9), round(self.tau or 0.0, 9), self.mode)


@dataclass(frozen=True)
class LesionSurvival:
    """How SCR's operating point treated synthetic lesions put into copies of the calibration normals.

    ``engine.postprocess.survival`` defines the words: a lesion is *seen* when SCR's unary threshold alone
    (λ = 0, looser than or equal to the plain threshold) finds a fair share of it, and *kept* when the cut at λ
    still covers at least half of what that threshold found.

    Attributes:
        inserted: synthetic lesions inserted (in-plane diameters ``diameter_mm``).
        seen: of those, found by SCR's unary threshold: the lesions that test the cut.
        kept: of the seen ones, kept by the cut at the calibrated λ.
        target: the share of seen lesions SCR must keep.
        checked: whether enough lesions were seen for the rate to mean anything; False: it is reported only
            (the calibration takes no point looser than the plain one on such evidence,
            ``engine.postprocess.calibrate``).
        diameter_mm: the range the lesions' diameters were drawn from.
    """

    inserted: int
    seen: int
    kept: int
    target: float = 0.9
    checked: bool = True
    diameter_mm: tuple[float, float] = (5.0, 10.0)

    def __post_init__(self) -> None:
        if not (0 <= self.kept <= self.seen <= self.inserted):
            raise ModelError(f"the calibration's lesion counts must satisfy 0 ≤ kept ≤ seen ≤ inserted, got "
                             f"{self.kept}, {self.seen}, {self.inserted}")
        if not 0.0 < self.target <= 1.0:
            raise ModelError(f"the calibration's lesion survival target must be in (0, 1], got {self.target!r}")
        lo, hi = self.diameter_mm
        _finite("lesion diameter", lo)
        _finite("lesion diameter", hi)

    @property
    def rate(self) -> float | None:
        """Share of the seen lesions SCR keeps (None when none was seen)."""
        return None if self.seen == 0 else self.kept / self.seen

    @property
    def met(self) -> bool | None:
        """Whether SCR keeps ``target`` of the seen lesions; None when too few were seen to tell."""
        rate = self.rate
        return None if not self.checked or rate is None else rate >= self.target

    def to_dict(self) -> dict[str, Any]:
        return {"inserted": self.inserted, "seen": self.seen, "kept": self.kept, "rate": self.rate,
                "target": self.target, "checked": self.checked, "met": self.met,
                "diameter_mm": [float(self.diameter_mm[0]), float(self.diameter_mm[1])]}

    @classmethod
    def from_dict(cls, data: Any) -> LesionSurvival | None:
        """Rebuild from ``to_dict()``; None when the calibration did not check lesions (older bundles)."""
        if data is None:
            return None
        if not isinstance(data, dict):
            raise TypeError("lesion_survival must be an object")
        dia = data.get("diameter_mm", [5.0, 10.0])
        if not isinstance(dia, list | tuple) or len(dia) != 2:
            raise TypeError("lesion_survival.diameter_mm must be two numbers")
        checked = data.get("checked", True)
        if not isinstance(checked, bool):
            raise TypeError("lesion_survival.checked must be true or false")
        return cls(inserted=_int(data["inserted"]), seen=_int(data["seen"]), kept=_int(data["kept"]),
                   target=_num(data.get("target", 0.9)), checked=checked,
                   diameter_mm=(_num(dia[0]), _num(dia[1])))


@dataclass(frozen=True)
class Calibration:
    """How a model's raw scores become normal-quantile units and masks, set on normal slices only.

    Attributes:
        normaliser: raw score → its quantile among normal tissue (> 1 beyond every normal pixel).
        threshold: the plain operating point, in normal-quantile units (``target_fpr`` of normal tissue above).
        scr: SCR's operating point (its own, looser unary threshold tightened by λ to the same budget).
        target_fpr: the false-positive area on normal tissue both operating points were set to.
        scr_threshold_fpr: the false-positive rate SCR's unary threshold was set at (the ladder's stop).
        fp_area: plain false-positive area on the calibration normals.
        fp_area_unary: false-positive area of SCR's unary threshold alone (λ = 0) on them.
        fp_area_scr: SCR's false-positive area at λ on them (None: SCR not calibrated).
        n_pixels: normal tissue pixels it was measured on.
        n_slices: normal slices it was set on (0 when unknown, bundles before it was recorded).
        fingerprint: the calibration slices' fingerprint, to notice evaluating on them.
        created: when it was made (ISO 8601, UTC; empty when unknown).
        notes: what the calibration decided and why (the SCR ladder's steps), for the user.
        lesions: how SCR's point treated synthetic 5–10 mm lesions in copies of the calibration normals
            (None: not checked, e.g. bundles calibrated before the check existed). Its ``met`` is False when
            SCR's point meets the false-positive rule but not the survival target (a unary rate given by the
            caller, or a target threshold that needs λ > 0): the best compromise, and a note says so.
    """

    normaliser: ScoreNormaliser = field(repr=False, compare=False)
    threshold: float
    scr: ScrSettings
    target_fpr: float = 0.01
    scr_threshold_fpr: float = 0.05
    fp_area: float | None = None
    fp_area_unary: float | None = None
    fp_area_scr: float | None = None
    n_pixels: int = 0
    n_slices: int = 0
    fingerprint: str | None = None
    created: str = ""
    notes: tuple[str, ...] = ()
    lesions: LesionSurvival | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.normaliser, ScoreNormaliser) or not self.normaliser.fitted:
            raise ModelError("a calibration needs a fitted score normaliser")
        _finite("calibration threshold", self.threshold)
        for name in ("target_fpr", "scr_threshold_fpr"):
            v = getattr(self, name)
            if not (isinstance(v, int | float) and 0.0 < v < 1.0):
                raise ModelError(f"the calibration's {name} must be a fraction in (0, 1), got {v!r}")
        object.__setattr__(self, "notes", tuple(str(n) for n in self.notes))

    # -- use ----------------------------------------------------------------------------------------
    def normalise(self, maps: np.ndarray) -> np.ndarray:
        """Raw maps in normal-quantile units (float32; 1.0 is the top of the normal range)."""
        return self.normaliser.transform(maps)

    def with_notes(self, *notes: str) -> Calibration:
        return dataclasses.replace(self, notes=(*self.notes, *notes))

    # -- persistence --------------------------------------------------------------------------------
    @property
    def lesion_survival(self) -> float | None:
        """Share of seen synthetic lesions SCR keeps at its point (None: not checked)."""
        return None if self.lesions is None else self.lesions.rate

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data for ``bundle.json`` (``calibration``), with its schema version.

        ``lesion_survival`` is written only when it was measured, so a bundle calibrated before the check
        existed keeps exactly its dict (and its content fingerprint) after a load.
        """
        out = {
            "schema_version": CALIBRATION_SCHEMA,
            "normaliser": self.normaliser.to_dict(),
            "threshold": self.threshold,
            "scr": {"threshold": self.scr.threshold, "lambda": self.scr.lam, "tau": self.scr.tau,
                    "temperature": self.scr.temperature, "mode": self.scr.mode},
            "target_fpr": self.target_fpr,
            "scr_threshold_fpr": self.scr_threshold_fpr,
            "fp_area": self.fp_area,
            "fp_area_unary": self.fp_area_unary,
            "fp_area_scr": self.fp_area_scr,
            "n_pixels": self.n_pixels,
            "n_slices": self.n_slices,
            "fingerprint": self.fingerprint,
            "created": self.created,
            "notes": list(self.notes),
        }
        if self.lesions is not None:
            out["lesion_survival"] = self.lesions.to_dict()
        return out

    def summary(self) -> dict[str, Any]:
        """The operating point without the normaliser's knots: for ``--json`` output and reports."""
        out = self.to_dict()
        del out["normaliser"]
        return out

    @classmethod
    def from_dict(cls, data: Any) -> Calibration | None:
        """Rebuild from ``to_dict()`` or from a bundle written before it (schema 1); None for "not calibrated".

        Raises:
            ModelError: the block is malformed (wrong types, non-finite numbers, an unknown schema).
        """
        if data is None or data == {}:
            return None
        if not isinstance(data, dict):
            raise ModelError(f"the model's calibration must be a JSON object, got {type(data).__name__}")
        schema = data.get("schema_version", 1)
        if schema == 1:
            data = _migrate_v1(data)
        elif schema != CALIBRATION_SCHEMA:
            raise ModelError(f"the model's calibration has schema version {schema!r}; this AnomaLens reads "
                             f"1 and {CALIBRATION_SCHEMA}: update AnomaLens or recalibrate the model")
        try:
            normaliser = ScoreNormaliser.from_dict(data["normaliser"])
            scr_d = data["scr"]
            if not isinstance(scr_d, dict):
                raise TypeError("scr must be an object")
            scr = ScrSettings(threshold=_num(scr_d["threshold"]), lam=_opt_num(scr_d.get("lambda")),
                              tau=_opt_num(scr_d.get("tau")),
                              temperature=_num(scr_d.get("temperature", DEFAULT_TEMPERATURE)),
                              mode=str(scr_d.get("mode", "2d")))
            notes = data.get("notes") or []
            if not isinstance(notes, list):
                raise TypeError("notes must be a list")
            return cls(normaliser=normaliser, threshold=_num(data["threshold"]), scr=scr,
                       target_fpr=_num(data.get("target_fpr", 0.01)),
                       scr_threshold_fpr=_num(data.get("scr_threshold_fpr", 0.05)),
                       fp_area=_opt_num(data.get("fp_area")), fp_area_unary=_opt_num(data.get("fp_area_unary")),
                       fp_area_scr=_opt_num(data.get("fp_area_scr")), n_pixels=_int(data.get("n_pixels", 0)),
                       n_slices=_int(data.get("n_slices", 0)), fingerprint=_opt_str(data.get("fingerprint")),
                       created=str(data.get("created") or ""), notes=tuple(str(n) for n in notes),
                       lesions=LesionSurvival.from_dict(data.get("lesion_survival")))
        except ModelError:
            raise
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"the model's calibration is malformed ({exc}); recalibrate the model") from exc
        except Exception as exc:  # ScoreNormaliser.from_dict raises ConfigError for damaged knots
            raise ModelError(f"the model's calibration is malformed: {exc}") from exc


def _migrate_v1(data: dict[str, Any]) -> dict[str, Any]:
    """The string-keyed dict of bundles before schema 2, in today's names.

    Those bundles named the plain operating point ``threshold`` and SCR's unary one ``scr_threshold``
    (``calibrate_detector`` renamed them from ``postprocess.calibrate``'s ``plain_threshold`` / ``threshold``);
    a dict straight from that function (``plain_threshold`` present) is read with its own names.
    """
    if "plain_threshold" in data:  # the raw output of postprocess.calibrate, never renamed
        plain, unary = data["plain_threshold"], data.get("threshold")
        fp_plain, fp_unary = data.get("fp_area_plain"), data.get("fp_area")
    else:
        plain, unary = data.get("threshold"), data.get("scr_threshold", data.get("threshold"))
        fp_plain, fp_unary = data.get("fp_area"), data.get("fp_area_unary")
    if "normaliser" not in data or plain is None:
        raise ModelError("the model's calibration lacks its normaliser or threshold; recalibrate the model")
    return {
        "normaliser": data["normaliser"], "threshold": plain,
        "scr": {"threshold": unary, "lambda": data.get("lambda"), "tau": data.get("tau"),
                "temperature": data.get("temperature", DEFAULT_TEMPERATURE), "mode": data.get("mode", "2d")},
        "target_fpr": data.get("target_fpr", 0.01), "scr_threshold_fpr": data.get("threshold_fpr", 0.05),
        "fp_area": fp_plain, "fp_area_unary": fp_unary, "fp_area_scr": data.get("fp_area_scr"),
        "n_pixels": data.get("n_pixels", 0), "n_slices": data.get("n_slices", 0),
        "fingerprint": data.get("fingerprint"), "created": data.get("created", ""), "notes": data.get("notes") or [],
    }


def _finite(what: str, v: Any) -> None:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise ModelError(f"the {what} must be a finite number, got {v!r}")


def _num(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise TypeError(f"expected a number, got {v!r}")
    if not math.isfinite(v):
        raise ValueError(f"expected a finite number, got {v!r}")
    return float(v)


def _opt_num(v: Any) -> float | None:
    return None if v is None else _num(v)


def _int(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise TypeError(f"expected a count ≥ 0, got {v!r}")
    return v


def _opt_str(v: Any) -> str | None:
    if v is None:
        return None
    if not isinstance(v, str):
        raise TypeError(f"expected text, got {v!r}")
    return v
