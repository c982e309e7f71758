"""The desktop app's recent-files list, kept as versioned JSON in the settings folder.

Written atomically (``engine.fileio``) so a crash while saving never loses the list; an unreadable or
newer-version file is treated as empty rather than stopping the app. The list holds full paths (reopening
them is its purpose; it stays in the user's settings folder); each is registered with ``engine.logredact``
so a log line about one shows a token, never the names in it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from ..engine.fileio import atomic_write_text
from ..engine.logredact import remember
from .paths import config_dir

FILENAME = "recent.json"
VERSION = 1
MAX_ENTRIES = 10
log = logging.getLogger("anomalens.app")


class RecentFiles:
    """Most-recent-first list of opened scans (files or DICOM folders)."""

    def __init__(self, path: str | Path | None = None, max_entries: int = MAX_ENTRIES) -> None:
        self.path = Path(path) if path is not None else config_dir() / FILENAME
        remember(self.path)
        self.max_entries = max_entries

    def load(self) -> list[Path]:
        """The stored entries; a missing, damaged or newer-version file gives an empty list."""
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return []
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            log.warning("ignoring unreadable recent-files list %s: %s", self.path, exc)
            return []
        if not isinstance(data, dict) or data.get("version") != VERSION or not isinstance(data.get("recent"), list):
            log.warning("ignoring recent-files list %s of an unknown version", self.path)
            return []
        entries = [Path(p) for p in data["recent"] if isinstance(p, str)][: self.max_entries]
        for p in entries:
            remember(p)  # shown in File → Open recent; a log line about one shows a token
        return entries

    def add(self, path: str | Path) -> list[Path]:
        """Put ``path`` first (once), trim the list, save it, and return it."""
        remember(path)
        p = Path(path).expanduser().resolve()
        entries = [p, *[e for e in self.load() if e != p]][: self.max_entries]
        self._save(entries)
        return entries

    def clear(self) -> None:
        self._save([])

    def _save(self, entries: list[Path]) -> None:
        text = json.dumps({"version": VERSION, "recent": [str(e) for e in entries]}, indent=2)
        try:
            atomic_write_text(self.path, text)
        except OSError as exc:  # a read-only settings folder must not break opening a scan
            log.warning("could not save the recent-files list %s: %s", self.path, exc)
