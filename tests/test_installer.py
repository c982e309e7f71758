"""The desktop bundle (installer/): build it with ``make installer`` and run ``installer/smoke_test`` on it.

The build takes many minutes and gigabytes, so that test is ``slow`` (``make slow``, not CI); a bundle that
is newer than every input of the build is reused. The quick checks run in the normal suite.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BUNDLE = ROOT / "dist" / "anomalens"
SMOKE = ROOT / "installer" / "smoke_test"
#: Everything the bundle is built from: a change to any of these means a rebuild.
INPUTS = ("engine", "app", "plugins", "resources", "installer/anomalens.spec", "installer/entry.py", "installer/hooks",
          "pyproject.toml", "setup.py", "constraints.txt", "Makefile")


def _newest_input() -> float:
    newest = 0.0
    for name in INPUTS:
        path = ROOT / name
        files = [path] if path.is_file() else [p for p in path.rglob("*")
                                               if p.is_file() and "__pycache__" not in p.parts]
        newest = max([newest, *(p.stat().st_mtime for p in files)])
    return newest


def _bundle_is_current() -> bool:
    exe = BUNDLE / "anomalens"
    return exe.is_file() and (BUNDLE / "anomalens-viewer").is_file() and exe.stat().st_mtime > _newest_input()


def test_smoke_test_refuses_a_missing_bundle(tmp_path: Path) -> None:
    assert os.access(SMOKE, os.X_OK)
    out = subprocess.run([str(SMOKE), str(tmp_path / "nothing-here")], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "make installer" in out.stderr


def test_spec_and_hooks_are_valid_python() -> None:
    for path in [ROOT / "installer" / "anomalens.spec", *(ROOT / "installer" / "hooks").glob("*.py"),
                 ROOT / "installer" / "entry.py"]:
        compile(path.read_text(encoding="utf-8"), str(path), "exec")


@pytest.mark.slow
def test_bundle_builds_and_passes_the_smoke_test() -> None:
    if shutil.which("xvfb-run") is None:
        pytest.fail("xvfb-run is required for the installer smoke test (apt-get install xvfb)")
    if not _bundle_is_current():
        build = subprocess.run(["make", "installer"], cwd=ROOT, capture_output=True, text=True, timeout=3 * 3600)
        assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    assert _bundle_is_current()
    out = subprocess.run([str(SMOKE), str(BUNDLE)], capture_output=True, text=True, timeout=3600)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    assert "smoke_test: all checks passed" in out.stdout
