"""``anomalens eval --report DIR``: metrics as JSON/CSV/Markdown, pixel ROC and PR plots, and overlays.

Plots are drawn with Pillow (simple line plots with axes, ticks and labels), because matplotlib is a
large dependency the product does not otherwise need. Curves are computed with scikit-learn on a
seeded subsample of foreground pixels, re-weighted so they stay unbiased (as the metrics are).
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ConfigError
from .fileio import atomic_dir, atomic_write_bytes, atomic_write_text
from .metrics import METRIC_KEYS

#: Pixels behind the ROC and PR plots (drawing needs far fewer than the metrics).
CURVE_PIXELS = 200_000
#: Points of a drawn curve (more add nothing at plot resolution).
DRAW_POINTS = 2_000

LABELS = {
    "image_auroc": "image AUROC",
    "image_ap": "image AP",
    "pixel_auroc": "pixel AUROC",
    "pixel_ap": "pixel AP",
    "best_dice": "best Dice (threshold-tuned on the test data (upper bound))",
    "dice": "Dice at the calibrated threshold",
    "precision": "precision at the calibrated threshold",
    "dice_scr": "Dice with SCR (calibrated)",
    "precision_scr": "precision with SCR (calibrated)",
    "fpr95": "FPR at 95 % TPR (pixel)",
}

#: Colour stops (position, RGB) of the heatmap colour map: black-purple-red-orange-yellow, like "inferno".
_CMAP_STOPS = (
    (0.0, (0, 0, 4)),
    (0.25, (87, 16, 110)),
    (0.5, (188, 55, 84)),
    (0.75, (249, 142, 9)),
    (1.0, (252, 255, 164)),
)
GT_COLOUR = (0, 230, 0)
PRED_COLOUR = (0, 200, 255)


def jsonable(value: Any) -> Any:
    """Plain JSON values: NumPy scalars to Python, NaN/inf to None (a NaN is never a result)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items() if not str(k).startswith("_")}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, (np.integer, int)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        v = float(value)
        return v if math.isfinite(v) else None
    if value is None or isinstance(value, str):
        return value
    return str(value)


def format_value(value: Any) -> str:
    """A metric for people: three decimals, "–" for None."""
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def format_ci(ci: Any) -> str:
    if not ci:
        return "–"
    return f"[{ci[0]:.3f}, {ci[1]:.3f}]"


# -- text outputs ----------------------------------------------------------------------------------

