"""npe2 loads parts of itself by name at run time (napari's plugin and widget machinery): take all of it."""

from PyInstaller.utils.hooks import collect_data_files, collect_submodules


def _keep(name: str) -> bool:
    return not any(p in {"tests", "_tests", "testing", "_test_plugin"} for p in name.split("."))


hiddenimports = collect_submodules("npe2", filter=_keep)
datas = collect_data_files("npe2", excludes=["**/tests/**", "**/_test_plugin/**"])
