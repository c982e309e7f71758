"""A full disk never destroys a result or reports success (issue #18).

Two real faults, no mocks: a small tmpfs filled to the brim (where this process may mount one: root with the
capability), and everywhere a per-process file-size limit (``RLIMIT_FSIZE``), under which the kernel refuses
every write past the limit with EFBIG, as a full disk refuses it with ENOSPC. The CLI runs in a child process
with the fault; it must exit 2 with one line on stderr and leave the earlier outputs byte for byte as they were.
"""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from anomalens.engine.cli.main import main
from tests.phantoms import phantom_slices
from tests.test_cli import PATCHCORE_SET
from tests.test_datasets import write_volume

LIMIT = 4096  # bytes a process may write to one file under the rlimit fault


def _cli(argv: list[str], fsize: int | None = None) -> subprocess.CompletedProcess:
    """The CLI in a child process; with ``fsize`` the kernel refuses any file write past that many bytes."""

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a kill, like ENOSPC on a full disk
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "ANOMALENS_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "anomalens.engine.cli", *argv], capture_output=True, text=True,
                          env=env, preexec_fn=limit if fsize is not None else None, timeout=300)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("full-disk")
    normals, _ = phantom_slices(6, 64, seed=1)
    held_out, _ = phantom_slices(4, 64, seed=3)
    case, _ = phantom_slices(3, 64, seed=5, lesion=True)
    w = {"dir": d, "normals": write_volume(d / "normals.nii.gz", (normals * 1000).astype(np.float32)),
         "held_out": write_volume(d / "held_out.nii.gz", (held_out * 1000).astype(np.float32)),
         "case": write_volume(d / "case.nii.gz", (case * 1000).astype(np.float32)),
         "model": d / "model", "calibrated": d / "calibrated"}
    with contextlib.redirect_stdout(open(os.devnull, "w")):
        assert main(["train", "--detector", "patchcore", "--normals", str(w["normals"]), "--out", str(w["model"]),
                     "--device", "cpu", *PATCHCORE_SET]) == 0
        assert main(["calibrate", "--model", str(w["model"]), "--normals", str(w["held_out"]), "--out",
                     str(w["calibrated"]), "--device", "cpu"]) == 0
    return w


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _one_line(proc: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1, proc.stderr
    return lines[0]


@contextlib.contextmanager
def _small_tmpfs(path: Path, size_kb: int) -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(path)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip("mounting a tmpfs needs root with CAP_SYS_ADMIN here; test_score_on_a_disk_that_refuses_* "
                    "exercises the same writer through the kernel's file-size limit")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def test_score_on_a_disk_that_refuses_writes_replaces_nothing(world) -> None:
    out = world["dir"] / "scored"
    good = _cli(["score", "--model", str(world["calibrated"]), str(world["case"]), "--out", str(out)])
    assert good.returncode == 0, good.stderr
    before = _snapshot(out)
    assert {"heatmap.nii.gz", "mask.nii.gz", "mask_scr.nii.gz", "scores.csv"} <= set(before)
    assert max(len(b) for b in before.values()) > LIMIT  # the fault will bite
    bad = _cli(["score", "--model", str(world["calibrated"]), str(world["case"]), "--out", str(out)], fsize=LIMIT)
    line = _one_line(bad)
    assert "nothing was replaced" in line and ("too large" in line or "disk full" in line), line
    assert _snapshot(out) == before  # byte-identical, and no temporaries left beside them


def test_a_score_that_writes_nothing_leaves_no_new_folder(world) -> None:
    """Every write refused: the output folder the command made goes again (an empty one looked like a result)."""
    new, kept = world["dir"] / "never-written", world["dir"] / "made-by-the-user"
    kept.mkdir()
    for out in (new, kept):
        bad = _cli(["score", "--model", str(world["calibrated"]), str(world["case"]), "--out", str(out)],
                   fsize=LIMIT)
        assert "nothing was replaced" in _one_line(bad)
    assert not new.exists()
    assert kept.is_dir() and not any(kept.iterdir())  # the user's own folder stays


def test_score_on_a_full_tmpfs_replaces_nothing(world, tmp_path: Path) -> None:
    with _small_tmpfs(tmp_path / f"fs-{uuid.uuid4().hex[:6]}", 512) as fs:
        out = fs / "scored"
        good = _cli(["score", "--model", str(world["calibrated"]), str(world["case"]), "--out", str(out)])
        assert good.returncode == 0, good.stderr
        before = _snapshot(out)
        free = shutil.disk_usage(fs).free
        with (fs / "filler").open("wb") as fh:  # the disk is now full
            with contextlib.suppress(OSError):
                fh.write(b"\0" * free)
        bad = _cli(["score", "--model", str(world["calibrated"]), str(world["case"]), "--out", str(out)])
        line = _one_line(bad)
        assert "disk full while writing" in line and "nothing was replaced" in line, line
        assert _snapshot(out) == before


def test_a_batch_whose_disk_turns_read_only_ends_in_one_line(world, tmp_path: Path) -> None:
    """The manifest could no longer be written: the CLI said so, and dask logged a cancelled task beside it."""
    import time

    from anomalens.engine.batch import MANIFEST, read_batch_manifest

    studies = tmp_path / "studies"
    studies.mkdir()
    for i in range(30):
        shutil.copy(world["case"], studies / f"c{i:02d}.nii.gz")
    with _small_tmpfs(tmp_path / f"fs-{uuid.uuid4().hex[:6]}", 20_000) as fs:
        out = fs / "out"
        env = {**os.environ, "ANOMALENS_THREADS": "1", "ANOMALENS_PROGRESS": "0"}
        proc = subprocess.Popen([sys.executable, "-m", "anomalens.engine.cli", "score", "--model",
                                 str(world["calibrated"]), str(studies), "--out", str(out), "--workers", "1"],
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:  # until a first study is recorded
            with contextlib.suppress(OSError, ValueError):
                if (out / MANIFEST).exists() and read_batch_manifest(out).get("studies"):
                    break
            time.sleep(0.05)
        remounted = False
        while proc.poll() is None and not remounted and time.monotonic() < deadline:  # busy while files are open
            remounted = subprocess.run(["mount", "-o", "remount,ro", str(fs)], capture_output=True).returncode == 0
        _, err = proc.communicate(timeout=180)
        if not remounted:
            pytest.skip("the batch ended before the file system could be made read-only")
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert proc.returncode == 2 and lines == [lines[0]], err
        assert "read-only file system" in lines[0], err


def test_train_and_calibrate_on_a_refusing_disk_leave_no_bundle(world) -> None:
    for argv in (["train", "--detector", "patchcore", "--normals", str(world["normals"]), *PATCHCORE_SET],
                 ["calibrate", "--model", str(world["model"]), "--normals", str(world["held_out"])]):
        target = world["dir"] / f"bundle-{argv[0]}"
        line = _one_line(_cli([*argv, "--out", str(target), "--device", "cpu"], fsize=LIMIT))
        assert "nothing was replaced" in line, line
        assert not target.exists()
        assert not [p.name for p in world["dir"].iterdir() if p.name.startswith(f".{target.name}.")]


def test_the_next_write_sweeps_temporaries_of_dead_writers_only(world, tmp_path: Path) -> None:
    from anomalens.engine.fileio import HOST, atomic_write_text

    target = tmp_path / "scores.csv"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    stale = tmp_path / f".scores.csv.{HOST}-{dead_pid}.0123abcd.tmp"
    staged = tmp_path / f".scores.csv.{HOST}-{dead_pid}.0123abcd.tmp.nii.gz"
    other = tmp_path / f".model.{HOST}-{dead_pid}.0123abcd.tmp"  # a killed `train --out model`
    other.mkdir()
    (other / "weights.safetensors").write_bytes(b"half")
    live = tmp_path / f".scores.csv.{HOST}-{os.getppid()}.89abcdef.tmp"  # a writer that still runs (our parent)
    elsewhere = tmp_path / f".scores.csv.{'0' * 6 if HOST != '0' * 6 else '1' * 6}-{dead_pid}.0123abcd.tmp"
    for p in (stale, staged, live, elsewhere):
        p.write_text("half")
    atomic_write_text(target, "slice,score\n")
    assert not stale.exists() and not staged.exists() and not other.exists()
    assert live.exists() and elsewhere.exists()  # a running writer's and another machine's stay


def test_a_refused_case_library_write_keeps_the_marks(tmp_path: Path) -> None:
    code = f"""
import sys
from anomalens.engine.caselib import CaseLibrary
from anomalens.engine.errors import OutputError
from anomalens.engine.volume import Volume
import numpy as np
lib = CaseLibrary({str(tmp_path / 'cases.sqlite')!r})
key = lib.register(Volume(array=np.zeros((400, 8, 8), np.float32)))
lib.mark_normal(key, [1, 2])
import resource, signal
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
size = (lib.path.stat().st_size + lib.path.with_name(lib.path.name + '-wal').stat().st_size)
hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
resource.setrlimit(resource.RLIMIT_FSIZE, (size, hard))
try:
    for z in range(3, 400):
        lib.mark_normal(key, [z], patches=[(z, float(i), float(i)) for i in range(200)])
except OutputError as exc:
    print("refused:", exc)
resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))
print("marks", lib.marks(key)[:2])
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    assert proc.returncode == 0, proc.stderr
    assert "refused: the case library could not save this change" in proc.stdout and "free on its disk" in proc.stdout
    assert "marks [1, 2]" in proc.stdout


def test_a_result_is_written_whole_or_not_at_all(world, tmp_path: Path, monkeypatch) -> None:
    """A failure on the last file of a result (the table) leaves every earlier file of the old result as it
    was: never a new map beside an old mask and table. A later result without masks removes the old ones."""
    import errno

    from anomalens.engine import outputs
    from anomalens.engine.detectors import load_bundle
    from anomalens.engine.errors import OutputError
    from anomalens.engine.pipeline import load_volume
    from anomalens.engine.scoring import score_scan

    calibrated, plain = load_bundle(world["calibrated"]), load_bundle(world["model"])
    volume = load_volume(str(world["case"]))
    out = tmp_path / "scored"
    outputs.write_scan_result(score_scan(calibrated, volume), out)
    before = _snapshot(out)

    def refuse(result, path):
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(outputs, "_write_scores", refuse)
        with pytest.raises(OutputError, match=r"disk full while writing scores\.csv: nothing was replaced"):
            outputs.write_scan_result(score_scan(plain, volume), out)
    assert _snapshot(out) == before
    files = outputs.write_scan_result(score_scan(plain, volume), out)
    assert set(files) == {"heatmap", "scores"} and sorted(_snapshot(out)) == ["heatmap.nii.gz", "scores.csv"]


def test_a_folder_replace_that_fails_puts_the_old_folder_back(tmp_path: Path, monkeypatch) -> None:
    import errno

    from anomalens.engine import fileio
    from anomalens.engine.errors import OutputError

    target = tmp_path / "model"
    with fileio.atomic_dir(target) as tmp:
        (tmp / "weights").write_text("old")
    real = os.replace

    def second_fails(src, dst):  # the new folder cannot be renamed into place; moving the old one back can
        if Path(dst) == target and ".old-" not in Path(src).name:
            raise OSError(errno.EIO, "Input/output error")
        return real(src, dst)

    monkeypatch.setattr(fileio.os, "replace", second_fails)
    with pytest.raises(OutputError, match="nothing was replaced"), fileio.atomic_dir(target, overwrite=True) as tmp:
        (tmp / "weights").write_text("new")
    monkeypatch.setattr(fileio.os, "replace", real)
    assert (target / "weights").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_a_read_only_output_folder_is_called_read_only(tmp_path, monkeypatch) -> None:
    """A read-only mount was reported as "no permission", which sends a user to chmod."""
    import os
    from types import SimpleNamespace

    import pytest

    from anomalens.engine.errors import OutputError
    from anomalens.engine.fileio import ensure_folder

    monkeypatch.setattr(os, "access", lambda *a, **k: False)
    monkeypatch.setattr(os, "statvfs", lambda p: SimpleNamespace(f_flag=os.ST_RDONLY))
    with pytest.raises(OutputError, match="read-only file system"):
        ensure_folder(tmp_path)
    monkeypatch.setattr(os, "statvfs", lambda p: SimpleNamespace(f_flag=0))
    with pytest.raises(OutputError, match="no permission"):
        ensure_folder(tmp_path)
