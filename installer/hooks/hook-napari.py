"""napari finds most of its own code by name at run time; its package reads a stub file beside itself.

npe2 ``python_name`` strings, app-model actions and Qt resources name modules as text, and
``napari/__init__.py`` reads its lazy-loading stub ``__init__.pyi`` next to itself: collect every submodule
but the tests, and every data file (icons, themes, stylesheets, stubs).
"""

from PyInstaller.utils.hooks import collect_data_files, collect_submodules


def _keep(name: str) -> bool:
    parts = name.split(".")
    return not any(p in {"_tests", "tests", "conftest", "_testsupport", "benchmarks"} for p in parts)


hiddenimports = collect_submodules("napari", filter=_keep)
datas = collect_data_files("napari", excludes=["**/_tests/**", "**/tests/**"])
# The console (IPython, qtconsole, a Jupyter kernel) is left out: napari shows a notice if it is asked for.
excludedimports = ["napari_console", "IPython", "qtconsole", "ipykernel", "pytest"]
