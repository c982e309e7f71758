"""What a model was trained on, and plain-words warnings when a scan about to be scored does not match it.

A detector scores whatever it is given: a CT slice fed to a model of brain MR gets a heatmap and masks
that look as confident as any other, which is worse than an error. So a bundle records its training
*domain* (modalities, body parts, and robust statistics of the normals' tissue intensities in the scans'
raw units, before ``engine.preprocess`` normalisation) and every scan is checked against it before
scoring. The checks only warn, they never refuse: a user may know better (a NIfTI without a modality),
and a bundle that records nothing gives no warning rather than a false one.

Tissue is what the pipeline calls foreground (``engine.preprocess.foreground``: Otsu on the normalised
scan, holes filled), so lungs and bowel gas inside the body count as tissue, as the model sees them.

The intensity rule, and why. Tissue percentiles of every sample, in raw units, over the whole scan
(``v = load_volume("sample:NAME")``; ``v.array[foreground_mask(normalise_array(v.array, v.modality))]``);
``_stats(tissue_sample(v))``, the subsample the checks use, agrees within 1 % of the width (ct_abdomen:
median -53 against -61, mni152: width 155 against 156). "as OT" is the same scan with its modality
unknown, as a NIfTI reader gives it (the tissue mask then comes from percentiles, not the CT window):

=============== ======= ====== ====== ======= ====== ==========
sample          p1      p50    p99    width   below  as OT
=============== ======= ====== ====== ======= ====== ==========
brain1 (MR)     34      566    1754   1720    0      same
mni152 (MR)     76      179    232    156     0      same
mr_brain_small  29      144    355    326     0      same
mr_small        292     687    1847   1555    0      same
mr_shoulder     53      385    1796   1743    0      same
breast1 (MR)    45      60     150    105     0      same
ct_small (CT)   -214    30     719    933     0.23   below 0.19
ct_abdomen (CT) -949    -61    379    1328    0.71   below 0.72
lung1 (CT)      -948    -97    519    1467    0.65   below 0.65
=============== ======= ====== ====== ======= ====== ==========

``width`` is p99 - p1; ``below`` is how far the tissue reaches below zero as a fraction of that width
(max(0, -p1) / width). What follows from the table:

* MR has no absolute scale: the tissue widths of MR samples span 105 to 1743, an 11x gap between brain1
  and mni152 alone, two T1 brains. The model never sees that scale (MR is normalised by its own
  percentiles), so on arbitrary units only a gap of more than ``ARBITRARY_SCALE_FACTOR`` (100x) beyond
  the training widths warns: it catches a mask or probability map opened by mistake, or a scan
  rescaled to 0-1 by some other tool, not a different scanner. A model of brain1 alone therefore does
  not warn on mni152 (11x), nor the reverse; brain1 + mni152 together warn on neither.
* MR magnitude images are never negative ("below" is 0 for every MR sample), while CT tissue always
  reaches far below zero (fat near -100 HU, lungs and gas near -1000, air at the body outline): "below"
  is 0.19 to 0.72 for the CT samples. So on arbitrary units a scan whose "below" exceeds the training
  scans' largest by ``BELOW_ZERO_MARGIN`` (0.1) warns, and so does a scan with nothing below zero
  (<= 0.02) against training scans that all reach below (by the same margin). This is scale-free, so it
  catches a NIfTI CT (modality unknown) scored with an MR model, the case the modality check misses.
* CT is in Hounsfield units, an absolute scale, so a model trained only on CT compares absolutely: the
  tissue median must lie within ``HU_MEDIAN_MARGIN`` (250 HU) of the training medians (the three CT
  samples, chest to abdomen, lie within 127 HU of each other, so a wrong rescale intercept of +400 warns)
  and the width within ``HU_SCALE_FACTOR`` (3x) of the training widths (933 to 1467 measured; a scan
  rescaled to 0-1 has a width near 1). "Nothing below zero" warns on HU too (a CT stored without its
  -1024 rescale, an MR read as OT); "further below zero" does not, since lungs and gas make it vary.

Checked on every pair: a domain of each sample above alone (plus brain1 + mni152 and ct_small +
ct_abdomen together) against every sample, each scan also as OT. No MR scan warns against an MR domain
and no CT scan against a CT domain (mni152 on a brain1 model included); every CT scan warns against
every MR domain and the reverse, by modality, or by intensity where either side is OT.

Only one intensity warning is given (the first rule that fires), and none when the modality check has
already warned, since both say the same thing. Statistics come from at most ``MAX_SLICES`` slices at
most ``MAX_SIDE`` pixels a side, so a 512x512x600 CT costs about as much as a 32-slice one (measured:
0.2 s and 27 MB peak allocation, tracemalloc, for a 630 MB synthetic CT; the checks on a sample take
1 to 140 ms).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from .errors import InvalidVolumeError, ModelError
from .io.describe import units as volume_units
from .volume import Volume

#: Version of ``TrainingDomain.to_dict()``.
DOMAIN_SCHEMA = 1
#: Where ``engine.pipeline.train`` stores ``TrainingDomain.to_dict()`` in a detector's ``training``.
TRAINING_KEY = "domain"
#: Modality codes that say nothing (NIfTI/NRRD readers and "other"): not recorded, never compared.
UNKNOWN_MODALITIES = frozenset({"", "OT"})

#: Statistics are measured on at most this many evenly spaced slices of a scan.
MAX_SLICES = 32
#: ... each strided down to at most this many pixels a side.
MAX_SIDE = 256
#: Fewer tissue voxels than this in the sample and a scan has no intensity statistics.
MIN_TISSUE = 200
#: Tissue voxels kept per scan when pooling over training scans (divided among the scans).
POOL_VOXELS = 1_000_000

#: Arbitrary units (MR, unknown): warn when the tissue width is this many times off the training widths.
ARBITRARY_SCALE_FACTOR = 100.0
#: Hounsfield units: the same, much tighter since the scale is absolute.
HU_SCALE_FACTOR = 3.0
#: Hounsfield units: warn when the tissue median is this far outside the training medians.
HU_MEDIAN_MARGIN = 250.0
#: How far beyond the training scans' "below zero" fraction a scan may reach before it warns.
BELOW_ZERO_MARGIN = 0.1
#: A "below zero" fraction at most this counts as "nothing below zero" (interpolation ringing, noise).
NONE_BELOW = 0.02

_CONSEQUENCE = "its scores and masks may not mean much"

#: Body-part terms (DICOM defined terms and common vendor spellings, letters only) grouped into regions,
#: so BRAIN vs HEAD or PANCREAS vs ABDOMEN do not warn. Unlisted terms are their own region.
_REGIONS: dict[str, tuple[str, ...]] = {
    "HEAD": ("HEAD", "BRAIN", "SKULL", "CEREBRUM", "CEREBELLUM", "ORBIT", "IAC", "SELLA", "HEADNECK",
             "NECKHEAD", "FACE", "SINUS", "SINUSES", "TEMPORALBONE", "PITUITARY"),
    "NECK": ("NECK", "CSPINE", "CERVICALSPINE", "THYROID", "LARYNX", "HEADNECK", "NECKHEAD"),
    "CHEST": ("CHEST", "THORAX", "LUNG", "LUNGS", "HEART", "CARDIAC", "MEDIASTINUM", "TSPINE", "THORACICSPINE",
              "CHESTABDOMEN", "CHESTABDOMENPELVIS", "CAP", "THORAXABDOMEN", "AORTA", "RIBS"),
    "BREAST": ("BREAST", "MAMMA"),
    "ABDOMEN": ("ABDOMEN", "ABD", "PANCREAS", "LIVER", "KIDNEY", "KIDNEYS", "SPLEEN", "STOMACH", "BOWEL",
                "GALLBLADDER", "ADRENAL", "LSPINE", "LUMBARSPINE", "ABDOMENPELVIS", "ABDPELVIS", "CHESTABDOMEN",
                "CHESTABDOMENPELVIS", "CAP", "THORAXABDOMEN", "AORTA"),
    "PELVIS": ("PELVIS", "PROSTATE", "BLADDER", "UTERUS", "OVARY", "RECTUM", "HIP", "SACRUM", "SSPINE",
               "ABDOMENPELVIS", "ABDPELVIS", "CHESTABDOMENPELVIS", "CAP"),
    "SPINE": ("SPINE", "WHOLESPINE", "CSPINE", "TSPINE", "LSPINE", "SSPINE", "CERVICALSPINE", "THORACICSPINE",
              "LUMBARSPINE"),
    "WHOLEBODY": ("WHOLEBODY", "WB"),
}


def _invert(regions: dict[str, tuple[str, ...]]) -> dict[str, frozenset[str]]:
    out: dict[str, frozenset[str]] = {}
    for region, terms in regions.items():
        for term in terms:
            out[term] = out.get(term, frozenset()) | {region}
    return out


_TERM_REGIONS = _invert(_REGIONS)


@dataclass(frozen=True)
class IntensityStats:
    """Tissue intensities of a model's training scans, in their raw units.

    ``p1``/``p50``/``p99`` are pooled over all training tissue (for messages); the ``*_range`` pairs are
    (lowest, highest) over the training scans, which is what the checks compare with. ``width`` is a
    scan's p99 - p1 and ``below_zero`` how far its tissue reaches below zero, as a fraction of its width.
    """

    units: str
    p1: float
    p50: float
    p99: float
    p1_range: tuple[float, float]
    p50_range: tuple[float, float]
    p99_range: tuple[float, float]
    width_range: tuple[float, float]
    below_zero_range: tuple[float, float]

    @property
    def absolute(self) -> bool:
        """Whether the units mean the same on every scanner (Hounsfield units), so levels can be compared."""
        return self.units == "HU"

    def to_dict(self) -> dict[str, Any]:
        return {"units": self.units, "p1": self.p1, "p50": self.p50, "p99": self.p99,
                **{name: list(getattr(self, name)) for name in _RANGES}}

    @classmethod
    def from_dict(cls, data: Any) -> IntensityStats:
        """Rebuild from ``to_dict()``; raises ModelError (via TrainingDomain.from_dict) on anything else."""
        if not isinstance(data, dict):
            raise TypeError(f"intensity must be an object, got {type(data).__name__}")
        units = data["units"]
        if not isinstance(units, str):
            raise TypeError("intensity units must be a string")
        ranges = {name: _pair(data[name], f"intensity {name}") for name in _RANGES}
        if ranges["width_range"][0] < 0:
            raise ValueError("intensity width_range must not be negative")
        return cls(units=units, p1=_finite(data["p1"], "intensity p1"), p50=_finite(data["p50"], "intensity p50"),
                   p99=_finite(data["p99"], "intensity p99"), **ranges)


_RANGES = ("p1_range", "p50_range", "p99_range", "width_range", "below_zero_range")


@dataclass(frozen=True)
class TrainingDomain:
    """What a model was trained on: modalities, body parts, tissue intensities and how many scans.

    Empty ``modalities``/``body_parts`` mean "not known", not "none": those checks are then skipped, as
    is the intensity check when ``intensity`` is None (bundles written before it existed).
    """

    modalities: tuple[str, ...] = ()
    body_parts: tuple[str, ...] = ()
    n_scans: int = 0
    intensity: IntensityStats | None = field(default=None)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data for the bundle (``training["domain"]``), with its schema version."""
        return {"schema_version": DOMAIN_SCHEMA, "modalities": list(self.modalities),
                "body_parts": list(self.body_parts), "n_scans": self.n_scans,
                "intensity": None if self.intensity is None else self.intensity.to_dict()}

    @classmethod
    def from_dict(cls, data: Any) -> TrainingDomain:
        """Rebuild from ``to_dict()``.

        Raises:
            ModelError: not an object, an unknown schema version, wrong types or non-finite numbers.
        """
        if not isinstance(data, dict):
            raise ModelError(f"the model's training-domain record must be a JSON object, got {type(data).__name__}")
        schema = data.get("schema_version")
        if schema != DOMAIN_SCHEMA or isinstance(schema, bool):
            raise ModelError(f"the model's training-domain record has schema version {schema!r}; this AnomaLens "
                             f"reads {DOMAIN_SCHEMA}: update AnomaLens or retrain the model")
        try:
            n = data["n_scans"]
            if not isinstance(n, int) or isinstance(n, bool) or n < 0:
                raise TypeError(f"n_scans must be a non-negative integer, got {n!r}")
            intensity = data.get("intensity")
            return cls(modalities=_codes(data["modalities"], "modalities"),
                       body_parts=_codes(data["body_parts"], "body_parts"), n_scans=n,
                       intensity=None if intensity is None else IntensityStats.from_dict(intensity))
        except (KeyError, TypeError, ValueError) as exc:
            detail = f"missing {exc}" if isinstance(exc, KeyError) else str(exc)
            raise ModelError(f"the model's training-domain record is malformed ({detail}); retrain the model") \
                from exc

    @classmethod
    def from_training(cls, training: Mapping[str, Any] | None) -> TrainingDomain | None:
        """The domain a detector's ``training`` dict records, or None when it records nothing usable.

        Bundles with a ``domain`` record give it in full. Older bundles only have ``modality`` (a string,
        from ``engine.pipeline.train``): they give a domain of that modality without intensity statistics,
        so the modality check still works. Neither (or only an unknown modality) gives None: no warning
        rather than a false one.

        Raises:
            ModelError: a ``domain`` record is present but malformed.
        """
        if not training:
            return None
        if training.get(TRAINING_KEY) is not None:
            return cls.from_dict(training[TRAINING_KEY])
        legacy = training.get("modality", training.get("modalities"))
        names = [legacy] if isinstance(legacy, str) else legacy if isinstance(legacy, list | tuple) else []
        modalities = _known_modalities(str(n) for n in names if isinstance(n, str))
        return cls(modalities=modalities) if modalities else None


