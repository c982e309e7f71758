"""Background jobs for the docks: an engine call in a napari thread worker, with progress and Cancel.

The engine function gets a ``progress`` callback and a ``CancelToken`` and knows nothing of Qt. Progress
crosses threads as a queued Qt signal; Cancel sets the token (which the engine checks between small
steps) and calls ``worker.quit()``. The work function never raises into napari: its outcome is kept and
handled on the UI thread, so a cancel is not reported as a crash and errors show once, as our message.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable
from typing import Any

from qtpy.QtCore import QObject, Signal
from qtpy.QtWidgets import QLabel, QProgressBar, QPushButton

from ..engine.errors import Cancelled
from ..engine.progress import CancelToken, ProgressCallback
from .messages import log, notify_error, notify_info

Work = Callable[[ProgressCallback, CancelToken], Any]
#: Shortest time between two progress updates a job sends to the UI thread.
PROGRESS_INTERVAL_S = 0.05


def _preload_heavy_imports() -> None:
    """Import what training imports lazily, now, while the docks are being built.

    The first ``torch.optim`` optimiser imports ``torch._dynamo`` (and sympy); done inside a worker thread
    that import holds the interpreter lock for about half a second and freezes the UI mid-job
    (bench/bench_responsiveness.py measured 390–525 ms gaps). Paying it once at start-up is cheaper.
    """
    import torch._dynamo  # noqa: F401


#: Every job runner alive, so the app can stop their work before the interpreter exits (``stop_all_work``).
_RUNNERS: weakref.WeakSet[JobRunner] = weakref.WeakSet()


def stop_all_work(timeout_s: float = 10.0) -> bool:
    """Cancel every running job and wait for the thread pool to be idle; returns whether it became so.

    A worker still running when the window closed (the Poincaré projection after ``--screenshot``, a scoring
    the user left) finished after the interpreter had begun tearing its objects down, and superqt printed
    "RuntimeError: Signal source has been deleted" on the way out.
    """
    from qtpy.QtCore import QThreadPool

    for runner in list(_RUNNERS):
        if runner._token is not None:
            runner._token.cancel()
    return bool(QThreadPool.globalInstance().waitForDone(int(timeout_s * 1000)))


class JobRunner(QObject):
    """Runs one job at a time and mirrors it in a progress bar, a Cancel button and a status label.

    Signals:
        started(str): a job called NAME began.
        done(str, object): NAME finished; the object is its result, or the exception it raised
            (``Cancelled`` after a cancel).
    """

    started = Signal(str)
    done = Signal(str, object)
    _progressed = Signal(float, str)

    def __init__(self, bar: QProgressBar, cancel_button: QPushButton, status: QLabel,
                 parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.bar, self.cancel_button, self.status = bar, cancel_button, status
        self._worker: Any = None
        self._token: CancelToken | None = None
        self._job: tuple[str, dict[str, Any], Callable[[Any], None] | None,
                         Callable[[BaseException], None] | None] | None = None
        self.cancel_requested_at: float | None = None
        self._progressed.connect(self._show_progress)
        self.cancel_button.clicked.connect(self.cancel)
        _RUNNERS.add(self)
        self._idle()
        _preload_heavy_imports()

    @property
    def running(self) -> bool:
        return self._job is not None

    def start(self, name: str, work: Work, on_done: Callable[[Any], None] | None = None,
              on_fail: Callable[[BaseException], None] | None = None) -> bool:
        """Run ``work(progress, cancel)`` in a thread worker; ``on_done(result)`` runs on the UI thread.

        ``on_fail(exc)`` runs on the UI thread when the job was cancelled (``Cancelled``) or failed, after the
        failure was reported. Returns False (and starts nothing) while another job is running.
        """
        from napari.qt.threading import create_worker

        if self._job is not None:
            self.status.setText(f"Busy: {self._job[0]} is still running")
            return False
        token = CancelToken()
        box: dict[str, Any] = {}

        last = [float("-inf")]

        def progress(fraction: float, message: str = "") -> None:
            # At most one update per PROGRESS_INTERVAL_S (and the last one): a bar needs no more, and every
            # queued cross-thread signal costs the UI thread a wake-up.
            now = time.perf_counter()
            if now - last[0] >= PROGRESS_INTERVAL_S or fraction >= 1.0:
                last[0] = now
                self._progressed.emit(float(fraction), message)

        def run() -> None:
            try:
                box["value"] = work(progress, token)
            except BaseException as exc:  # handled on the UI thread in _finished
                box["error"] = exc

        self._token, self._job = token, (name, box, on_done, on_fail)
        self.cancel_requested_at = None
        self._worker = create_worker(run, _ignore_errors=True)
        self._worker.finished.connect(self._finished)
        self.bar.setRange(0, 1000)
        self.bar.setValue(0)
        self.bar.setVisible(True)
        self.cancel_button.setVisible(True)
        self.cancel_button.setEnabled(True)
        self.status.setText(f"{name}…")
        self.started.emit(name)
        self._worker.start()
        return True

    def cancel(self) -> None:
        """Ask the running job to stop (the engine raises ``Cancelled`` at its next check)."""
        if self._token is None or self._job is None:
            return
        self.cancel_requested_at = time.perf_counter()
        self._token.cancel()
        if self._worker is not None:
            self._worker.quit()
        self.cancel_button.setEnabled(False)
        self.status.setText(f"Cancelling {self._job[0]}…")

    def wait(self, timeout_s: float = 10.0) -> bool:
        """Block until the job is over (for tests and shutdown), processing Qt events meanwhile."""
        from qtpy.QtWidgets import QApplication

        end = time.perf_counter() + timeout_s
        while self._job is not None and time.perf_counter() < end:
            QApplication.processEvents()
            time.sleep(0.005)
        return self._job is None

    def _show_progress(self, fraction: float, message: str) -> None:
        if self._job is None:
            return
        self.bar.setValue(round(1000 * fraction))
        if message and (self._token is None or not self._token.cancelled):
            self.status.setText(f"{self._job[0]}: {message}")

    def _finished(self) -> None:
        if self._job is None:
            return
        name, box, on_done, on_fail = self._job
        self._job, self._worker, self._token = None, None, None
        self._idle()
        if "error" in box:
            exc = box["error"]
            if isinstance(exc, Cancelled):
                self.status.setText(f"{name}: cancelled")
                log.info("%s cancelled", name)
            else:
                self.status.setText(notify_error(exc, f"{name} failed"))
            if on_fail is not None:
                try:
                    on_fail(exc)
                except Exception as inner:  # reporting a failure must not crash the viewer
                    notify_error(inner, name)
            self.done.emit(name, exc)
            return
        self.status.setText(f"{name}: done")
        try:
            if on_done is not None:
                on_done(box.get("value"))
        except Exception as exc:  # showing a result must not crash the viewer
            self.status.setText(notify_error(exc, f"{name} failed"))
            self.done.emit(name, exc)
            return
        if self.cancel_requested_at is not None:  # Cancel came after the last check: say why there is a result
            notify_info(f"{name} had finished before Cancel took effect: its result is shown")
        self.done.emit(name, box.get("value"))

    def _idle(self) -> None:
        self.bar.setVisible(False)
        self.cancel_button.setVisible(False)
