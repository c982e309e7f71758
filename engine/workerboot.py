"""Run in each dask worker process of a local batch cluster as it starts (``LocalCluster(preload=…)``).

A terminal's Ctrl-C goes to every process of the job: each worker printed a KeyboardInterrupt traceback under
the CLI's one-line "interrupted". Workers ignore it; the parent, which is interrupted, stops them.
"""

from __future__ import annotations

import signal
import threading
from typing import Any


def dask_setup(worker: Any) -> None:
    """Dask's preload hook: ignore SIGINT in this worker process (thread workers share the parent's: left)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
