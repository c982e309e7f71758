"""The local case library: which slices of which studies a user marked as normal (SQLite, no UI toolkit).

Marks are the user's work and the input of site calibration, so they must survive crashes and restarts:
the database runs in WAL mode, every change is one ``BEGIN IMMEDIATE … COMMIT`` transaction (a killed
process loses at most the change it was making, never a committed one), and several viewers or processes
may use one library at once (SQLite serialises writers; readers never block).

Studies are keyed by a hash, never by patient identifiers: the DICOM series UID when there is one,
otherwise a hash of the file's first bytes (its header) with the volume's shape. The source path is kept
only to offer reopening a study; it is not part of the identity.

Slices are stored in the *original* numbering of the study (``Volume.metadata["selected_slices"]`` maps a
sub-volume back), so marks made on a slice selection line up with marks made on the whole scan.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sqlite3
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ConfigError, OutputError
from .io.base import format_bytes
from .paths import data_dir
from .volume import Volume

SCHEMA_VERSION = 1
SOURCES = ("slice", "range", "lasso")
#: Bytes of a file read for its identity when it has no UID (headers of NIfTI/NRRD/MHA fit easily), at its
#: start and at its end, with ``SAMPLED_BLOCKS`` blocks of ``BLOCK_BYTES`` spread through it.
HEADER_BYTES = 64 * 1024
SAMPLED_BLOCKS, BLOCK_BYTES = 32, 4096

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS studies(
    key TEXT PRIMARY KEY, source TEXT, n_slices INTEGER, modality TEXT, created TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS marks(
    key TEXT NOT NULL, slice INTEGER NOT NULL, source TEXT NOT NULL, created TEXT NOT NULL,
    PRIMARY KEY(key, slice));
CREATE TABLE IF NOT EXISTS patches(
    key TEXT NOT NULL, slice INTEGER NOT NULL, y REAL NOT NULL, x REAL NOT NULL, created TEXT NOT NULL,
    PRIMARY KEY(key, slice, y, x));
CREATE TABLE IF NOT EXISTS ops(
    id INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT NOT NULL, kind TEXT NOT NULL, created TEXT NOT NULL,
    undone INTEGER NOT NULL DEFAULT 0, changes TEXT NOT NULL);
"""


def default_path() -> Path:
    """``<data dir>/cases.sqlite`` (``ANOMALENS_DATA_DIR`` overrides the data dir)."""
    return data_dir() / "cases.sqlite"


def _legacy_is_this(db: sqlite3.Connection, legacy: str, volume: Volume) -> bool:
    """Whether marks under the older key ``legacy`` belong to ``volume``'s file as far as the library knows.

    Two files could share an older key; its marks went to both. They are this file's when the study was
    recorded at this file's path, or at no path, or at one that no longer exists (a moved file); not when
    another file that still exists was recorded there (it is that scan's marks, or both scans': never copy
    one patient's marks onto another's scan).
    """
    row = db.execute("SELECT source FROM studies WHERE key=?", (legacy,)).fetchone()
    recorded = None if row is None else row[0]
    if recorded is None or volume.source is None:
        return True
    there, here = Path(recorded), Path(volume.source)
    try:
        return not there.exists() or there.samefile(here)
    except OSError:
        return True


