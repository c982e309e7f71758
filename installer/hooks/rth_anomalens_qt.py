"""Runtime hook: the bundle ships PySide6 only, so qtpy (napari, superqt, magicgui) must not probe others."""

import os

os.environ["QT_API"] = "pyside6"
