"""Batch scoring on a dask LocalCluster of 2 worker processes on loopback.

Process workers (not threads) are used because the kill test must end a worker's process for real; on the
2-core CI machine the cluster starts in about 1 s and each worker imports torch and AnomaLens in about 2.5 s.
The cluster is created with ``allowed-failures = 0`` so a killed worker turns its study into a recorded
failure (``KilledWorker``) instead of a silent retry: that is what lets the test see the rerun finish it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from anomalens.engine.batch import (
    MANIFEST,
    Study,
    expand_inputs,
    is_batch,
    read_batch_manifest,
    run_batch,
    study_id,
)
from anomalens.engine.errors import ConfigError
from anomalens.engine.outputs import read_scores_csv
from tests.phantoms import phantom_slices
from tests.test_datasets import write_volume


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    from anomalens.engine.detectors import get_detector_class
    from anomalens.engine.pipeline import train

    d = tmp_path_factory.mktemp("batch")
    normals, _ = phantom_slices(6, 64, seed=1)
    det = train("patchcore", normals, config=get_detector_class("patchcore").test_config(), device="cpu")
    model = det.save(d / "model")
    studies = d / "studies"
    for i in range(4):
        vol, _ = phantom_slices(3, 64, seed=10 + i, lesion=True)
        write_volume(studies / f"case{i}.nii.gz", (vol * 1000).astype(np.float32))
    (studies / "broken.nii.gz").write_bytes(b"\x1f\x8b not really a gzip stream" * 8)
    (studies / "notes.txt").write_text("not a study\n")
    return {"dir": d, "model": Path(model), "studies": studies}


@pytest.fixture(scope="module")
def client():
    import dask
    from distributed import Client, LocalCluster

    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
        cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                               host="127.0.0.1")
        c = Client(cluster)
    yield c
    c.close()
    cluster.close()


def read_heat(path: Path) -> np.ndarray:
    import SimpleITK as sitk

    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def test_study_ids_are_stable_safe_and_distinct(tmp_path: Path) -> None:
    a = study_id(f"{tmp_path}/scans/ct 01.nii.gz")
    assert a == study_id(f"{tmp_path}/scans/ct 01.nii.gz")
    assert a.startswith("study-") and all(ch.isalnum() or ch in "._-" for ch in a)
    assert "ct" not in a  # no name is copied unless a site opts in
    assert study_id(f"{tmp_path}/other/ct 01.nii.gz") != a  # same stem, different study
    assert study_id(f"{tmp_path}/scans/ct 01.nii.gz#0-3") != a
    named = study_id(f"{tmp_path}/scans/ct 01.nii.gz", "{stem}-{hash}")
    assert named.startswith("ct_01-") and named.endswith(a.removeprefix("study-"))
    assert study_id("sample:brain1", "{stem}-{hash}").startswith("brain1-")
    with pytest.raises(ConfigError, match="hash"):
        study_id("sample:brain1", "{stem}")


def test_inputs_expand_from_folders_and_list_files(data, tmp_path: Path) -> None:
    studies = expand_inputs([str(data["studies"])])
    names = sorted(Path(s.spec).name for s in studies)
    assert names == ["broken.nii.gz", "case0.nii.gz", "case1.nii.gz", "case2.nii.gz", "case3.nii.gz"]
    lst = data["studies"] / "list.txt"
    lst.write_text("# a comment\ncase1.nii.gz\n\ncase2.nii.gz#0-1\ncase1.nii.gz\n")
    listed = expand_inputs([f"@{lst}"])
    assert [s.spec for s in listed] == [str(data["studies"] / "case1.nii.gz"),
                                        str(data["studies"] / "case2.nii.gz") + "#0-1"]
    lst.unlink()
    # A DICOM series folder (files only, no sub-folders) is one study, not a collection.
    series = tmp_path / "series"
    series.mkdir()
    (series / "IM0001").write_bytes(b"x")
    assert not is_batch([str(series)]) and is_batch([str(data["studies"])])
    assert is_batch(["a.nii", "b.nii"]) and not is_batch([str(data["studies"] / "case0.nii.gz")])


def test_an_empty_folder_is_no_study_even_with_workers(data, capsys, tmp_path: Path) -> None:
    """With --workers an empty folder became one study failed on a worker: exit 1, a manifest, a cluster."""
    from anomalens.engine.cli.main import main
    from anomalens.engine.errors import EmptyInputError

    empty, notes = tmp_path / "empty", tmp_path / "notes"
    empty.mkdir()
    notes.mkdir()
    (notes / "readme.txt").write_text("nothing to score here\n")
    for folder in (empty, notes):
        with pytest.raises(EmptyInputError, match="no studies found"):
            expand_inputs([str(folder)])
        out = tmp_path / f"out-{folder.name}"
        assert main(["score", "--model", str(data["model"]), str(folder), "--out", str(out), "--workers", "1"]) == 2
        assert "no studies found" in capsys.readouterr().err and not out.exists()
    # beside a real study, an empty folder is still tried (and fails alone): nothing a user listed is dropped
    assert len(expand_inputs([str(empty), str(data["studies"] / "case0.nii.gz")])) == 2


def test_cluster_matches_in_process_and_a_corrupt_study_fails_alone(capsys, data, client, tmp_path: Path) -> None:
    out = tmp_path / "out"
    seen: list[str] = []
    summary = run_batch(data["model"], [str(data["studies"])], out, client=client, device="cpu",
                        on_result=lambda sid, rec: seen.append(sid))
    assert summary.exit_code == 1 and len(summary.ok) == 4 and len(seen) == 5
    (bad,) = summary.failed
    assert bad == study_id(str(data["studies"] / "broken.nii.gz")) and summary.failed[bad]
    manifest = read_batch_manifest(out)
    assert manifest["studies"][bad]["status"] == "failed" and manifest["studies"][bad]["error"]
    # Paths stay out of the manifest unless asked for: no SPEC, no model path, errors with tokens.
    assert "spec" not in manifest["studies"][bad] and manifest["model"] is None
    assert str(data["studies"]) not in json.dumps(manifest) and "<path:" in manifest["studies"][bad]["error"]
    records = [manifest["studies"][sid] for sid in summary.ok]
    assert {r["status"] for r in records} == {"ok"}
    assert summary.workers == 2
    assert {r["bundle_loads"] for r in records} == {1}  # one load per worker, not per study

    # Same voxels and scores as today's single-INPUT command, run in this process. Workers run torch on one
    # thread (dask sets OMP_NUM_THREADS=1); with more threads float sums are ordered differently (~1e-6).
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _compare_with_single_input_command(capsys, data, out, manifest, summary.ok, tmp_path)
    finally:
        torch.set_num_threads(threads)
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary leftovers

    # Rerun: finished studies are skipped (files untouched), the failed one is retried.
    stamps = {sid: (out / sid / "heatmap.nii.gz").stat().st_mtime_ns for sid in summary.ok}
    again = run_batch(data["model"], [str(data["studies"])], out, client=client, device="cpu")
    assert sorted(again.skipped) == sorted(summary.ok) and again.ok == [] and list(again.failed) == [bad]
    assert stamps == {sid: (out / sid / "heatmap.nii.gz").stat().st_mtime_ns for sid in summary.ok}
    # A study whose files vanished is scored again.
    victim = summary.ok[0]
    (out / victim / "scores.csv").unlink()
    # So is one scored by another model (its fingerprint differs).
    other = summary.ok[1]
    manifest = read_batch_manifest(out)
    manifest["studies"][other]["model_fingerprint"] = "0" * 16
    (out / MANIFEST).write_text(json.dumps(manifest))
    third = run_batch(data["model"], [str(data["studies"])], out, client=client, device="cpu")
    assert sorted(third.ok) == sorted([victim, other]) and (out / victim / "scores.csv").is_file()


def _compare_with_single_input_command(capsys, data, out: Path, manifest: dict, ids: list[str],
                                       tmp_path: Path) -> None:
    from anomalens.engine.cli.main import main

    by_id = {study_id(str(p)): str(p) for p in data["studies"].iterdir()}
    for sid in ids:
        rec = manifest["studies"][sid]
        single = tmp_path / f"single-{sid}"
        assert main(["score", "--model", str(data["model"]), by_id[sid], "--out", str(single),
                     "--device", "cpu", "--json"]) == 0
        capsys.readouterr()
        np.testing.assert_array_equal(read_heat(out / rec["outputs"]["heatmap"]), read_heat(single / "heatmap.nii.gz"))
        assert (out / rec["outputs"]["scores"]).read_text() == (single / "scores.csv").read_text()


def test_a_killed_worker_loses_no_finished_result_and_the_rerun_completes(data, client, tmp_path: Path) -> None:
    flag = tmp_path / "killed-once"
    specs = [str(data["studies"] / f"case{i}.nii.gz") for i in range(4)]
    doomed = str(tmp_path / "killme.nii.gz")
    write_volume(Path(doomed), (phantom_slices(3, 64, seed=99)[0] * 1000).astype(np.float32))

    out = tmp_path / "out"

    def arm(flag_path: str = str(flag), out_dir: str = str(out)) -> None:
        """In each worker process: the first 'killme' study waits until two others are finished, then ends
        its worker process abruptly (no cleanup, like an OOM kill or a node lost)."""
        import time

        from anomalens.engine import pipeline

        original = pipeline.load_volume

        def load_volume(spec, **opts):
            if "killme" in spec and not os.path.exists(flag_path):
                deadline = time.monotonic() + 20
                while time.monotonic() < deadline and len(list(Path(out_dir).glob("case*/scores.csv"))) < 2:
                    time.sleep(0.05)
                Path(flag_path).write_text("x")
                os._exit(1)
            return original(spec, **opts)

        pipeline.load_volume = load_volume

    client.run(arm)
    inputs = [Study(study_id(s), s) for s in [*specs, doomed]]
    first = run_batch(data["model"], inputs, out, client=client, device="cpu")
    killed = study_id(doomed)
    assert flag.exists() and killed in first.failed
    # With allowed-failures=0 the studies running or queued on the dying worker are failed too (by default
    # dask would retry them elsewhere); every failure is the kill, and the finished ones are all kept.
    assert all("KilledWorker" in err for err in first.failed.values())
    assert len(first.ok) >= 2 and len(first.ok) + len(first.failed) == 5
    manifest = json.loads((out / MANIFEST).read_text())
    for sid in first.ok:  # every finished result is recorded and complete on disk
        assert manifest["studies"][sid]["status"] == "ok"
        assert [int(r["slice"]) for r in read_scores_csv(out / sid / "scores.csv")] == [0, 1, 2]
        assert read_heat(out / sid / "heatmap.nii.gz").shape == (3, 64, 64)
    # A study that was mid-write on the dying worker may leave its temporary folder; never a finished one.
    leftovers = [p.name for p in out.iterdir() if p.name.startswith(".")]
    assert all(any(p.startswith(f".{sid}.") for sid in first.failed) for p in leftovers), leftovers

    client.wait_for_workers(2, timeout=60)  # the nanny restarts the killed worker
    second = run_batch(data["model"], inputs, out, client=client, device="cpu")
    assert sorted(second.skipped) == sorted(first.ok)
    assert killed in second.ok and not second.failed
    assert all(v["status"] == "ok" for v in read_batch_manifest(out)["studies"].values())
    assert not [p for p in out.iterdir() if p.name.startswith(".")], "the rerun sweeps half-written folders"


def test_cli_batch_on_a_running_scheduler_exits_1_with_a_summary(capsys, data, client, tmp_path: Path,
                                                                 monkeypatch) -> None:
    from anomalens.engine.cli import progressbar
    from anomalens.engine.cli.main import main

    monkeypatch.setattr(progressbar, "QUIET_START_S", 0.0)  # a log's progress lines from the first study on

    lst = tmp_path / "studies.txt"
    patient = tmp_path / "Doe^John_0001"  # a folder holding only a report named after the patient
    patient.mkdir()
    (patient / "Doe^John report.pdf").write_bytes(b"%PDF-1.4 not an image")
    lst.write_text(f"{data['studies']}/case0.nii.gz\n{data['studies']}/broken.nii.gz\n{patient}\n")
    out = tmp_path / "cli"
    code = main(["score", "--model", str(data["model"]), f"@{lst}", "--out", str(out),
                 "--scheduler", client.scheduler.address, "--device", "cpu", "--json"])
    captured = capsys.readouterr()
    assert code == 1
    res = json.loads(captured.out)
    assert res["ok"] == 1 and len(res["failed"]) == 2 and res["workers"] >= 1
    assert "anomalens: scoring studies: 100% 3/3 studies done" in captured.err  # a batch in a log says how far
    # the worker's message named the file beside it: redacted where the reader registered it (the worker)
    assert "holds no DICOM images" in captured.err and "Doe" not in captured.err
    assert "Doe" not in (out / "manifest.json").read_text()
    broken = study_id(f"{data['studies']}/broken.nii.gz")
    assert f"anomalens: failed: {broken}: <path:" in captured.err and str(data["studies"]) not in captured.err
    manifest = read_batch_manifest(out)
    ok = next(v for v in manifest["studies"].values() if v["status"] == "ok")
    assert (out / ok["outputs"]["heatmap"]).is_file() and ok["model_fingerprint"] == manifest["model_fingerprint"]
    # --slices is for one INPUT only.
    assert main(["score", "--model", str(data["model"]), f"@{lst}", "--out", str(out), "--slices", "0"]) == 2


def test_half_written_folders_of_studies_to_redo_are_swept(tmp_path: Path) -> None:
    from anomalens.engine.batch import _sweep_leftovers

    redo, done = Study("case1-0000aaaa", "a.nii.gz"), Study("case2-0000bbbb", "b.nii.gz")
    for name in (f".{redo.id}.x1y2.tmp", f".{redo.id}.old-123", f".{done.id}.z9.tmp", done.id):
        (tmp_path / name).mkdir()
        (tmp_path / name / "heatmap.nii.gz").write_bytes(b"partial")
    _sweep_leftovers(tmp_path, [redo])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([f".{done.id}.z9.tmp", done.id])


def test_worker_task_sets_its_torch_threads(tmp_path: Path) -> None:
    import torch

    from anomalens.engine.batch import score_study

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        rec = score_study(Study("nothing-00000000", str(tmp_path / "missing.nii.gz")), str(tmp_path / "m"),
                          str(tmp_path / "out"), threads=1)
        assert rec["status"] == "failed" and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_a_batch_without_verbose_prints_no_scheduler_chatter(data, tmp_path: Path) -> None:
    """Without -v a local batch printed 24 lines of dask.distributed INFO (scheduler, workers, dashboard)."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "anomalens.engine.cli", "score", "--model", str(data["model"]),
                          str(data["studies"] / "case0.nii.gz"), str(data["studies"] / "case1.nii.gz"),
                          "--out", str(tmp_path / "b"), "--workers", "1", "--device", "cpu"],
                         capture_output=True, text=True, timeout=300,
                         env={**os.environ, "ANOMALENS_THREADS": "1", "ANOMALENS_PROGRESS": "0"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert "distributed" not in out.stderr and "INFO" not in out.stderr, out.stderr[-2000:]


def test_a_dicom_series_with_a_stray_file_beside_it_is_one_study(tmp_path: Path) -> None:
    """info and train read such a folder as one series; score took it for a batch of 13 one-slice 'studies'."""
    from tests.io_support import phantom, write_ct_series

    series = tmp_path / "series"
    write_ct_series(series, phantom((4, 8, 8)), name="X")  # no .dcm suffix needed: the marker tells
    for p in series.iterdir():
        p.rename(p.with_suffix(""))
    write_volume(series / "blob.nii.gz", np.zeros((2, 8, 8), np.float32))
    assert not is_batch([str(series)])
    collection = tmp_path / "studies"
    (collection / "a").mkdir(parents=True)
    write_volume(collection / "b.nii.gz", np.zeros((2, 8, 8), np.float32))
    assert is_batch([str(collection)])


def test_score_never_writes_into_a_scan_or_model_folder(data, capsys, tmp_path: Path) -> None:
    from tests.io_support import phantom, write_ct_series
    from tests.test_cli import assert_one_line_error

    series = tmp_path / "series"
    write_ct_series(series, phantom((3, 64, 64)))
    before = sorted(p.name for p in series.iterdir())
    for out in (series, series / "results"):
        msg = assert_one_line_error(capsys, ["score", "--model", str(data["model"]), str(series), "--out", str(out)])
        assert "outputs never go into a scan's or a model's folder" in msg
    msg = assert_one_line_error(capsys, ["score", "--model", str(data["model"]), str(data["studies"] / "case0.nii.gz"),
                                         str(data["studies"] / "case1.nii.gz"), "--out", str(data["model"] / "o")])
    assert "outputs never go into" in msg
    # every command, every way of naming the source: a list file, a slice selection, an IMAGE:MASK pair, the
    # folder of a scan file (whose expert mask.nii.gz a score replaced), a model's own folder
    lst = tmp_path / "list.txt"
    lst.write_text(f"{series}\n")
    case = data["studies"] / "case0.nii.gz"
    (tmp_path / "expert").mkdir()
    scan = tmp_path / "expert" / "t1.nii.gz"
    scan.write_bytes(case.read_bytes())
    for argv in (["score", "--model", str(data["model"]), f"@{lst}", str(case), "--out", str(series)],
                 ["score", "--model", str(data["model"]), str(scan), "--out", str(scan.parent)],
                 ["train", "--detector", "patchcore", "--normals", f"{series}#0-1", "--out", str(series / "m")],
                 ["calibrate", "--model", str(data["model"]), "--normals", f"{series}#0-1", "--out",
                  str(series / "cal")],
                 ["calibrate", "--model", str(data["model"]), "--normals", str(case), "--out",
                  str(data["model"] / "c")],
                 ["eval", "--model", str(data["model"]), "--data", f"{scan}:{case}", "--report", str(scan.parent)]):
        msg = assert_one_line_error(capsys, argv)
        assert "outputs never go into a scan's or a model's folder" in msg, (argv[0], msg)
    assert sorted(p.name for p in series.iterdir()) == before  # the source is as it was
    assert sorted(p.name for p in scan.parent.iterdir()) == ["t1.nii.gz"]
    assert sorted(p.name for p in data["model"].iterdir()) == ["bundle.json", "weights.safetensors"]


def test_ctrl_c_during_a_batch_prints_one_line(data, tmp_path: Path) -> None:
    """The terminal sends Ctrl-C to every process of the job: each dask worker printed its own traceback."""
    import shutil
    import signal
    import subprocess
    import sys
    import time

    studies = tmp_path / "many"
    studies.mkdir()
    for i in range(80):
        shutil.copy(data["studies"] / f"case{i % 4}.nii.gz", studies / f"c{i:02d}.nii.gz")
    out = tmp_path / "out"
    env = {**os.environ, "ANOMALENS_PROGRESS": "0", "ANOMALENS_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "anomalens.engine.cli", "score", "--model", str(data["model"]),
                             str(studies), "--out", str(out), "--workers", "1"], env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:  # until a first study is done
        if (out / MANIFEST).exists() and read_batch_manifest(out).get("studies"):
            break
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole process group
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert err.strip().splitlines() == ["anomalens: interrupted: the finished studies are kept; the same command "
                                        "again goes on from there"], err
