"""vispy compiles its GLSL shaders from files and picks its Qt backend module by name at run time."""

from PyInstaller.utils.hooks import collect_data_files, collect_submodules

# Backends for toolkits the bundle does not ship (the Qt one, _pyside6 via _qt, is kept).
_OTHER_TOOLKITS = {"_glfw", "_sdl2", "_wx", "_pyglet", "_tk", "_egl", "_osmesa", "_pyqt4", "_pyqt5", "_pyqt6",
                   "_pyside", "_pyside2", "_jupyter_rfb", "_test", "_template"}


def _keep(name: str) -> bool:
    parts = name.split(".")
    if any(p in {"tests", "_tests", "testing"} for p in parts):
        return False
    return not (name.startswith("vispy.app.backends.") and parts[-1] in _OTHER_TOOLKITS)


hiddenimports = collect_submodules("vispy", filter=_keep)
datas = collect_data_files("vispy", excludes=["**/tests/**"])
