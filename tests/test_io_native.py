"""Readers never crash, hang or print: devices, pipes and system folders are refused at once, DICOM folders
skip what is not a regular file, headers are checked before native readers see them, and what native
libraries print ends up in the one error line (or nowhere, when the read succeeds).

Reads that used to hang run in a child process with a timeout, so a regression fails instead of hanging.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from anomalens.engine.errors import CorruptFileError, EmptyInputError, ScanReadError
from anomalens.engine.io import read_scan, safety
from tests.io_support import phantom, write_ct_series, write_sitk

ROOT = Path(__file__).resolve().parents[1]
posix_only = pytest.mark.skipif(os.name == "nt", reason="FIFOs and /dev exist on POSIX systems only")


def read_in_child(path: Path, timeout: float = 60.0) -> tuple[int, str, str]:
    """(exit code, outcome line, stderr) of ``read_scan(path)`` in a fresh interpreter."""
    code = "\n".join([
        "import sys",
        "from anomalens.engine.errors import AnomaLensError",
        "from anomalens.engine.io import read_scan",
        "try:",
        "    v = read_scan(sys.argv[1])",
        "    print('read', v.shape, len(v.warnings))",
        "except AnomaLensError as e:",
        "    print(type(e).__name__, e)",
    ])
    proc = subprocess.run([sys.executable, "-c", code, str(path)], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)
    return proc.returncode, proc.stdout.strip(), proc.stderr


# ------------------------------------------------------------------------------------------- what is opened


SYSTEM = [f for f in ("/", "/etc", "/usr", "/dev", "/proc", "/sys", "/var") if Path(f).exists()]


@posix_only
@pytest.mark.parametrize("folder", SYSTEM)
def test_system_folders_are_refused_at_once(folder: str) -> None:
    start = time.perf_counter()
    with pytest.raises(ScanReadError, match=r"system folder|device or system file") as err:
        read_scan(folder)
    assert time.perf_counter() - start < 2.0
    assert "\n" not in str(err.value)


@posix_only
def test_devices_pipes_and_links_to_them_are_refused(tmp_path: Path) -> None:
    fifo = tmp_path / "scan.dcm"
    os.mkfifo(fifo)
    with pytest.raises(ScanReadError, match=r"is a pipe \(FIFO\), not a scan"):
        read_scan(fifo)
    link = tmp_path / "zero.nii"
    link.symlink_to("/dev/zero")
    with pytest.raises(ScanReadError, match="device or system file"):
        read_scan(link)
    with pytest.raises(ScanReadError, match="device or system file"):
        read_scan("/dev/null")
    assert not safety.is_regular_file(fifo) and not safety.is_regular_file(link)


@posix_only
def test_dicom_folder_skips_pipes_devices_and_broken_links(tmp_path: Path) -> None:
    folder = tmp_path / "ct"
    write_ct_series(folder, phantom((3, 8, 8)))
    os.mkfifo(folder / "IM9999.dcm")
    (folder / "zero.dcm").symlink_to("/dev/zero")
    (folder / "gone.dcm").symlink_to(tmp_path / "nowhere")
    (folder / "sub").mkdir()
    os.mkfifo(folder / "sub" / "pipe")
    rc, line, err = read_in_child(folder)
    assert rc == 0 and not err, err
    assert line == "read (3, 8, 8) 1", line  # one warning: the skipped entries
    out = read_scan(folder)
    (note,) = out.warnings
    assert "skipped 4 entries that are not regular files" in note


@posix_only
def test_folder_of_only_special_files_is_empty(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "a")
    with pytest.raises(EmptyInputError, match="no regular files"):
        read_scan(tmp_path)


def test_folders_with_too_many_entries_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for i in range(12):
        (tmp_path / f"f{i}.txt").write_text("x")
    monkeypatch.setattr(safety, "MAX_FOLDER_ENTRIES", 10)
    with pytest.raises(ScanReadError, match="more than 10 files and folders"):
        read_scan(tmp_path)


# ------------------------------------------------------------------------------------------- headers


def _mha(tmp_path: Path, name: str, replace: dict[str, str] | None = None, data_file: str | None = None) -> Path:
    """A MetaImage written by ITK, then with header lines replaced (``data_file``: detached .mhd)."""
    suffix = ".mhd" if data_file is not None else ".mha"
    path = write_sitk(tmp_path / f"{name}{suffix}", phantom((3, 6, 5)))
    raw = path.read_bytes()
    end = raw.index(b"\n", raw.index(b"ElementDataFile")) + 1
    head, data = raw[:end].decode(), raw[end:]
    lines = head.splitlines()
    for key, value in {**(replace or {}), **({"ElementDataFile": data_file} if data_file else {})}.items():
        lines = [f"{key} = {value}" if ln.split("=")[0].strip() == key else ln for ln in lines]
    path.write_bytes(("\n".join(lines) + "\n").encode() + data)
    return path


@pytest.mark.parametrize(("value", "message"), [
    ("-1", "NDims = -1 is out of range"), ("-100", "NDims = -100 is out of range"),
    ("100", "NDims = 100 is out of range"), ("three", "NDims 'three' is not a whole number"),
])
def test_metaimage_ndims_that_crashed_itk_are_refused(tmp_path: Path, value: str, message: str) -> None:
    path = _mha(tmp_path, "nd", {"NDims": value})
    rc, line, err = read_in_child(path)
    assert rc == 0 and not err, f"exit {rc}: {err}"
    assert line.startswith("CorruptFileError") and message in line, line


@pytest.mark.parametrize(("field", "value", "message"), [
    ("DimSize", "5 -6 3", "DimSize = -6 is out of range"),
    ("DimSize", "5 6", "DimSize has 2 values for 3 dimensions"),
    ("DimSize", "2147483647 2147483647 2147483647", "more than any scan holds"),
    ("ElementType", "MET_STRING", "not a pixel type"),
    ("ElementSpacing", "1 1", "ElementSpacing has 2 values where 3 are needed"),
    ("TransformMatrix", "1 0 0 0 1 0", "TransformMatrix has 6 values where 9 are needed"),
])
def test_metaimage_field_errors_name_the_field(tmp_path: Path, field: str, value: str, message: str) -> None:
    with pytest.raises(CorruptFileError, match=message) as err:
        read_scan(_mha(tmp_path, "bad", {field: value}))
    assert "\n" not in str(err.value)


@posix_only
@pytest.mark.parametrize(("data_file", "message"), [
    ("/dev/zero", "points outside the header's folder"),
    ("../outside.raw", "points outside the header's folder"),
    ("fifo", r"is a pipe \(FIFO\)"),
    ("zero_link", "is a device"),
    ("missing.raw", "does not exist"),
    ("slice%s.raw 1 3 1", "not of the form name%03d.raw"),
    ("slice%03d.raw 1 3", "needs a first, last and step number"),
])
def test_data_files_must_be_regular_files_beside_the_header(tmp_path: Path, data_file: str, message: str) -> None:
    folder = tmp_path / "hdr"
    folder.mkdir()
    (tmp_path / "outside.raw").write_bytes(bytes(180))
    os.mkfifo(folder / "fifo")
    (folder / "zero_link").symlink_to("/dev/zero")
    path = _mha(folder, "detached", data_file=data_file)
    rc, line, err = read_in_child(path)
    assert rc == 0 and not err, f"exit {rc}: {err}"
    assert line.startswith("CorruptFileError") and len(line.splitlines()) == 1, line
    assert re.search(message, line), line


def test_a_link_to_a_regular_data_file_is_followed(tmp_path: Path) -> None:
    path = write_sitk(tmp_path / "scan.mhd", phantom((3, 6, 5)))
    (tmp_path / "scan.raw").rename(tmp_path / "real.raw")
    if os.name != "nt":
        (tmp_path / "scan.raw").symlink_to("real.raw")
        np.testing.assert_array_equal(read_scan(path).array, phantom((3, 6, 5)))


def test_nrrd_and_nifti_headers_are_checked(tmp_path: Path) -> None:
    nrrd = write_sitk(tmp_path / "a.nrrd", phantom((3, 6, 5)))
    raw = nrrd.read_bytes()
    (tmp_path / "dim.nrrd").write_bytes(raw.replace(b"dimension: 3", b"dimension: -1", 1))
    with pytest.raises(CorruptFileError, match="dimension = -1 is out of range"):
        read_scan(tmp_path / "dim.nrrd")
    (tmp_path / "type.nrrd").write_bytes(raw.replace(b"type: float", b"type: block", 1))
    with pytest.raises(CorruptFileError, match="type 'block' is not a pixel type"):
        read_scan(tmp_path / "type.nrrd")
    nii = bytearray(write_sitk(tmp_path / "a.nii", phantom((3, 6, 5))).read_bytes())
    bad = bytearray(nii)
    bad[40:42] = (-1).to_bytes(2, "little", signed=True)
    (tmp_path / "dim.nii").write_bytes(bytes(bad))
    with pytest.raises(CorruptFileError, match=r"dim\[0\] = -1"):
        read_scan(tmp_path / "dim.nii")
    bad = bytearray(nii)
    bad[70:72] = (1).to_bytes(2, "little")
    (tmp_path / "type.nii").write_bytes(bytes(bad))
    with pytest.raises(CorruptFileError, match="datatype code 1"):
        read_scan(tmp_path / "type.nii")


def test_itk_written_files_all_pass_the_checks(tmp_path: Path) -> None:
    """No false refusals: every pixel type, 2-D to 4-D and vector images, compressed or not."""
    from anomalens.engine.io.headers import check_metaimage, check_nifti, check_nrrd

    checks = {".mha": check_metaimage, ".mhd": check_metaimage, ".nrrd": check_nrrd, ".nhdr": check_nrrd,
              ".nii": check_nifti, ".gz": check_nifti}
    n = 0
    for dtype in (np.uint8, np.int16, np.uint16, np.int32, np.float32, np.float64):
        for shape, vector in (((4, 5), False), ((3, 4, 5), False), ((2, 3, 4, 5), False), ((3, 4, 5, 3), True)):
            for suffix in (".mha", ".mhd", ".nrrd", ".nhdr", ".nii", ".nii.gz"):
                path = tmp_path / f"x{n}{suffix}"
                try:
                    sitk.WriteImage(sitk.GetImageFromArray(np.zeros(shape, dtype), isVector=vector), str(path),
                                    useCompression=n % 2 == 0)
                except RuntimeError:
                    continue  # a combination ITK cannot write in that format
                checks[path.suffix](path)
                n += 1
    assert n > 100


# ------------------------------------------------------------------------------------------- native output


def test_native_messages_go_into_the_error_line(tmp_path: Path, capfd: pytest.CaptureFixture) -> None:
    path = write_sitk(tmp_path / "cut.mha", phantom((3, 6, 5)))
    path.write_bytes(path.read_bytes()[:-30])
    capfd.readouterr()
    with pytest.raises(CorruptFileError) as err:
        read_scan(path)
    out, printed = capfd.readouterr()
    assert not out and not printed, (out, printed)
    message = str(err.value)
    assert "data not read completely" in message and "\n" not in message
    assert not message.rstrip(". ").endswith("Reason: Success")
    png = write_sitk(tmp_path / "bad.png", np.zeros((20, 30), np.uint8))
    data = bytearray(png.read_bytes())
    data[20:24] = b"\xff\xff\xff\xff"  # a CRC-damaged IHDR: libpng prints before failing
    png.write_bytes(bytes(data))
    with pytest.raises(CorruptFileError):
        read_scan(png)
    assert capfd.readouterr() == ("", "")


def test_a_successful_read_drops_native_warnings(tmp_path: Path, capfd: pytest.CaptureFixture) -> None:
    rng = np.random.default_rng(0)
    path = write_sitk(tmp_path / "photo.jpg", rng.integers(0, 255, (64, 64), dtype=np.uint8))
    path.write_bytes(path.read_bytes()[:-300])  # libjpeg warns "Premature end of JPEG file" and goes on
    capfd.readouterr()
    out = read_scan(path)
    assert capfd.readouterr() == ("", "")
    assert any("truncated" in w for w in out.warnings)


def test_native_capture_is_thread_safe_and_restores_the_descriptors(tmp_path: Path,
                                                                    capfd: pytest.CaptureFixture) -> None:
    good = write_sitk(tmp_path / "good.mha", phantom((3, 6, 5)))
    bad = []
    for i in range(4):
        path = tmp_path / f"cut{i}.mha"
        path.write_bytes(good.read_bytes()[: -10 - i])
        bad.append(path)
    errors: list[str] = []
    reads: list[tuple] = []

    def work(k: int) -> None:
        for _ in range(5):
            try:
                reads.append(read_scan(good).shape)
                read_scan(bad[k])
            except CorruptFileError as exc:
                errors.append(str(exc))

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    capfd.readouterr()
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert capfd.readouterr() == ("", "")
    assert len(errors) == 20 and len(reads) == 20
    assert all("data not read completely" in e and e.startswith("cut") for e in errors)
    os.write(2, b"after\n")  # file descriptor 2 is the terminal again
    assert capfd.readouterr().err == "after\n"


# ------------------------------------------------------------------------------------------- other threads


def _other_thread_writes(tag: str, n: int = 3) -> None:
    """Another thread writes ``n`` lines to file descriptor 2 and ends, while this thread waits for it."""
    writer = threading.Thread(target=lambda: [os.write(2, f"{tag} line {i}\n".encode()) for i in range(n)])
    writer.start()
    writer.join(10)


def _capture_is_free() -> bool:
    """Whether another thread can open (and close) a native capture now, i.e. no read holds the capture lock."""
    done = threading.Event()

    def capture() -> None:
        with safety.native_output():
            pass
        done.set()

    threading.Thread(target=capture, daemon=True).start()
    return done.wait(2.0)


def test_other_threads_output_survives_the_voxel_reading_of_a_scan(tmp_path: Path, capfd: pytest.CaptureFixture,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """NIfTI voxels come through nibabel (Python): nothing is captured meanwhile, nothing is serialised."""
    import nibabel

    path = write_sitk(tmp_path / "scan.nii.gz", phantom((8, 32, 32)))
    real_load = nibabel.load
    free: list[bool] = []

    def load(*args, **kwargs):
        _other_thread_writes("nifti")
        free.append(_capture_is_free())
        return real_load(*args, **kwargs)

    monkeypatch.setattr(nibabel, "load", load)
    capfd.readouterr()
    volume = read_scan(path)
    err = capfd.readouterr().err
    assert volume.shape == (8, 32, 32)
    assert err.count("nifti line") == 3, err
    assert free == [True], "a read held the native-capture lock outside its native calls"


def test_other_threads_output_survives_a_dicom_series_read(tmp_path: Path, capfd: pytest.CaptureFixture,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Header parsing and pixel reading of every file of a series (pydicom, Python) run uncaptured."""
    from anomalens.engine.io import dicom

    folder = tmp_path / "ct"
    write_ct_series(folder, phantom((6, 16, 16)))
    real = dicom.dcmread
    calls = []

    def dcmread(path, **kwargs):
        calls.append(path)
        _other_thread_writes(f"dicom{len(calls)}", 1)
        return real(path, **kwargs)

    monkeypatch.setattr(dicom, "dcmread", dcmread)
    capfd.readouterr()
    volume = read_scan(folder)
    err = capfd.readouterr().err
    assert volume.shape == (6, 16, 16)
    assert len(calls) >= 12  # each file's header, then each file's pixels
    assert all(f"dicom{k} line 0" in err for k in range(1, len(calls) + 1)), err


def test_a_thread_printing_throughout_a_large_read_loses_almost_nothing(tmp_path: Path,
                                                                        capfd: pytest.CaptureFixture) -> None:
    """A progress thread printing while a ~16 MB NIfTI is read: only the header call's instant is captured."""
    rng = np.random.default_rng(0)
    path = tmp_path / "big.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(rng.normal(size=(64, 256, 256)).astype(np.float32)), str(path),
                    useCompression=True)
    stop = threading.Event()
    written: list[int] = []

    def progress() -> None:
        while not stop.is_set():
            os.write(2, f"tick {len(written)}\n".encode())
            written.append(1)
            time.sleep(0.001)

    capfd.readouterr()
    ticker = threading.Thread(target=progress)
    ticker.start()
    try:
        for _ in range(2):
            assert read_scan(path).shape == (64, 256, 256)
    finally:
        stop.set()
        ticker.join(10)
    arrived = capfd.readouterr().err.count("tick ")
    assert len(written) >= 20
    assert arrived >= 0.9 * len(written) - 2, f"{len(written) - arrived} of {len(written)} lines were lost"