def metrics_csv(metrics: dict[str, Any]) -> str:
    """``key,value`` rows: scalars as they are, intervals as ``low;high``, notes joined by `` | ``."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["key", "value"])
    for key, value in jsonable(metrics).items():
        if isinstance(value, list) and key == "notes":
            value = " | ".join(str(v) for v in value)
        elif isinstance(value, list):
            value = ";".join("" if v is None else f"{v:.6g}" if isinstance(v, float) else str(v) for v in value)
        elif isinstance(value, dict):
            value = json.dumps(value, sort_keys=True)
        elif value is None:
            value = ""
        elif isinstance(value, float):
            value = f"{value:.6g}"
        w.writerow([key, value])
    return buf.getvalue()


def metrics_markdown(metrics: dict[str, Any], title: str = "AnomaLens evaluation",
                     overlays: Sequence[tuple[str, str]] = ()) -> str:
    """A Markdown report: the metric table with its intervals, counts, notes and the overlay list."""
    m = jsonable(metrics)
    conf = m.get("confidence") or 0.95
    lines = [f"# {title}", ""]
    for key in ("model", "detector", "data"):
        if m.get(key):
            lines.append(f"- **{key}**: {m[key]}")
    lines += [f"- **slices**: {m.get('n_slices')} ({m.get('n_anomalous_slices')} with a lesion)",
              f"- **seconds per slice**: {format_value(m.get('seconds_per_slice'))}", "",
              f"| metric | value | {conf:.0%} CI |", "|---|---:|---|"]
    for key in METRIC_KEYS:
        lines.append(f"| {LABELS.get(key, key)} | {format_value(m.get(key))} | {format_ci(m.get(f'{key}_ci'))} |")
    notes = m.get("notes") or []
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    if overlays:
        lines += ["", "## Overlays", "", "Grey: the slice; colours: the anomaly map; green: ground truth; "
                  "cyan: predicted mask.", ""]
        lines += [f"- `{f}`: {why}" for f, why in overlays]
    lines += ["", "![pixel ROC](roc.png) ![pixel PR](pr.png)", ""]
    return "\n".join(lines)


# -- plots -----------------------------------------------------------------------------------------

def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def line_plot(x: np.ndarray | None, y: np.ndarray | None, title: str, xlabel: str, ylabel: str,
              reference: tuple[tuple[float, float], tuple[float, float]] | None = None,
              message: str | None = None, size: tuple[int, int] = (560, 480)):
    """A line plot on [0, 1]² as a Pillow image: axes, ticks every 0.2, labels, title, one curve.

    ``reference`` is a dashed grey line (the chance diagonal, the prevalence); ``message`` is written in
    the plot area instead of a curve (an undefined curve).
    """
    from PIL import Image, ImageDraw

    w, h = size
    left, right, top, bottom = 70, 20, 46, 58
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    f_small, f_title = _font(13), _font(15)
    pw, ph = w - left - right, h - top - bottom

    def px(u: float, v: float) -> tuple[float, float]:
        return left + u * pw, top + (1.0 - v) * ph

    for t in np.linspace(0, 1, 6):
        gx, gy = px(t, t)
        d.line([(gx, top), (gx, top + ph)], fill=(232, 232, 232))
        d.line([(left, gy), (left + pw, gy)], fill=(232, 232, 232))
        d.line([(gx, top + ph), (gx, top + ph + 5)], fill="black")
        d.line([(left - 5, gy), (left, gy)], fill="black")
        label = f"{t:.1f}"
        tw = d.textlength(label, font=f_small)
        d.text((gx - tw / 2, top + ph + 8), label, fill="black", font=f_small)
        d.text((left - 9 - tw, gy - 7), label, fill="black", font=f_small)
    d.rectangle([left, top, left + pw, top + ph], outline="black", width=1)
    tw = d.textlength(xlabel, font=f_small)
    d.text((left + pw / 2 - tw / 2, h - 24), xlabel, fill="black", font=f_small)
    lab = Image.new("RGB", (int(d.textlength(ylabel, font=f_small)) + 4, 18), "white")
    ImageDraw.Draw(lab).text((2, 1), ylabel, fill="black", font=f_small)
    lab = lab.rotate(90, expand=True)
    img.paste(lab, (8, int(top + ph / 2 - lab.height / 2)))
    tw = d.textlength(title, font=f_title)
    d.text((max(4, w / 2 - tw / 2), 14), title, fill="black", font=f_title)
    if reference is not None:
        (x0, y0), (x1, y1) = reference
        n = 40
        for i in range(0, n, 2):
            a, b = i / n, (i + 1) / n
            d.line([px(x0 + a * (x1 - x0), y0 + a * (y1 - y0)), px(x0 + b * (x1 - x0), y0 + b * (y1 - y0))],
                   fill=(150, 150, 150), width=1)
    if message is not None or x is None or y is None:
        text = message or "no curve"
        tw = d.textlength(text, font=f_small)
        d.text((left + pw / 2 - tw / 2, top + ph / 2 - 8), text, fill=(180, 0, 0), font=f_small)
        return img
    x = np.clip(np.asarray(x, dtype=np.float64), 0, 1)
    y = np.clip(np.asarray(y, dtype=np.float64), 0, 1)
    if len(x) > DRAW_POINTS:
        keep = np.unique(np.linspace(0, len(x) - 1, DRAW_POINTS).round().astype(int))
        x, y = x[keep], y[keep]
    d.line([px(u, v) for u, v in zip(x, y, strict=True)], fill=(31, 90, 200), width=2, joint="curve")
    return img


def pixel_curves(maps: np.ndarray, masks: np.ndarray, foreground: np.ndarray, max_pixels: int = CURVE_PIXELS,
                 seed: int = 0) -> dict[str, Any]:
    """Pixel-level ROC and PR curves inside the foreground (None entries when a class is missing)."""
    from sklearn.metrics import precision_recall_curve, roc_curve

    from .metrics._inputs import pixel_sample

    s, y, w = pixel_sample(np.asarray(maps, np.float32), np.asarray(masks, bool), np.asarray(foreground, bool),
                           max_pixels, seed)
    n_pos = float(np.sum(w[y])) if w is not None else float(np.count_nonzero(y))
    n_all = float(np.sum(w)) if w is not None else float(y.size)
    if n_pos == 0 or n_pos == n_all:
        why = "no anomalous pixels" if n_pos == 0 else "no normal pixels"
        return {"roc": None, "pr": None, "prevalence": None, "why": why}
    fpr, tpr, _ = roc_curve(y, s, sample_weight=w)
    prec, rec, _ = precision_recall_curve(y, s, sample_weight=w)
    return {"roc": (fpr, tpr), "pr": (rec[::-1], prec[::-1]), "prevalence": n_pos / n_all, "why": None}


def _png_bytes(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def curve_images(metrics: dict[str, Any], maps: np.ndarray, masks: np.ndarray, foreground: np.ndarray,
                 seed: int = 0) -> tuple[Any, Any]:
    """(ROC image, PR image) of the pixel-level curves, AUROC / AP in their titles."""
    c = pixel_curves(maps, masks, foreground, seed=seed)
    au, ap = metrics.get("pixel_auroc"), metrics.get("pixel_ap")
    msg = None if c["why"] is None else f"undefined: {c['why']}"
    roc = line_plot(*(c["roc"] or (None, None)), title=f"Pixel ROC (AUROC {format_value(au)})",
                    xlabel="false-positive rate", ylabel="true-positive rate", reference=((0, 0), (1, 1)),
                    message=msg)
    prev = c["prevalence"]
    pr = line_plot(*(c["pr"] or (None, None)), title=f"Pixel precision-recall (AP {format_value(ap)})",
                   xlabel="recall", ylabel="precision",
                   reference=None if prev is None else ((0, prev), (1, prev)), message=msg)
    return roc, pr


# -- overlays --------------------------------------------------------------------------------------

def colour_map(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] to uint8 RGB through the inferno-like stops."""
    v = np.clip(np.asarray(values, dtype=np.float32), 0, 1)
    pos = np.array([s[0] for s in _CMAP_STOPS], dtype=np.float32)
    cols = np.array([s[1] for s in _CMAP_STOPS], dtype=np.float32)
    out = np.stack([np.interp(v, pos, cols[:, k]) for k in range(3)], axis=-1)
    return out.round().astype(np.uint8)


