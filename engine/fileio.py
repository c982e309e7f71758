"""Write, verify, then replace: a crash or a full disk never leaves a half-written model, calibration or result.

Every file the product writes goes to a temporary beside its target (same file system), is flushed to the
disk, checked (its size, and what a ``verify`` callback reads back: a NIfTI header and its voxel count, a
safetensors header), and only then renamed over the target. Any failure on the way removes the temporary,
leaves the old file byte for byte as it was, and raises ``OutputError`` with one line for the user ("disk
full while writing heatmap.nii.gz: nothing was replaced"). Native writers (ITK) may report a full disk only
on stderr and return normally: the read-back is what catches them.

Temporaries are named ``.<target>.<host>-<pid>.<random>.tmp`` (a native writer's staging file adds the real
suffix after it), so every write removes, from its folder, the temporaries this machine's processes left
when they died (a ``kill -9`` mid-write), and never those of a writer that still runs or of another machine
sharing the folder (a batch's workers on a cluster file system).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import secrets
import shutil
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from .errors import OutputError
from .logredact import remember

Verify = Callable[[Path], None]

#: Temporaries of the old naming (no host and pid) count as dead once this old.
LEGACY_STALE_SECONDS = 3600.0
#: This machine, in temporaries' names (a short hash: host names may hold dots and dashes).
HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:6]
_PID = re.compile(r"^\.(?P<name>.+)\.(?P<host>[0-9a-f]{6})-(?P<pid>\d+)\.[0-9a-f]{8}(?:\.[^/]*)?\.tmp(?:\.[^/]+)?$")
_OLD = re.compile(r"^\.(?P<name>.+)\.old-(?P<host>[0-9a-f]{6})-(?P<pid>\d+)$")


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of a file, read in blocks (a model's weights or a template can be hundreds of MB)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def describe_os_error(exc: BaseException) -> str:
    """A few words for an OSError: "disk full", "no permission", … (never a path)."""
    code = getattr(exc, "errno", None)
    return {errno.ENOSPC: "disk full", errno.EDQUOT: "disk quota exceeded", errno.EFBIG: "file too large for the disk",
            errno.EACCES: "no permission", errno.EPERM: "no permission", errno.EROFS: "read-only file system",
            errno.ENAMETOOLONG: "name too long", errno.EIO: "input/output error"}.get(
        code or -1, (getattr(exc, "strerror", None) or str(exc) or type(exc).__name__).split(":")[0])


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def sweep_stale(target: str | Path) -> int:
    """Remove the temporaries that dead processes of this machine left beside ``target``; returns how many.

    Every output's in that folder, so a killed ``train --out M`` leaves nothing behind once anything is
    written there again; temporaries of the old naming (before they carried host and pid) only for
    ``target`` itself, and only when over an hour old.
    """
    target = Path(target)
    folder = target.parent
    try:
        entries = [p for p in folder.iterdir() if p.name.startswith(".")]
    except OSError:
        return 0
    removed = 0
    for p in entries:
        m = _PID.match(p.name) or _OLD.match(p.name)
        if m is not None:
            stale = m.group("host") == HOST and not _alive(int(m.group("pid")))
        elif p.name.startswith(f".{target.name}.") and ".tmp" in p.name:
            try:
                stale = time.time() - p.lstat().st_mtime > LEGACY_STALE_SECONDS
            except OSError:
                continue
        else:
            continue
        if stale:
            with contextlib.suppress(OSError):
                shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
                removed += 1
    return removed


def _temp(target: Path, suffix: str = "") -> Path:
    return target.parent / f".{target.name}.{HOST}-{os.getpid()}.{secrets.token_hex(4)}{suffix}.tmp"


def ensure_folder(folder: str | Path, what: str = "output") -> Path:
    """Create ``folder`` (and parents), or say in one line why it cannot be (a file there, no permission)."""
    folder = Path(folder)
    remember(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"the {what} folder {folder.name} is an existing file; choose a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create the {what} folder {folder.name}: {describe_os_error(exc)}") from exc
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write into the {what} folder {folder.name}: {_why_not_writable(folder)}")
    return folder


def _why_not_writable(folder: Path) -> str:
    """"read-only file system" where it is one (a full-disk's cousin: "no permission" sent users to chmod)."""
    with contextlib.suppress(OSError, AttributeError):
        if os.statvfs(folder).f_flag & os.ST_RDONLY:
            return "it is on a read-only file system"
    return "no permission"


@contextlib.contextmanager
def fresh_folder(folder: str | Path, what: str = "output") -> Iterator[Path]:
    """``ensure_folder``, and a folder this call created goes again when the work in it fails while it is empty.

    A score whose every write failed (a full disk) left an empty output folder behind, as if something had been
    written. Only an empty folder this call made is removed; an existing folder, or one holding anything, stays.
    """
    folder = Path(folder)
    existed = folder.exists()
    out = ensure_folder(folder, what)
    try:
        yield out
    except BaseException:
        if not existed:
            with contextlib.suppress(OSError):  # not empty (or already gone): it stays as it is
                out.rmdir()
        raise


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not every file system lets a folder be synced
        _fsync(folder)


def _failed(target: Path, exc: BaseException, verified: bool) -> OutputError:
    if verified:
        return OutputError(f"{target.name} did not read back after writing ({_reason(exc)}), most likely because "
                           "the disk is full: nothing was replaced")
    return OutputError(f"{describe_os_error(exc)} while writing {target.name}: nothing was replaced")


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:160]


