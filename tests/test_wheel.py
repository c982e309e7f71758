"""The wheel must hold every sub-package under the ``anomalens.*`` names and no top-level ``app``/``engine``.

A setuptools ``package-dir`` mapping silently drops sub-packages that are not listed; this builds the real
wheel and compares it with the source folders.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"app": "anomalens/app", "engine": "anomalens/engine", "plugins": "anomalens/plugins",
           "resources": "anomalens/resources"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(out), str(ROOT)],
                   check=True, capture_output=True, text=True)
    wheels = list(out.glob("anomalens-*.whl"))
    assert len(wheels) == 1
    return wheels[0]


def test_every_subpackage_is_in_the_wheel(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = []
    for folder, installed in FOLDERS.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            if "__pycache__" in init.parts:
                continue
            rel = init.relative_to(ROOT / folder).as_posix()
            expected.append(f"{installed}/{rel}")
    assert len(expected) > 10
    missing = [e for e in expected if e not in names]
    assert not missing, f"sub-packages missing from the wheel: {missing}"


def test_every_module_is_in_the_wheel(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    for folder, installed in FOLDERS.items():
        for py in (ROOT / folder).rglob("*.py"):
            if "__pycache__" in py.parts:
                continue
            assert f"{installed}/{py.relative_to(ROOT / folder).as_posix()}" in names


def test_no_top_level_app_or_engine(wheel: Path) -> None:
    tops = {n.split("/", 1)[0] for n in zipfile.ZipFile(wheel).namelist()}
    assert "app" not in tops and "engine" not in tops and "plugins" not in tops
    assert "anomalens" in tops


def test_the_root_is_the_package_and_nothing_else_of_it_ships(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "anomalens/__init__.py" in names
    shipped = {n.split("/")[1] for n in names if n.startswith("anomalens/") and n.count("/") > 1}
    assert shipped == set(FOLDERS), shipped  # no tests/, bench/, installer/ or docs/ inside the package


def test_source_folders_import_only_as_anomalens() -> None:
    """Starting Python in the repository root must not give a second copy of every module (``engine.x``)."""
    for folder in FOLDERS:
        proc = subprocess.run([sys.executable, "-c", f"import {folder}"], cwd=ROOT, capture_output=True, text=True)
        assert proc.returncode != 0 and f"import anomalens.{folder}" in proc.stderr, (folder, proc.stderr)
    proc = subprocess.run([sys.executable, "-c", "import anomalens.engine.pipeline as m; print(m.__file__)"],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0 and Path(proc.stdout.strip()) == ROOT / "engine" / "pipeline.py", proc.stderr


def test_package_modules_import_each_other_relatively() -> None:
    """Tools that read imports from the files (not through an installed package) see every arrow."""
    import re

    absolute = re.compile(r"^\s*(from|import) anomalens[.\s]", re.M)
    offenders = [str(py.relative_to(ROOT)) for folder in FOLDERS for py in (ROOT / folder).rglob("*.py")
                 if absolute.search(py.read_text(encoding="utf-8"))]
    assert not offenders, offenders


def test_entry_points_declared(wheel: Path) -> None:
    zf = zipfile.ZipFile(wheel)
    ep = next(n for n in zf.namelist() if n.endswith(".dist-info/entry_points.txt"))
    text = zf.read(ep).decode()
    assert "[console_scripts]" in text and "anomalens = anomalens.engine.cli:main" in text
