"""The SVG writer plugin: its npe2 manifest and the modules it names."""

from PyInstaller.utils.hooks import collect_data_files, collect_submodules

hiddenimports = collect_submodules("napari_svg", filter=lambda n: "_tests" not in n.split("."))
datas = collect_data_files("napari_svg", excludes=["**/_tests/**"])