def _contour(mask: np.ndarray, width: int) -> np.ndarray:
    from scipy import ndimage

    if not mask.any():
        return mask
    return mask & ~ndimage.binary_erosion(mask, iterations=max(1, width), border_value=0)


def overlay_image(slice_: np.ndarray, heat: np.ndarray, lo: float, hi: float, truth: np.ndarray | None = None,
                  predicted: np.ndarray | None = None, caption: str = "", min_side: int = 256,
                  foreground: np.ndarray | None = None):
    """One slice in grey with the anomaly map in colour (alpha rising with the score) and two contours.

    The map is shown only inside ``foreground`` when given: the metrics ignore air, so should the eye.
    """
    from PIL import Image, ImageDraw

    scale = max(1, math.ceil(min_side / max(slice_.shape)))

    def up(a: np.ndarray) -> np.ndarray:
        return np.repeat(np.repeat(a, scale, axis=0), scale, axis=1) if scale > 1 else a

    grey = (np.clip(up(slice_), 0, 1) * 255).astype(np.float32)
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    t = np.clip((up(heat) - lo) / max(hi - lo, 1e-12), 0, 1)
    if foreground is not None:
        t = np.where(up(np.asarray(foreground, bool)), t, 0.0)
    alpha = (0.65 * t)[..., None]
    rgb = (1 - alpha) * rgb + alpha * colour_map(t).astype(np.float32)
    out = rgb.round().astype(np.uint8)
    width = max(1, scale // 2)
    if predicted is not None:
        out[_contour(up(predicted.astype(bool)), width)] = PRED_COLOUR
    if truth is not None:
        out[_contour(up(truth.astype(bool)), width)] = GT_COLOUR
    img = Image.fromarray(out, mode="RGB")
    if caption:
        canvas = Image.new("RGB", (img.width, img.height + 22), "black")
        canvas.paste(img, (0, 0))
        ImageDraw.Draw(canvas).text((4, img.height + 4), caption, fill="white", font=_font(12))
        img = canvas
    return img


def pick_overlays(maps: np.ndarray, masks: np.ndarray, foreground: np.ndarray,
                  n: int = 6) -> list[tuple[int, str]]:
    """Slices worth looking at: the highest-scoring ones and those with the most lesion, without repeats."""
    m = np.where(foreground, maps, -np.inf).reshape(len(maps), -1).max(axis=1)
    m[~np.isfinite(m)] = -np.inf
    area = masks.reshape(len(masks), -1).sum(axis=1)
    chosen: list[tuple[int, str]] = []
    seen: set[int] = set()
    by_score = [int(i) for i in np.argsort(-m, kind="stable")]
    by_area = [int(i) for i in np.argsort(-area, kind="stable") if area[i] > 0]
    half = max(1, n // 2)
    for i in by_score[:half]:
        if i not in seen:
            chosen.append((i, "highest-scoring"))
            seen.add(i)
    for i in by_area:
        if len(chosen) >= n or len([c for c in chosen if c[1] == "most lesion"]) >= n - half:
            break
        if i not in seen:
            chosen.append((i, "most lesion"))
            seen.add(i)
    for i in by_score:
        if len(chosen) >= n:
            break
        if i not in seen:
            chosen.append((i, "highest-scoring"))
            seen.add(i)
    return chosen


# -- the report ------------------------------------------------------------------------------------

def _write_files(folder: Path, files: dict[str, bytes | str]) -> dict[str, Path]:
    out = {}
    for name, content in files.items():
        target = folder / name
        if isinstance(content, str):
            atomic_write_text(target, content)
        else:
            atomic_write_bytes(target, content)
        out[name] = target
    return out


def write_report(out_dir: str | Path, metrics: dict[str, Any], slices: np.ndarray, maps: np.ndarray,
                 masks: np.ndarray, foreground: np.ndarray, predicted: np.ndarray | None = None,
                 names: Sequence[str] | None = None, n_overlays: int = 6, title: str = "AnomaLens evaluation",
                 seed: int = 0) -> dict[str, Path]:
    """Write metrics.json/.csv/.md, roc.png, pr.png and overlay_XX.png into ``out_dir``.

    A new folder appears complete or not at all (built beside it, then renamed); into an existing
    folder each file is replaced atomically and ``metrics.json`` is written last.

    Args:
        out_dir: The report folder.
        metrics: The result of ``evaluate`` (plus any extra keys).
        slices: The normalised slices (n, H, W) the maps belong to.
        maps: Anomaly maps on the same grid (the ones the metrics saw).
        masks: Ground-truth masks.
        foreground: Tissue masks (curves use only these pixels).
        predicted: The predicted mask drawn as a contour (SCR mask, or the thresholded map); optional.
        names: A name per slice for the captions.
        n_overlays: How many overlays to draw.
        title: Report title.
        seed: Seed of the curves' pixel subsample.

    Returns:
        File name → path of every file written.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out} is a file; --report needs a folder")
    maps = np.asarray(maps, dtype=np.float32)
    masks = np.asarray(masks, dtype=bool)
    foreground = np.asarray(foreground, dtype=bool)
    names = list(names) if names is not None else [f"slice {i}" for i in range(len(maps))]

    files: dict[str, bytes | str] = {}
    roc, pr = curve_images(metrics, maps, masks, foreground, seed)
    files["roc.png"] = _png_bytes(roc)
    files["pr.png"] = _png_bytes(pr)
    fg_vals = maps[foreground] if foreground.any() else maps.ravel()
    lo, hi = (float(v) for v in np.percentile(fg_vals, [50.0, 99.9]))
    overlays: list[tuple[str, str]] = []
    for k, (i, why) in enumerate(pick_overlays(maps, masks, foreground, n_overlays)):
        score = float(np.max(np.where(foreground[i], maps[i], -np.inf))) if foreground[i].any() else float("nan")
        caption = f"{names[i]}  max score {score:.3g}  ({why})"
        img = overlay_image(slices[i], maps[i], lo, hi, masks[i], None if predicted is None else predicted[i],
                            caption, foreground=foreground[i])
        fname = f"overlay_{k:02d}.png"
        files[fname] = _png_bytes(img)
        overlays.append((fname, f"{names[i]} ({why})"))
    clean = jsonable(metrics)
    clean["overlays"] = {f: why for f, why in overlays}
    files["metrics.csv"] = metrics_csv({k: v for k, v in clean.items() if k != "overlays"})
    files["metrics.md"] = metrics_markdown(clean, title, overlays)
    files["metrics.json"] = json.dumps(clean, indent=2, sort_keys=True)  # last: its presence means "complete"

    if not out.exists():
        with atomic_dir(out) as tmp:
            _write_files(tmp, files)
        return {name: out / name for name in files}
    # Into an earlier report's folder: all files or none, and the earlier run's extra overlays go (a report of
    # 2 overlays beside the 5 of the run before read as one report).
    from .fileio import atomic_files

    targets = {name: out / name for name in files}
    stale = tuple(p for p in out.glob("overlay_*.png") if p.name not in files)
    with atomic_files(targets, remove=stale) as staged:
        for name, content in files.items():
            with staged.writing(name) as tmp:
                if isinstance(content, str):
                    tmp.write_text(content, encoding="utf-8")
                else:
                    tmp.write_bytes(content)
    return targets
