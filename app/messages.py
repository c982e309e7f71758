"""Errors and warnings shown to the user as napari notifications, and logged.

One place decides how a failure reaches the user: an ``AnomaLensError`` carries a message written for
them and is shown as is; anything else is a bug, shown briefly and logged with its traceback. Nothing
here raises, so a bad file or a broken plugin never takes the viewer down.
"""

from __future__ import annotations

import logging

from ..engine.errors import AnomaLensError, Cancelled

log = logging.getLogger("anomalens.app")


def describe_error(exc: BaseException) -> str:
    """The text a user sees for ``exc``: the message of our errors, a short note for bugs."""
    if isinstance(exc, AnomaLensError):
        return str(exc) or type(exc).__name__
    first = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")[:300]
    # One line: native libraries (ITK, libpng) put whole reports in their messages; the log keeps them.
    return f"Unexpected error ({type(exc).__name__}: {first}). Details are in the log."


def notify_error(exc: BaseException, context: str = "") -> str:
    """Show ``exc`` as a napari error notification (a warning for a cancel) and log it; returns the text."""
    text = describe_error(exc)
    if context:
        text = f"{context}: {text}"
    if isinstance(exc, Cancelled):
        log.info(text)
        _show("info", text)
    elif isinstance(exc, AnomaLensError):
        log.warning(text)
        _show("error", text)
    else:
        log.error(text, exc_info=(type(exc), exc, exc.__traceback__))
        _show("error", text)
    return text


def notify_warning(text: str) -> None:
    """Show a warning notification and log it."""
    log.warning(text)
    _show("warning", text)


def notify_info(text: str) -> None:
    """Show an information notification and log it."""
    log.info(text)
    _show("info", text)


def _show(kind: str, text: str) -> None:
    try:
        from napari.utils import notifications

        {"error": notifications.show_error, "warning": notifications.show_warning,
         "info": notifications.show_info}[kind](text)
    except Exception:  # the notification system itself failing must not hide the original problem
        log.exception("could not show a notification: %s", text)


#: How long a key's answer stays in the desktop window's status label (unless something replaces it first).
SAY_KEEP_S = 15.0


def say(viewer: object, text: str, keep_s: float = SAY_KEEP_S) -> None:
    """Put ``text`` in the window's status bar, where it stays ``keep_s`` seconds.

    napari rewrites its own status line (``viewer.status``) on the next slice change or mouse move, so a key's
    answer ("flagged slice 12 (1 of 5) — wrapped around") was gone before anyone read it. The desktop
    window's AnomaLens status label keeps it; in plain napari (no such label) napari's line is set.
    It does not stay for good: "marked 1 new slice normal" still stood there after a fine-tune and a rollback.
    """
    window = getattr(viewer, "window", None)
    label = getattr(getattr(window, "anomalens_files", None), "status", None)
    if label is None:
        viewer.status = text  # type: ignore[attr-defined]
        return
    # only there: said in napari's line too, a warning stood twice in the status bar, both cut off at 1,366 px
    label.setText(text)
    from qtpy.QtCore import QTimer

    def expire(label: object = label, text: str = text) -> None:
        try:
            if label.text() == text:  # type: ignore[attr-defined]  # not replaced meanwhile
                label.setText("")  # type: ignore[attr-defined]
        except RuntimeError:  # the window closed meanwhile
            pass

    QTimer.singleShot(int(keep_s * 1000), expire)
