"""A folder named after a patient leaves no trace in anything the command line writes (issue #18).

Scans live in ``DOE^JOHN 12345/`` under file names built from it; train, calibrate, score (one scan and a
batch), eval with a report and info run through the real CLI in child processes with logging on; every
file they write (decompressed where gzipped) and everything they log is searched for the name's parts.
"""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from tests.phantoms import phantom_slices
from tests.test_cli import PATCHCORE_SET
from tests.test_datasets import write_volume

NAME = "DOE^JOHN 12345"
PARTS = (b"DOE", b"JOHN", b"12345")


def _cli(argv: list[str], log: Path) -> None:
    with log.open("a") as fh:
        proc = subprocess.run([sys.executable, "-m", "anomalens.engine.cli", "-v", *argv], stdout=subprocess.DEVNULL,
                              stderr=fh, env={**os.environ, "ANOMALENS_THREADS": "1", "ANOMALENS_PROGRESS": "0"},
                              timeout=600)
    assert proc.returncode == 0, log.read_text()[-2000:]


def _contents(path: Path) -> bytes:
    data = path.read_bytes()
    if path.name.endswith(".gz"):
        data = gzip.decompress(data)
    return data


def test_a_patient_named_folder_leaves_no_trace_in_outputs_or_logs(tmp_path: Path) -> None:
    src = tmp_path / NAME
    src.mkdir()
    normals, _ = phantom_slices(6, 64, seed=1)
    held, _ = phantom_slices(4, 64, seed=3)
    case, lesion = phantom_slices(3, 64, seed=5, lesion=True)
    other, _ = phantom_slices(2, 64, seed=6)
    files = {k: write_volume(src / f"{NAME} {k}.nii.gz", (v * 1000).astype(np.float32))
             for k, v in (("normals", normals), ("held", held), ("case", case), ("other", other))}
    mask = write_volume(src / f"{NAME} mask.nii.gz", lesion.astype(np.uint8))
    out, log = tmp_path / "results", tmp_path / "anomalens.log"
    out.mkdir()
    _cli(["train", "--detector", "patchcore", "--normals", str(files["normals"]), "--out", str(out / "model"),
          "--device", "cpu", *PATCHCORE_SET], log)
    _cli(["calibrate", "--model", str(out / "model"), "--normals", str(files["held"]), "--out", str(out / "cal"),
          "--device", "cpu"], log)
    _cli(["score", "--model", str(out / "cal"), str(files["case"]), "--out", str(out / "one"), "--json"], log)
    batch = subprocess.run([sys.executable, "-m", "anomalens.engine.cli", "-v", "score", "--model", str(out / "cal"),
                            str(files["case"]), str(files["other"]), str(src / f"{NAME} broken.nii.gz"),
                            "--out", str(out / "batch"), "--workers", "1"],
                           capture_output=True, text=True, timeout=600,
                           env={**os.environ, "ANOMALENS_THREADS": "1", "ANOMALENS_PROGRESS": "0"})
    with log.open("a") as fh:
        fh.write(batch.stderr)
    assert batch.returncode == 1, batch.stderr  # the missing study fails, the two others are scored
    _cli(["eval", "--model", str(out / "cal"), "--data", f"{files['case']}:{mask}", "--report", str(out / "report"),
          "--bootstrap", "20"], log)
    _cli(["info", str(files["case"])], log)

    written = [p for p in out.rglob("*") if p.is_file()]
    assert len(written) > 15 and (out / "batch" / "manifest.json").is_file() and (out / "report").is_dir()
    leaks = [f"{p.relative_to(out)}: {part.decode()}" for p in [*written, log]
             for part in PARTS if part in _contents(p)]
    assert not leaks, leaks
    assert "<path:" in log.read_text()  # the broken study's error was logged, with its path as a token


def test_a_series_description_naming_the_patient_is_scrubbed_on_reading(tmp_path: Path) -> None:
    """A technician typed the patient into the description; suggested export names start with it."""
    from anomalens.app.naming import export_stem
    from anomalens.engine.io import read_scan
    from tests.io_support import write_ct_series

    hu, _ = phantom_slices(3, 32, seed=2)
    write_ct_series(tmp_path / "s", (hu * 100).astype(np.float32), description="AX T1 POST doe JANE id-12345")
    vol = read_scan(tmp_path / "s")
    assert vol.metadata["SeriesDescription"] == "AX T1 POST"  # the protocol kept, the person gone
    assert export_stem(vol, "lorentz v1").startswith("AX_T1_POST_")
    write_ct_series(tmp_path / "t", (hu * 100).astype(np.float32), description="Doe^Jane",
                    series_uid="1.2.826.0.1.3680043.8.498.11")
    assert "SeriesDescription" not in read_scan(tmp_path / "t").metadata  # nothing left: no description


def test_a_folder_of_two_series_is_refused_in_one_line_without_the_patient(tmp_path: Path, capsys) -> None:
    """The list of series to pick from named the patient a technician typed into a description, over 3 lines."""
    from tests.io_support import write_ct_series
    from tests.test_cli import assert_one_line_error

    hu, _ = phantom_slices(3, 32, seed=2)
    write_ct_series(tmp_path / "m", (hu * 100).astype(np.float32), description="T1 Doe Jane")
    write_ct_series(tmp_path / "m", (hu * 100).astype(np.float32), description="T2 DOE JANE",
                    series_uid="1.2.826.0.1.3680043.8.498.11", name="B")
    msg = assert_one_line_error(capsys, ["info", str(tmp_path / "m")])
    assert "holds 2 series" in msg and "'T1'" in msg and "'T2'" in msg and "1.2.826.0.1.3680043.8.498.11" in msg
    assert "doe" not in msg.lower() and "jane" not in msg.lower()


def test_an_error_line_names_no_patient_unless_paths_are_kept(tmp_path: Path, capsys) -> None:
    """stderr is a log in batch jobs: "…/Smith_Anna.nii.gz is an empty file" put the patient into it."""
    from tests.test_cli import assert_one_line_error

    bad = tmp_path / "Smith_Anna" / "Smith_Anna.nii.gz"
    bad.parent.mkdir()
    bad.write_bytes(b"")
    msg = assert_one_line_error(capsys, ["info", str(bad)])
    assert "is an empty file" in msg and "<path:" in msg and "Smith" not in msg and "Anna" not in msg
    kept = assert_one_line_error(capsys, ["info", str(bad), "--keep-paths"])
    assert str(bad) in kept