class _Stage:
    """Where a write is (which file, and whether it is being verified: a failure then is a bad read-back)."""

    def __init__(self, target: Path) -> None:
        self.target = target
        self.name = "write"


@contextlib.contextmanager
def _reported(stage: _Stage) -> Iterator[None]:
    """Failures of writing, verifying or replacing as one ``OutputError`` line naming the file; others pass."""
    try:
        yield
    except (OutputError, FileExistsError):
        raise
    except OSError as exc:
        raise _failed(stage.target, exc, verified=False) from exc
    except (ValueError, EOFError, RuntimeError) as exc:
        if stage.name != "verify":
            raise
        raise _failed(stage.target, exc, verified=True) from exc


@contextlib.contextmanager
def atomic_path(target: str | Path, suffix: str = "", verify: Verify | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; it replaces ``target`` only once written, synced and verified.

    ``verify(tmp)`` may raise anything to say the file is not what was meant (a short read, a bad header);
    an empty file is always refused. On any failure the temporary is removed and ``target`` is untouched.
    """
    target = Path(target)
    remember(target)
    ensure_folder(target.parent)
    sweep_stale(target)
    tmp = _temp(target, suffix)
    stage = _Stage(target)
    try:
        with _reported(stage):
            tmp.touch(exist_ok=False)
            yield tmp
            _fsync(tmp)
            stage.name = "verify"
            if tmp.stat().st_size == 0:
                raise OSError(errno.ENOSPC, "the file is empty")
            if verify is not None:
                verify(tmp)
            stage.name = "replace"
            os.replace(tmp, target)
            _fsync_dir(target.parent)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


def atomic_write_text(target: str | Path, text: str) -> Path:
    """Write text to ``target`` atomically, checking that every byte reached the file."""
    return atomic_write_bytes(target, text.encode("utf-8"))


def atomic_write_bytes(target: str | Path, data: bytes) -> Path:
    """Write bytes to ``target`` atomically, checking that every byte reached the file."""

    def same_size(p: Path) -> None:
        if p.stat().st_size != len(data):
            raise ValueError(f"{p.stat().st_size} of {len(data)} bytes on disk")

    with atomic_path(target, verify=same_size) as tmp:
        tmp.write_bytes(data)
    return Path(target)


@contextlib.contextmanager
def atomic_dir(target: str | Path, overwrite: bool = False, verify: Verify | None = None) -> Iterator[Path]:
    """Yield a temporary folder beside ``target`` that is renamed into place once written, synced and verified.

    With ``overwrite`` an existing ``target`` is moved aside first and removed only after the rename,
    so at every instant either the old or the new folder is complete. Without it, a ``target`` another
    process wrote meanwhile is never replaced: ``FileExistsError`` (two fine-tunes saving one model version
    both said "saved v0002", and the first one's was gone).
    """
    target = Path(target)
    remember(target)
    ensure_folder(target.parent)
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} already exists")
    sweep_stale(target)
    tmp = _temp(target)
    stage = _Stage(target)
    old: Path | None = None
    try:
        with _reported(stage):
            tmp.mkdir()
            yield tmp
            for f in sorted(tmp.rglob("*")):
                if f.is_file():
                    _fsync(f)
                    if f.stat().st_size == 0:
                        raise OSError(errno.ENOSPC, f"{f.name} is empty")
            stage.name = "verify"
            if verify is not None:
                verify(tmp)
            stage.name = "replace"
            if overwrite:
                if target.exists():
                    old = target.with_name(f".{target.name}.old-{HOST}-{os.getpid()}")
                    os.replace(target, old)
                os.replace(tmp, target)
            else:
                _rename_new(tmp, target)
            _fsync_dir(target.parent)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
                old = None
    except BaseException:
        if old is not None and old.exists() and not target.exists():  # the new one never arrived: put the old back
            with contextlib.suppress(OSError):
                os.replace(old, target)
        raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _rename_new(tmp: Path, target: Path) -> None:
    """Rename the folder ``tmp`` to ``target``, which must not exist (or be an empty folder): never a replace.

    POSIX ``rename`` refuses a non-empty target folder (ENOTEMPTY/EEXIST) and Windows any existing target, so
    the check and the rename are one step: no other process's folder can slip in between.
    """
    if target.exists() and not (target.is_dir() and not any(target.iterdir())):
        raise FileExistsError(f"{target} already exists")
    try:
        os.rename(tmp, target)
    except OSError as exc:
        if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
            raise FileExistsError(f"{target} already exists") from exc
        raise


class StagedFiles:
    """The temporaries of several outputs written as one result (``atomic_files``), by role."""

    def __init__(self, targets: dict[str, Path], stage: _Stage) -> None:
        self.targets = targets
        self.paths = {role: _temp(t) for role, t in targets.items()}
        self.checks: dict[str, Verify] = {}
        self._stage = stage

    @contextlib.contextmanager
    def writing(self, role: str, verify: Verify | None = None) -> Iterator[Path]:
        """The temporary to write ``role`` to; a failure while writing it names its target in the error line."""
        self._stage.target = self.targets[role]
        if verify is not None:
            self.checks[role] = verify
        yield self.paths[role]


@contextlib.contextmanager
def atomic_files(targets: dict[str, Path], remove: tuple[Path, ...] = ()) -> Iterator[StagedFiles]:
    """Several files written as one result: all are written and verified before any replaces its target.

    A disk that fills up while the third file is written leaves every old file as it was, never a new map
    beside an old mask. ``remove`` names files of an earlier result that this one does not have (a mask
    of a model that is no longer calibrated); they go once the new files are in place. Every role must be
    written (an empty file is refused).
    """
    targets = {role: Path(t) for role, t in targets.items()}
    for t in targets.values():
        remember(t)
        ensure_folder(t.parent)
        sweep_stale(t)
    stage = _Stage(next(iter(targets.values())))
    staged = StagedFiles(targets, stage)
    try:
        with _reported(stage):
            for tmp in staged.paths.values():
                tmp.touch(exist_ok=False)
            yield staged
            stage.name = "verify"
            for role, tmp in staged.paths.items():
                stage.target = targets[role]
                _fsync(tmp)
                if tmp.stat().st_size == 0:
                    raise OSError(errno.ENOSPC, "the file is empty")
                if role in staged.checks:
                    staged.checks[role](tmp)
            stage.name = "replace"
            for role, tmp in staged.paths.items():
                stage.target = targets[role]
                os.replace(tmp, targets[role])
            for folder in {t.parent for t in targets.values()}:
                _fsync_dir(folder)
            for stale in remove:
                with contextlib.suppress(FileNotFoundError):
                    stale.unlink()
    finally:
        for tmp in staged.paths.values():
            with contextlib.suppress(OSError):
                tmp.unlink()