def _end_redo_chain(db: sqlite3.Connection, key: str) -> None:
    """A new change of ``key``: its undone changes can no longer be redone (``undone`` 2: undone for good)."""
    db.execute("UPDATE ops SET undone=2 WHERE key=? AND undone=1", (key,))


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def study_key(volume: Volume) -> str:
    """A stable, non-identifying key for the study a volume came from.

    DICOM: a hash of the series instance UID. Other files: a hash of the file's first 64 KiB (header and
    the start of the data) and the in-plane shape. Without a readable source: a hash of the voxels.
    A slice selection of a scan gets the same key as the whole scan.
    """
    meta = volume.metadata or {}
    uid = str(meta.get("series_uid") or meta.get("SeriesInstanceUID") or "")
    h = hashlib.sha256()
    if uid:
        h.update(b"dicom-series:" + uid.encode())
        return "s-" + h.hexdigest()[:32]
    src = Path(volume.source) if volume.source is not None else None
    if src is not None and src.is_file():
        with src.open("rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            h.update(b"file-v2:" + str(size).encode() + fh.read(HEADER_BYTES))
            # blocks through the whole file: two uncompressed NIfTIs of one template space (the same header,
            # 64 KiB of background first) shared a key, and one patient's marks showed on another's scan
            for k in range(SAMPLED_BLOCKS):
                fh.seek(size * k // SAMPLED_BLOCKS)
                h.update(fh.read(BLOCK_BYTES))
            fh.seek(max(0, size - HEADER_BYTES))
            h.update(fh.read(HEADER_BYTES))
        h.update(repr(volume.shape[1:]).encode())  # in-plane only: a slice selection is the same study
        return "g-" + h.hexdigest()[:32]
    h.update(b"voxels:" + repr(volume.shape).encode() + repr(volume.spacing).encode())
    h.update(np.ascontiguousarray(volume.array).tobytes())
    return "v-" + h.hexdigest()[:32]


def legacy_study_key(volume: Volume) -> str | None:
    """The key releases before ``g-`` keys gave a file (its first 64 KiB only); None for other sources.

    Read to carry a study's marks over (``CaseLibrary.register``), never to match models: two files could
    share it.
    """
    meta = volume.metadata or {}
    if meta.get("series_uid") or meta.get("SeriesInstanceUID") or volume.source is None:
        return None
    src = Path(volume.source)
    if not src.is_file():
        return None
    h = hashlib.sha256()
    with src.open("rb") as fh:
        h.update(b"file-head:" + fh.read(HEADER_BYTES))
    h.update(repr(volume.shape[1:]).encode())
    return "f-" + h.hexdigest()[:32]


def _full_slices(volume: Volume) -> int:
    sel = (volume.metadata or {}).get("selected_slices")
    return int(max(sel)) + 1 if sel else volume.n_slices


def original_slices(volume: Volume, z: Iterable[int]) -> list[int]:
    """Array indices of ``volume`` → slice numbers of the whole study (identity without a selection)."""
    sel = (volume.metadata or {}).get("selected_slices")
    zs = [int(k) for k in z]
    return [int(sel[k]) for k in zs] if sel else zs


def array_slices(volume: Volume, originals: Iterable[int]) -> list[int]:
    """Study slice numbers → array indices of ``volume``; numbers outside a selection are dropped."""
    sel = (volume.metadata or {}).get("selected_slices")
    if not sel:
        return sorted(k for k in (int(o) for o in originals) if 0 <= k < volume.n_slices)
    pos = {int(s): i for i, s in enumerate(sel)}
    return sorted(pos[int(o)] for o in originals if int(o) in pos)


@dataclass(frozen=True)
class Operation:
    """One recorded change, for the undo history: which slices it added or removed."""

    id: int
    key: str
    kind: str  # "mark" or "unmark"
    created: str
    slices: tuple[int, ...]
    undone: bool


class CaseLibrary:
    """Normal-slice marks per study, in one SQLite file shared by every viewer and process of a user.

    Thread-safe (one connection behind a lock); open as many instances on one file as needed.
    """

    def __init__(self, path: str | Path | None = None, timeout: float = 30.0) -> None:
        self.path = Path(path) if path is not None else default_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        try:
            self._db: sqlite3.Connection | None = sqlite3.connect(
                str(self.path), timeout=timeout, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable at every checkpoint
            self._db.execute("PRAGMA foreign_keys=ON")
            with self._write() as db:
                for stmt in filter(str.strip, _SCHEMA.split(";")):
                    db.execute(stmt)
                row = db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
                if row is None:
                    db.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
                elif int(row[0]) > SCHEMA_VERSION:
                    raise ConfigError(f"the case library {self.path} was written by a newer AnomaLens "
                                      f"(schema {row[0]}); update AnomaLens to open it")
        except sqlite3.DatabaseError as exc:
            raise ConfigError(f"the case library {self.path} cannot be opened: {exc}") from exc

    # -- plumbing -------------------------------------------------------------------------------
    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise ConfigError("the case library is closed")
        return self._db

    class _Txn:
        def __init__(self, lib: CaseLibrary) -> None:
            self.lib = lib

        def __enter__(self) -> sqlite3.Connection:
            self.lib._lock.acquire()
            try:
                self.lib.db.execute("BEGIN IMMEDIATE")
            except BaseException:
                self.lib._lock.release()
                raise
            return self.lib.db

        def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
            try:
                if exc_type is None:
                    try:
                        self.lib.db.execute("COMMIT")
                    except sqlite3.OperationalError as err:
                        with contextlib.suppress(sqlite3.DatabaseError):
                            self.lib.db.execute("ROLLBACK")
                        raise self.lib._write_failed(err) from err
                else:
                    with contextlib.suppress(sqlite3.DatabaseError):
                        self.lib.db.execute("ROLLBACK")
                    if isinstance(exc, sqlite3.OperationalError):  # full, read-only, I/O: the disk, not a bug
                        raise self.lib._write_failed(exc) from exc
            finally:
                self.lib._lock.release()

    def _write_failed(self, exc: sqlite3.OperationalError) -> OutputError:
        """A write the database refused (a full disk, a read-only folder): the marks stay as they were."""
        try:
            free = format_bytes(shutil.disk_usage(self.path.parent).free)
        except OSError:
            free = "unknown"
        return OutputError(f"the case library could not save this change ({exc}; {free} free on its disk): "
                           "your earlier marks are unchanged")

    def _write(self) -> CaseLibrary._Txn:
        """One write transaction: committed as a whole or not at all."""
        return CaseLibrary._Txn(self)

    def _read(self, sql: str, args: Sequence[Any] = ()) -> list[tuple]:
        with self._lock:
            return self.db.execute(sql, tuple(args)).fetchall()

    @property
    def closed(self) -> bool:
        return self._db is None

    def close(self) -> None:
        """Close the connection (committed marks are on disk already)."""
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def __enter__(self) -> CaseLibrary:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- studies --------------------------------------------------------------------------------
    def register(self, volume: Volume, remember_path: bool = True) -> str:
        """Record a study (its key, size, modality and, optionally, its path for reopening); return its key."""
        key = study_key(volume)
        src = str(volume.source) if (remember_path and volume.source is not None) else None
        legacy = legacy_study_key(volume)
        with self._write() as db:
            new = not db.execute("SELECT 1 FROM studies WHERE key=?", (key,)).fetchall()
            db.execute("INSERT INTO studies(key, source, n_slices, modality, created) VALUES (?, ?, ?, ?, ?) "
                       "ON CONFLICT(key) DO UPDATE SET source=COALESCE(excluded.source, studies.source)",
                       (key, src, _full_slices(volume), volume.modality, _now()))
            if new and legacy is not None and _legacy_is_this(db, legacy, volume):
                # marks made under the older key: copied over, never moved
                db.execute("INSERT OR IGNORE INTO marks SELECT ?, slice, source, created FROM marks WHERE key=?",
                           (key, legacy))
                db.execute("INSERT OR IGNORE INTO patches SELECT ?, slice, y, x, created FROM patches WHERE key=?",
                           (key, legacy))
        return key

    def carry_over(self, volume: Volume) -> bool:
        """Copy a study's marks made under its older key (``legacy_study_key``) to its key, once; True if done.

        Readers call it before reading marks, so marks made before the key changed are not lost.
        """
        legacy = legacy_study_key(volume)
        if legacy is None or not self._read("SELECT 1 FROM marks WHERE key=? LIMIT 1", (legacy,)):
            return False
        with self._lock:
            if not _legacy_is_this(self.db, legacy, volume):
                return False
        if self._read("SELECT 1 FROM studies WHERE key=?", (study_key(volume),)):
            return False  # registered under its key already: copied then (or marked anew since)
        self.register(volume, remember_path=False)
        return True

    def study(self, key: str) -> dict[str, Any] | None:
        """What is known of a study: ``source`` (or None), ``n_slices``, ``modality``, ``created``."""
        rows = self._read("SELECT source, n_slices, modality, created FROM studies WHERE key=?", (key,))
        if not rows:
            return None
        src, n, modality, created = rows[0]
        return {"key": key, "source": src, "n_slices": n, "modality": modality, "created": created}

    # -- marks ----------------------------------------------------------------------------------
    def mark_normal(self, key: str, slices: Iterable[int], source: str = "slice",
                    patches: Iterable[Sequence[float]] | None = None) -> list[int]:
        """Mark slices of a study as normal (one transaction); returns the slices that were not marked yet.

        ``patches`` are optional ``(slice, y, x)`` patch centres (from a lasso on the disk view), kept so a
        later version can fine-tune on patches rather than whole slices.
        """
        if source not in SOURCES:
            raise ConfigError(f"mark source must be one of {', '.join(SOURCES)}, got {source!r}")
        wanted = sorted({int(s) for s in slices})
        if any(s < 0 for s in wanted):
            raise ConfigError("slice numbers cannot be negative")
        pts = [(int(p[0]), float(p[1]), float(p[2])) for p in (patches or [])]
        now = _now()
        with self._write() as db:
            have = {r[0] for r in db.execute("SELECT slice FROM marks WHERE key=?", (key,))}
            new = [s for s in wanted if s not in have]
            db.executemany("INSERT INTO marks(key, slice, source, created) VALUES (?, ?, ?, ?)",
                           [(key, s, source, now) for s in new])
            new_pts = []
            for z, y, x in pts:
                cur = db.execute("INSERT OR IGNORE INTO patches VALUES (?, ?, ?, ?, ?)", (key, z, y, x, now))
                if cur.rowcount:
                    new_pts.append([z, y, x])
            if new or new_pts:
                _end_redo_chain(db, key)
                db.execute("INSERT INTO ops(key, kind, created, changes) VALUES (?, 'mark', ?, ?)",
                           (key, now, json.dumps({"slices": new, "source": source, "patches": new_pts})))
        return new

    def unmark(self, key: str, slices: Iterable[int] | None = None) -> list[int]:
        """Remove marks (all of the study's when ``slices`` is None); returns the slices that were removed."""
        now = _now()
        with self._write() as db:
            rows = db.execute("SELECT slice, source, created FROM marks WHERE key=?", (key,)).fetchall()
            drop = set(r[0] for r in rows) if slices is None else {int(s) for s in slices}
            removed = [list(r) for r in rows if r[0] in drop]
            pts = [list(r) for r in db.execute("SELECT slice, y, x, created FROM patches WHERE key=?", (key,))
                   if r[0] in drop]
            db.executemany("DELETE FROM marks WHERE key=? AND slice=?", [(key, r[0]) for r in removed])
            db.executemany("DELETE FROM patches WHERE key=? AND slice=?", [(key, z) for z in sorted(drop)])
            if removed or pts:
                _end_redo_chain(db, key)
                db.execute("INSERT INTO ops(key, kind, created, changes) VALUES (?, 'unmark', ?, ?)",
                           (key, now, json.dumps({"rows": removed, "patches": pts})))
        return sorted(r[0] for r in removed)

    def marks(self, key: str) -> list[int]:
        """Marked-normal slice numbers of a study, sorted."""
        return [r[0] for r in self._read("SELECT slice FROM marks WHERE key=? ORDER BY slice", (key,))]

    def patches(self, key: str) -> list[tuple[int, float, float]]:
        """Marked-normal patch centres ``(slice, y, x)`` of a study."""
        return [tuple(r) for r in self._read("SELECT slice, y, x FROM patches WHERE key=? ORDER BY slice, y, x",
                                             (key,))]

    def all_marked(self) -> list[tuple[str, list[int]]]:
        """Every study with marks, as ``(key, slices)``."""
        out: dict[str, list[int]] = {}
        for key, s in self._read("SELECT key, slice FROM marks ORDER BY key, slice"):
            out.setdefault(key, []).append(s)
        return list(out.items())

    # -- history --------------------------------------------------------------------------------
    def history(self, key: str | None = None, limit: int = 20) -> list[Operation]:
        """The latest changes, newest first (of one study, or of all)."""
        sql = "SELECT id, key, kind, created, changes, undone FROM ops"
        args: tuple = ()
        if key is not None:
            sql, args = sql + " WHERE key=?", (key,)
        rows = self._read(sql + " ORDER BY id DESC LIMIT ?", (*args, int(limit)))
        out = []
        for i, k, kind, created, changes, undone in rows:
            ch = json.loads(changes)
            sl = ch.get("slices") if kind == "mark" else [r[0] for r in ch.get("rows", [])]
            out.append(Operation(i, k, kind, created, tuple(sl or ()), bool(undone)))
        return out

    def undo(self, key: str | None = None) -> Operation | None:
        """Revert the latest change not yet undone (of one study, or of all); None when there is none.

        Only that change's own effect is reverted: a slice it marked is unmarked, a slice it unmarked is
        marked again with its original source and time.
        """
        with self._write() as db:
            sql = "SELECT id, key, kind, created, changes FROM ops WHERE undone=0"
            args: tuple = ()
            if key is not None:
                sql, args = sql + " AND key=?", (key,)
            row = db.execute(sql + " ORDER BY id DESC LIMIT 1", args).fetchone()
            if row is None:
                return None
            op_id, k, kind, created, changes = row
            ch = json.loads(changes)
            if kind == "mark":
                db.executemany("DELETE FROM marks WHERE key=? AND slice=?", [(k, s) for s in ch["slices"]])
                db.executemany("DELETE FROM patches WHERE key=? AND slice=? AND y=? AND x=?",
                               [(k, *p) for p in ch.get("patches", [])])
                sl = ch["slices"]
            else:
                db.executemany("INSERT OR IGNORE INTO marks(key, slice, source, created) VALUES (?, ?, ?, ?)",
                               [(k, *r) for r in ch["rows"]])
                db.executemany("INSERT OR IGNORE INTO patches VALUES (?, ?, ?, ?, ?)",
                               [(k, *p) for p in ch.get("patches", [])])
                sl = [r[0] for r in ch["rows"]]
            db.execute("UPDATE ops SET undone=1 WHERE id=?", (op_id,))
        return Operation(op_id, k, kind, created, tuple(sl), True)

    def can_undo(self, key: str) -> bool:
        """Whether ``undo(key)`` has a change to revert."""
        return bool(self._read("SELECT 1 FROM ops WHERE key=? AND undone=0 LIMIT 1", (key,)))

    def can_redo(self, key: str) -> bool:
        """Whether ``redo(key)`` has a change to apply again (the same rule as ``redo``)."""
        in_force = self._read("SELECT MAX(id) FROM ops WHERE key=? AND undone=0", (key,))[0][0] or 0
        return bool(self._read("SELECT 1 FROM ops WHERE key=? AND undone=1 AND id>? LIMIT 1", (key, in_force)))

    def redo(self, key: str | None = None) -> Operation | None:
        """Apply again the change undone last (of one study, or of all); None when there is none to redo.

        Only changes undone since the study's latest new change can be redone: a new mark or unmark after an
        undo ends the chain, as in an editor (otherwise a redo could mark a slice the user has since decided
        about). A mark comes back with its original source and time.
        """
        with self._write() as db:
            where, args = ("", ()) if key is None else (" AND key=?", (key,))
            in_force = db.execute("SELECT MAX(id) FROM ops WHERE undone=0" + where, args).fetchone()[0] or 0
            row = db.execute("SELECT id, key, kind, created, changes FROM ops WHERE undone=1 AND id>?" + where
                             + " ORDER BY id ASC LIMIT 1", (in_force, *args)).fetchone()
            if row is None:
                return None
            op_id, k, kind, created, changes = row
            ch = json.loads(changes)
            if kind == "mark":
                db.executemany("INSERT OR IGNORE INTO marks(key, slice, source, created) VALUES (?, ?, ?, ?)",
                               [(k, s, ch.get("source", "slice"), created) for s in ch["slices"]])
                db.executemany("INSERT OR IGNORE INTO patches VALUES (?, ?, ?, ?, ?)",
                               [(k, *p, created) for p in ch.get("patches", [])])
                sl = ch["slices"]
            else:
                db.executemany("DELETE FROM marks WHERE key=? AND slice=?", [(k, r[0]) for r in ch["rows"]])
                db.executemany("DELETE FROM patches WHERE key=? AND slice=? AND y=? AND x=?",
                               [(k, *p[:3]) for p in ch.get("patches", [])])
                sl = [r[0] for r in ch["rows"]]
            db.execute("UPDATE ops SET undone=0 WHERE id=?", (op_id,))
        return Operation(op_id, k, kind, created, tuple(sl), False)
