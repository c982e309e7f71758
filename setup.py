"""Build the package list from the top-level folders.

The product owner wants ``app/``, ``engine/``, ``plugins/`` and ``resources/`` at the top level but
installed as ``anomalens.*``. A ``package-dir`` mapping alone silently leaves sub-packages out of the
wheel, so every folder holding an ``__init__.py`` is listed here (tests/test_wheel.py checks the wheel).
"""

from pathlib import Path

from setuptools import setup

ROOTS = {"app": "anomalens.app", "engine": "anomalens.engine", "plugins": "anomalens.plugins",
         "resources": "anomalens.resources"}


def _packages() -> tuple[list[str], dict[str, str]]:
    here = Path(__file__).parent
    packages, package_dir = [], {}
    for folder, name in ROOTS.items():
        for init in sorted((here / folder).rglob("__init__.py")):
            rel = init.parent.relative_to(here)
            pkg = ".".join([name, *rel.parts[1:]])
            packages.append(pkg)
            package_dir[pkg] = rel.as_posix()
    return packages, package_dir


packages, package_dir = _packages()
setup(packages=packages, package_dir=package_dir)
