"""Frozen entry point of both executables of the bundle: ``anomalens`` (console) and ``anomalens-viewer``.

Both share one analysis (one set of collected modules and files); the name the program was started under
picks which one runs, as a busybox-style launcher does (on Linux the two names are one hard-linked file).
"""

import multiprocessing
import sys
from pathlib import Path

VIEWER = "anomalens-viewer"


def _is_viewer() -> bool:
    started_as = Path(sys.argv[0]).stem.lower() if sys.argv and sys.argv[0] else ""
    if started_as.startswith(VIEWER):
        return True
    if started_as.startswith("anomalens"):
        return False
    return Path(sys.executable).stem.lower().startswith(VIEWER)  # started through a link under another name


if __name__ == "__main__":
    # dask's local cluster (``anomalens score`` on many studies) starts worker processes by re-running this
    # executable; freeze_support makes those children run the worker instead of the program.
    multiprocessing.freeze_support()
    if _is_viewer():
        from anomalens.app.desktop import main as viewer_main

        sys.exit(viewer_main())
    from anomalens.engine.cli.main import main

    sys.exit(main())
