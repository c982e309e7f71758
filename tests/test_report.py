"""The ``--report`` writer: metric files, Pillow-drawn ROC/PR plots and overlays, written atomically."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anomalens.engine.errors import ConfigError
from anomalens.engine.metrics import METRIC_KEYS, evaluate
from anomalens.engine.report import (
    GT_COLOUR,
    PRED_COLOUR,
    colour_map,
    line_plot,
    metrics_csv,
    pick_overlays,
    pixel_curves,
    write_report,
)
from tests.phantoms import phantom_slices


@pytest.fixture(scope="module")
def case() -> dict[str, np.ndarray]:
    slices, masks = phantom_slices(5, 48, seed=4, lesion=True)
    masks[0] = False  # one normal slice
    rng = np.random.default_rng(0)
    maps = (masks * 0.6 + rng.random(masks.shape) * 0.5).astype(np.float32)
    fg = slices > 0.05
    return {"slices": slices, "masks": masks, "maps": maps, "fg": fg, "pred": maps > 0.7}


def _not_blank(path: Path) -> Image.Image:
    img = Image.open(path)
    img.load()
    arr = np.asarray(img.convert("RGB"))
    assert arr.std() > 5, f"{path.name} looks blank"
    return img


def test_report_writes_every_file(case, tmp_path: Path) -> None:
    m = evaluate(case["maps"], case["masks"], case["fg"], threshold=0.7, n_boot=50)
    out = tmp_path / "rep"
    files = write_report(out, m, case["slices"], case["maps"], case["masks"], case["fg"], case["pred"],
                         [f"s{i}" for i in range(5)], n_overlays=4)
    names = {p.name for p in out.iterdir()}
    assert {"metrics.json", "metrics.csv", "metrics.md", "roc.png", "pr.png"} <= names
    assert {f"overlay_{i:02d}.png" for i in range(4)} <= names
    assert set(files) == names and not any(n.endswith(".tmp") for n in names)
    back = json.loads((out / "metrics.json").read_text())
    assert back["pixel_auroc"] == pytest.approx(m["pixel_auroc"])
    assert back["pixel_auroc_ci"] == pytest.approx(m["pixel_auroc_ci"])
    rows = list(csv.reader((out / "metrics.csv").open()))
    assert rows[0] == ["key", "value"]
    keys = {r[0] for r in rows[1:]}
    assert set(METRIC_KEYS) <= keys and "pixel_auroc_ci" in keys
    md = (out / "metrics.md").read_text()
    assert "95% CI" in md and "upper bound" in md and "| pixel AUROC |" in md
    for name in ("roc.png", "pr.png"):
        assert _not_blank(out / name).size == (560, 480)
    over = np.asarray(_not_blank(out / "overlay_00.png").convert("RGB"))
    colours = {tuple(c) for c in over.reshape(-1, 3)}
    assert GT_COLOUR in colours and PRED_COLOUR in colours


def test_roc_plot_draws_the_curve(case) -> None:
    c = pixel_curves(case["maps"], case["masks"], case["fg"])
    fpr, tpr = c["roc"]
    assert fpr[0] == 0 and tpr[-1] == pytest.approx(1.0)
    img = np.asarray(line_plot(fpr, tpr, "t", "x", "y"))
    blue = (img[..., 2] > 150) & (img[..., 0] < 80)
    assert blue.sum() > 200  # the curve is there
    # A perfect detector's ROC runs up the left axis: curve pixels sit in the plot's left column.
    left_col = np.asarray(line_plot(np.array([0, 0, 1.0]), np.array([0, 1, 1.0]), "t", "x", "y"))[60:400, 69:73]
    assert ((left_col[..., 2] > 150) & (left_col[..., 0] < 80)).any()


def test_undefined_curves_still_give_readable_plots(case, tmp_path: Path) -> None:
    empty = np.zeros_like(case["masks"])
    m = evaluate(case["maps"], empty, case["fg"], n_boot=0)
    assert m["pixel_auroc"] is None
    assert pixel_curves(case["maps"], empty, case["fg"])["roc"] is None
    write_report(tmp_path / "r", m, case["slices"], case["maps"], empty, case["fg"])
    _not_blank(tmp_path / "r" / "roc.png")
    assert json.loads((tmp_path / "r" / "metrics.json").read_text())["pixel_auroc"] is None


def test_existing_folder_keeps_other_files_and_a_file_is_refused(case, tmp_path: Path) -> None:
    out = tmp_path / "existing"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    m = evaluate(case["maps"], case["masks"], case["fg"], n_boot=0)
    write_report(out, m, case["slices"], case["maps"], case["masks"], case["fg"], n_overlays=2)
    assert (out / "mine.txt").read_text() == "keep" and (out / "metrics.json").is_file()
    target = tmp_path / "a_file"
    target.write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        write_report(target, m, case["slices"], case["maps"], case["masks"], case["fg"])


def test_overlay_choice_mixes_top_scores_and_largest_lesions() -> None:
    maps = np.zeros((5, 8, 8), np.float32)
    maps[3] = 5.0
    maps[4] = 4.0
    masks = np.zeros((5, 8, 8), bool)
    masks[1, :6] = True
    masks[2, :2] = True
    fg = np.ones_like(masks)
    picked = pick_overlays(maps, masks, fg, n=4)
    assert picked == [(3, "highest-scoring"), (4, "highest-scoring"), (1, "most lesion"), (2, "most lesion")]
    assert len({i for i, _ in pick_overlays(maps, masks, fg, n=10)}) == 5


def test_csv_and_colour_map_basics() -> None:
    text = metrics_csv({"pixel_auroc": 0.5, "pixel_auroc_ci": [0.4, 0.6], "dice": None, "notes": ["a", "b"],
                        "bad": float("nan")})
    rows = dict(csv.reader(text.splitlines()))
    assert rows["pixel_auroc_ci"] == "0.4;0.6" and rows["dice"] == "" and rows["notes"] == "a | b"
    assert rows["bad"] == ""
    cm = colour_map(np.array([0.0, 1.0]))
    assert cm[0].tolist() == [0, 0, 4] and cm[1].tolist() == [252, 255, 164]


def test_a_report_written_again_into_its_folder_keeps_no_overlay_of_the_run_before(case, tmp_path: Path) -> None:
    """A rerun with 2 overlays left overlay_02..05.png of the 6-overlay run beside its metrics.md."""
    out = tmp_path / "rep"
    m = evaluate(case["maps"], case["masks"], case["fg"], n_boot=0)
    write_report(out, m, case["slices"], case["maps"], case["masks"], case["fg"], n_overlays=5)
    (out / "mine.txt").write_text("keep")
    files = write_report(out, m, case["slices"], case["maps"], case["masks"], case["fg"], n_overlays=2)
    assert sorted(p.name for p in out.glob("overlay_*.png")) == ["overlay_00.png", "overlay_01.png"]
    assert (out / "mine.txt").read_text() == "keep" and set(files) <= {p.name for p in out.iterdir()}
    assert not any(p.name.endswith(".tmp") or p.name.startswith(".") for p in out.iterdir())
