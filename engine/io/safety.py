"""Guards that keep a reader from hanging or crashing the process, and from printing native noise.

Native readers (ITK's MetaIO and teem, libpng, libjpeg, GDCM) trust what they are given: opening a FIFO
or a device blocks forever, and they write their complaints straight to the process's stdout/stderr file
descriptors, where Python cannot catch them (``--json`` output would be corrupted and a user sees C++
lines before our one error line). So readers only ever open regular files, system folders are refused
before a walk starts, folder walks stop at a file-count limit, and every native call runs with file
descriptors 1 and 2 redirected into a temporary file whose text is folded into the error if the call
fails and dropped if it succeeds. The redirection is process-wide, so it spans the native call alone
(``native_output``), never a whole read: another thread's output (progress lines, log records) written
meanwhile would be lost with it, and parallel reads would wait on each other. ``collect_native`` keeps
what the captures inside a reader's error boundary saw, for its one error line.
"""

from __future__ import annotations

import os
import re
import stat
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from ..errors import ScanReadError

#: A folder walk stops with an error after this many entries: a scan or study folder holds thousands of
#: files, a home directory or a disk hundreds of thousands, and reading that many headers would take hours.
MAX_FOLDER_ENTRIES = 100_000

#: Folders that are never a scan: walking them reads device files or takes hours. Their subfolders are
#: allowed (``/usr/share/some-sample``), except below the pseudo file systems, which are refused whole.
SYSTEM_FOLDERS = frozenset({
    "/", "/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/libx32", "/proc", "/run", "/sbin",
    "/snap", "/sys", "/usr", "/var", "/System", "/Library", "/private", "/cores",
})
PSEUDO_FILE_SYSTEMS = ("/dev", "/proc", "/sys")
_WINDOWS_SYSTEM = ("windows", "program files", "program files (x86)", "programdata")


def file_kind(mode: int) -> str:
    """A user's word for what a non-regular file is."""
    if stat.S_ISFIFO(mode):
        return "a pipe (FIFO)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISDIR(mode):
        return "a folder"
    return "not a regular file"


