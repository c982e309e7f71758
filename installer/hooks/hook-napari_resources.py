"""napari's logos and fonts (the window icon and the welcome screen read them from files)."""

from PyInstaller.utils.hooks import collect_data_files

datas = collect_data_files("napari_resources")
