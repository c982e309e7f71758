"""docs/user-guide.md stays true: its shortcut table is the app's, and every image it shows exists.

No display needed: the table is read back from the Markdown and compared with ``shortcut_rows()``
(the rows the Help dialog shows and the keys are bound from); ``docs/shots.py --table-only`` rewrites it.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "docs" / "user-guide.md"


def _shots_module():
    spec = importlib.util.spec_from_file_location("anomalens_docs_shots", ROOT / "docs" / "shots.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _table_rows(text: str, begin: str, end: str) -> list[tuple[str, str]]:
    assert text.count(begin) == 1 and text.count(end) == 1, "the shortcut table markers must appear once each"
    block = text.split(begin, 1)[1].split(end, 1)[0]
    lines = [ln.strip() for ln in block.strip().splitlines()]
    assert len(lines) >= 2 and re.fullmatch(r"\|(\s*-+\s*\|)+", lines[1]), "a Markdown table with a header row"
    rows = []
    for line in lines[2:]:
        cells = [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line.strip("|"))]
        assert len(cells) == 2, line
        rows.append((cells[0].strip("`"), cells[1]))
    return rows


def test_the_guide_lists_exactly_the_apps_shortcuts_in_order() -> None:
    from anomalens.app.shortcuts import shortcut_rows

    shots = _shots_module()
    text = GUIDE.read_text(encoding="utf-8")
    rows = _table_rows(text, shots.TABLE_BEGIN, shots.TABLE_END)
    assert rows == shortcut_rows(), "run: .venv/bin/python docs/shots.py --table-only"
    assert {"N", "W", "Ctrl+3"} <= {key for key, _ in rows}  # the reading room's keys are really in it


def test_the_table_writer_puts_back_what_the_guide_should_hold(tmp_path: Path) -> None:
    shots = _shots_module()
    guide = tmp_path / "guide.md"
    guide.write_text(f"intro\n{shots.TABLE_BEGIN}\n| stale | row |\n{shots.TABLE_END}\noutro\n", encoding="utf-8")
    assert shots.write_shortcut_table(guide) is True
    from anomalens.app.shortcuts import shortcut_rows

    text = guide.read_text(encoding="utf-8")
    assert _table_rows(text, shots.TABLE_BEGIN, shots.TABLE_END) == shortcut_rows()
    assert text.startswith("intro\n") and text.endswith("\noutro\n") and "stale" not in text
    assert shots.write_shortcut_table(guide) is False  # a second run changes nothing
    guide.write_text("no markers here\n", encoding="utf-8")
    with pytest.raises(SystemExit):
        shots.write_shortcut_table(guide)


def test_every_image_the_guide_shows_exists_and_is_a_small_png() -> None:
    text = GUIDE.read_text(encoding="utf-8")
    images = re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", text)
    assert len(images) >= 8, images  # both screen sizes and every dock the guide walks through
    for rel in images:
        path = (GUIDE.parent / rel).resolve()
        assert path.is_file(), f"{rel}: missing (make docs-shots)"
        head = path.read_bytes()[:8]
        assert head == b"\x89PNG\r\n\x1a\n", f"{rel}: not a PNG"
        assert path.stat().st_size < 400_000, f"{rel}: {path.stat().st_size} bytes"
    for rel in re.findall(r"\]\(((?!https?:|#)[^)\s]+)\)", text):  # relative links (README) resolve too
        assert (GUIDE.parent / rel.split("#")[0]).resolve().exists(), rel