class _ScanStats(NamedTuple):
    p1: float
    p50: float
    p99: float
    width: float
    below_zero: float


def describe_scans(volumes: Sequence[Volume], foregrounds: Sequence[np.ndarray] | None = None) -> TrainingDomain:
    """The domain of a set of training scans, to store in the model bundle.

    Args:
        volumes: The normal scans as read (raw units, any modality).
        foregrounds: Their tissue masks on the volumes' grids (``PreparedScan.foreground``) when already
            computed; else each is computed on a subsample, as the scoring-time check does.

    Raises:
        InvalidVolumeError: no volumes, or a mask whose shape differs from its volume's.
    """
    if not volumes:
        raise InvalidVolumeError("no scans to describe")
    if foregrounds is not None and len(foregrounds) != len(volumes):
        raise InvalidVolumeError(f"{len(foregrounds)} tissue masks given for {len(volumes)} scans")
    samples: list[np.ndarray] = []
    stats: list[_ScanStats] = []
    all_hu = True
    for i, volume in enumerate(volumes):
        values = tissue_sample(volume, None if foregrounds is None else foregrounds[i])
        if values is None:
            continue
        samples.append(values)
        stats.append(_stats(values))
        all_hu = all_hu and volume_units(volume) == "HU"
    intensity = None
    if stats:
        per_scan = max(1000, POOL_VOXELS // len(samples))
        pooled = np.concatenate([s[:: max(1, s.size // per_scan)] for s in samples])
        p1, p50, p99 = (float(v) for v in np.percentile(pooled, (1, 50, 99)))
        cols = np.asarray(stats, dtype=np.float64)
        intensity = IntensityStats(
            units="HU" if all_hu else "arbitrary", p1=p1, p50=p50, p99=p99,
            **{name: (float(cols[:, j].min()), float(cols[:, j].max())) for j, name in enumerate(_RANGES)})
    parts = sorted({p for v in volumes if (p := _body_part(v))})
    return TrainingDomain(modalities=_known_modalities(v.modality for v in volumes), body_parts=tuple(parts),
                          n_scans=len(volumes), intensity=intensity)


def domain_warnings(domain: TrainingDomain | None, volume: Volume,
                    foreground: np.ndarray | None = None) -> list[str]:
    """Plain-words warnings for a scan about to be scored with a model of ``domain`` (empty: it fits).

    Messages carry technical values only (modality codes, body-part terms, intensity percentiles),
    never paths or header text that could identify a patient.

    Args:
        domain: The model's training domain (``TrainingDomain.from_training``); None gives no warnings.
        volume: The scan, in raw units, as read.
        foreground: Its tissue mask when already computed; else one is computed on a subsample.
    """
    if domain is None:
        return []
    out: list[str] = []
    modality = (volume.modality or "").strip().upper()
    modality_warned = False
    if domain.modalities and modality not in UNKNOWN_MODALITIES and modality not in domain.modalities:
        out.append(f"this model was trained on {'/'.join(domain.modalities)} scans but this scan is {modality}: "
                   f"{_CONSEQUENCE}")
        modality_warned = True
    part = _body_part(volume)
    if domain.body_parts and part and not _regions(part) & set().union(*(_regions(p) for p in domain.body_parts)):
        out.append(f"this model was trained on {'/'.join(domain.body_parts)} scans but this scan is {part}: "
                   f"{_CONSEQUENCE}")
    if domain.intensity is not None and not modality_warned:
        values = tissue_sample(volume, foreground)
        if values is not None:
            message = _intensity_warning(domain.intensity, _stats(values))
            if message:
                out.append(message)
    return out


def tissue_sample(volume: Volume, foreground: np.ndarray | None = None) -> np.ndarray | None:
    """Raw intensities of a subsample of a scan's tissue (float32, 1-D), or None when it has too little.

    At most ``MAX_SLICES`` evenly spaced slices, strided to at most ``MAX_SIDE`` pixels a side: percentiles
    of a few hundred thousand voxels are as good as of all of them, and the tissue mask (when not given)
    is computed on that subsample only, so a 600-slice CT costs milliseconds and megabytes.
    """
    from .preprocess.foreground import foreground_mask
    from .preprocess.intensity import normalise_array

    arr = volume.array
    if foreground is not None and tuple(np.shape(foreground)) != tuple(arr.shape):
        raise InvalidVolumeError(f"tissue mask shape {np.shape(foreground)} does not match the scan {arr.shape}")
    n, h, w = arr.shape
    idx = np.unique(np.linspace(0, n - 1, min(n, MAX_SLICES)).round().astype(int))
    step = max(1, math.ceil(max(h, w) / MAX_SIDE))
    sub = arr[idx, ::step, ::step]
    finite = np.isfinite(sub)
    if not finite.any():
        return None
    if foreground is None:
        clean = sub if finite.all() else np.where(finite, sub, np.float32(sub[finite].min()))
        mask = foreground_mask(normalise_array(clean, volume.modality or "OT"))
    else:
        mask = np.asarray(foreground, dtype=bool)[idx, ::step, ::step]
    values = sub[mask & finite]
    return values if values.size >= MIN_TISSUE else None


def _stats(values: np.ndarray) -> _ScanStats:
    p1, p50, p99 = (float(v) for v in np.percentile(values, (1, 50, 99)))
    width = p99 - p1
    below = (max(0.0, -p1) / width) if width > 0 else (1.0 if p1 < 0 else 0.0)
    return _ScanStats(p1, p50, p99, width, below)


def _intensity_warning(train: IntensityStats, scan: _ScanStats) -> str | None:
    """The first intensity rule the scan breaks (module docstring), as a sentence; None if none."""
    seen = f"this scan's tissue intensities (1st percentile {_num(scan.p1)}, median {_num(scan.p50)}, " \
           f"99th percentile {_num(scan.p99)})"

    def trained(extra: str = "") -> str:
        return (f"the model's training scans (1st percentile {_span(train.p1_range)}, median {_span(train.p50_range)}"
                f", 99th percentile {_span(train.p99_range)}{extra})")

    lo, hi = train.below_zero_range
    # Relative to zero: scale-free, so it holds on arbitrary units too. On HU only "nothing below zero"
    # counts (a CT body always reaches below zero); how far below varies with lungs and gas.
    if not train.absolute and scan.below_zero > hi + BELOW_ZERO_MARGIN:
        if hi <= NONE_BELOW:
            return f"{seen} reach far below zero, like CT's Hounsfield units, unlike {trained()}: {_CONSEQUENCE}"
        return f"{seen} reach much further below zero than {trained()}: {_CONSEQUENCE}"
    if scan.below_zero <= NONE_BELOW and scan.below_zero < lo - BELOW_ZERO_MARGIN:
        return f"{seen} have nothing below zero, unlike {trained()}, whose tissue reaches far below it: {_CONSEQUENCE}"
    p50_lo, p50_hi = train.p50_range
    if train.absolute and not p50_lo - HU_MEDIAN_MARGIN <= scan.p50 <= p50_hi + HU_MEDIAN_MARGIN:
        return f"{seen} lie far outside {trained(', in Hounsfield units')}: {_CONSEQUENCE}"
    factor = HU_SCALE_FACTOR if train.absolute else ARBITRARY_SCALE_FACTOR
    lo, hi = train.width_range
    if hi > 0 and not lo / factor <= scan.width <= hi * factor:  # hi == 0: flat training tissue, no scale
        return (f"{seen} span {_num(scan.width)} from the 1st to the 99th percentile, over {factor:g} times "
                f"{'less' if scan.width < lo / factor else 'more'} than {trained(', span ' + _span(train.width_range))}"
                f": {_CONSEQUENCE}")
    return None


def _num(v: float) -> str:
    """A value for a message: thousands separators for large ones, three significant digits for small."""
    if not math.isfinite(v):
        return str(v)
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}"


def _span(pair: tuple[float, float]) -> str:
    lo, hi = pair
    return _num(lo) if _num(lo) == _num(hi) else f"{_num(lo)} to {_num(hi)}"


def _known_modalities(codes: Any) -> tuple[str, ...]:
    return tuple(sorted({c.strip().upper() for c in codes if isinstance(c, str)} - UNKNOWN_MODALITIES))


def _body_part(volume: Volume) -> str:
    part = volume.metadata.get("BodyPartExamined")
    return part.strip().upper() if isinstance(part, str) else ""


def _regions(term: str) -> frozenset[str]:
    key = re.sub(r"[^A-Z]", "", term.upper())
    return _TERM_REGIONS.get(key, frozenset({key or term}))


def _codes(value: Any, name: str) -> tuple[str, ...]:
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise TypeError(f"{name} must be a list of strings")
    return tuple(value)


def _finite(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def _pair(value: Any, name: str) -> tuple[float, float]:
    if not isinstance(value, list | tuple) or len(value) != 2:
        raise TypeError(f"{name} must be a pair of numbers")
    lo, hi = _finite(value[0], name), _finite(value[1], name)
    if lo > hi:
        raise ValueError(f"{name} must be (low, high), got ({lo}, {hi})")
    return lo, hi