def is_regular_file(path: Path | str) -> bool:
    """Whether ``path`` is (or links to) a regular file; FIFOs, devices, sockets and broken links are not."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


def _under(path: Path, folder: str) -> bool:
    return path == Path(folder) or Path(folder) in path.parents


def check_source(path: Path) -> None:
    """Refuse, at once, a path that is not a regular file or an ordinary folder.

    Raises:
        ScanReadError: a device, FIFO or socket (or a link to one), anything below ``/dev``, ``/proc`` or
            ``/sys``, a file-system root or a system folder such as ``/etc``.
    """
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        raise ScanReadError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        resolved = path.resolve()
    except (OSError, RuntimeError):
        resolved = path.absolute()
    if os.name != "nt" and any(_under(resolved, f) for f in PSEUDO_FILE_SYSTEMS):
        raise ScanReadError(f"{path} is a device or system file, not a scan")
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise ScanReadError(f"{path} is {file_kind(mode)}, not a scan; AnomaLens reads only regular files and "
                            "folders")
    if stat.S_ISDIR(mode) and _system_folder(resolved):
        raise ScanReadError(f"{path} is a system folder, not a scan; give the folder of one scan or study")


def _system_folder(resolved: Path) -> bool:
    if resolved == Path(resolved.anchor):
        return True
    if os.name == "nt":
        return len(resolved.parts) == 2 and resolved.parts[1].lower() in _WINDOWS_SYSTEM
    return resolved.as_posix() in SYSTEM_FOLDERS


@dataclass
class FolderListing:
    """The regular files below a folder, and how many entries were skipped because they are not files."""

    files: list[Path] = field(default_factory=list)
    special: list[Path] = field(default_factory=list)


def walk_regular_files(folder: Path, *, skip: frozenset[str] = frozenset(),
                       limit: int | None = None) -> FolderListing:
    """Regular files below ``folder`` (sorted, hidden names and ``skip`` names left out), links followed only to files.

    Links to folders are not followed (no loops, no escape into ``/``); FIFOs, devices, sockets and
    broken links are listed in ``special`` instead of being opened.

    Raises:
        ScanReadError: the folder holds more than ``limit`` entries (default ``MAX_FOLDER_ENTRIES``).
    """
    limit = MAX_FOLDER_ENTRIES if limit is None else limit
    out = FolderListing()
    seen = 0
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        seen += len(dirs) + len(names)
        if seen > limit:
            raise ScanReadError(f"the folder {folder} holds more than {limit:,} files and folders; give the folder "
                                "of one scan or study")
        for name in sorted(names):
            if name.startswith(".") or name.upper() in skip:
                continue
            path = Path(root) / name
            (out.files if is_regular_file(path) else out.special).append(path)
    return out


# --------------------------------------------------------------------------------------------- native output

_CAPTURE_LOCK = threading.RLock()
_LOCAL = threading.local()


class NativeOutput:
    """What native code wrote to stdout/stderr while a capture was open (read on demand)."""

    def __init__(self, sink: IO[bytes] | None = None) -> None:
        self._sink = sink

    @property
    def text(self) -> str:
        if self._sink is None or self._sink.closed:
            return ""
        try:
            self._sink.flush()
            end = self._sink.seek(0, os.SEEK_END)
            self._sink.seek(max(0, end - 16384))
            data = self._sink.read()
            self._sink.seek(0, os.SEEK_END)
        except (OSError, ValueError):
            return ""
        return data.decode("utf-8", "replace")


def _flush_python_streams() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError, AttributeError):
            pass


class NativeLog:
    """What the native captures inside one ``collect_native`` block printed, oldest first (16 KiB each)."""

    def __init__(self) -> None:
        self.parts: list[str] = []

    @property
    def text(self) -> str:
        return "".join(self.parts)


@contextmanager
def collect_native() -> Iterator[NativeLog]:
    """Keep the text of every ``native_output`` capture this thread closes inside the block.

    Redirects nothing itself: a reader's error boundary spans the whole read, the captures only its native
    calls, and the boundary still needs their text for its error line. Nested blocks share the outer log.
    """
    log = getattr(_LOCAL, "log", None)
    if log is not None:
        yield log
        return
    log = _LOCAL.log = NativeLog()
    try:
        yield log
    finally:
        _LOCAL.log = None


@contextmanager
def native_output() -> Iterator[NativeOutput]:
    """Redirect file descriptors 1 and 2 into a temporary file while native code runs.

    Process-wide (file descriptors are shared by all threads): whatever any thread writes meanwhile lands
    in the file, and a lock serialises captures, so callers keep the window to the native call itself.
    Nested captures in one thread share the outer one. Where the descriptors cannot be duplicated (a GUI
    process without a console) nothing is redirected. The text goes to the thread's ``collect_native``
    log, if one is open, when the capture closes.
    """
    current = getattr(_LOCAL, "current", None)
    if current is not None:
        yield current
        return
    with _CAPTURE_LOCK:
        _flush_python_streams()
        saved: list[tuple[int, int]] = []
        try:
            sink = tempfile.TemporaryFile()
        except OSError:
            sink = None
        try:
            if sink is not None:
                for fd in (1, 2):
                    try:
                        saved.append((fd, os.dup(fd)))
                        os.dup2(sink.fileno(), fd)
                    except OSError:
                        pass
            out = NativeOutput(sink)
            _LOCAL.current = out
            try:
                yield out
            finally:
                _LOCAL.current = None
                _flush_python_streams()
                for fd, copy in reversed(saved):
                    try:
                        os.dup2(copy, fd)
                    finally:
                        os.close(copy)
                log = getattr(_LOCAL, "log", None)
                if log is not None:
                    text = out.text
                    if text:
                        log.parts.append(text)
        finally:
            if sink is not None:
                try:
                    sink.close()
                except OSError:
                    pass


#: Lines native readers print that only repeat that reading failed; the line before them says why.
_GENERIC = re.compile(r"(MET_Read Failed|Error parsing file|Cannot parse file|Read: Cannot|^\s*Reason: Success)",
                      re.IGNORECASE)


_SHOUT = re.compile(r"^\*+\s*(ERROR|WARNING)\s*:\s*", re.IGNORECASE)


def native_reason(text: str, path: Path | None = None) -> str:
    """The informative part of what a native library printed: its first lines that say why, joined."""
    if path is not None:
        text = text.replace(str(path), path.name)
    lines: list[str] = []
    for raw in text.splitlines():
        line = _SHOUT.sub("", raw.strip())
        if not line or _GENERIC.search(line):
            continue
        if lines and raw[:1].isspace():  # a detail line ("   ideal = 120 : actual = 90") belongs to the last
            lines[-1] = f"{lines[-1]} ({line})"
            continue
        if len(lines) == 2:
            break
        lines.append(line)
    return "; ".join(lines)[:300]
