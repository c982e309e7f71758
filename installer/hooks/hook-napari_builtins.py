"""napari's built-in readers and writers: their npe2 manifest ``builtins.yaml`` and the modules it names."""

from PyInstaller.utils.hooks import collect_data_files, collect_submodules

hiddenimports = collect_submodules("napari_builtins", filter=lambda n: "_tests" not in n.split("."))
datas = collect_data_files("napari_builtins", excludes=["**/_tests/**"])
