"""Build the package list: the repository root is the package ``anomalens``.

The product owner wants ``app/``, ``engine/``, ``plugins/`` and ``resources/`` at the top level, installed as
``anomalens.*``: the root maps to ``anomalens`` and each of those folders is one of its sub-packages. A
``package-dir`` mapping alone silently leaves sub-packages out of the wheel, so every folder holding an
``__init__.py`` under them is listed here, and nothing else at the root (tests, bench, installer) is
(tests/test_wheel.py checks the wheel).
"""

from pathlib import Path

from setuptools import setup

FOLDERS = ("app", "engine", "plugins", "resources")


def _packages() -> list[str]:
    here = Path(__file__).parent
    packages = ["anomalens"]
    for folder in FOLDERS:
        for init in sorted((here / folder).rglob("__init__.py")):
            packages.append(".".join(["anomalens", *init.parent.relative_to(here).parts]))
    return packages


setup(packages=_packages(), package_dir={"anomalens": "."})
