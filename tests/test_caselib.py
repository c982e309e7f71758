"""The case library keeps normal-slice marks through restarts, concurrent users and killed processes."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from anomalens.engine.caselib import CaseLibrary, array_slices, default_path, original_slices, study_key
from anomalens.engine.errors import ConfigError
from anomalens.engine.volume import Volume


def _volume(seed: int = 0, **meta) -> Volume:
    arr = np.random.default_rng(seed).random((6, 8, 8)).astype(np.float32)
    return Volume(array=arr, metadata=dict(meta))


def test_marks_survive_a_restart(tmp_path):
    path = tmp_path / "cases.sqlite"
    lib = CaseLibrary(path)
    key = lib.register(_volume(series_uid="1.2.3"))
    assert lib.mark_normal(key, [4, 2, 2], source="range") == [2, 4]
    assert lib.mark_normal(key, [4, 5]) == [5]
    lib.mark_normal(key, [1], source="lasso", patches=[(1, 10.5, 3.0)])
    lib.close()
    with pytest.raises(ConfigError):
        lib.marks(key)

    again = CaseLibrary(path)
    assert again.marks(key) == [1, 2, 4, 5]
    assert again.patches(key) == [(1, 10.5, 3.0)]
    assert again.all_marked() == [(key, [1, 2, 4, 5])]
    assert again.study(key)["n_slices"] == 6
    again.close()


def test_unmark_and_undo_restore_exactly_what_changed(tmp_path):
    with CaseLibrary(tmp_path / "c.sqlite") as lib:
        lib.mark_normal("k", [1, 2], source="range")
        lib.mark_normal("k", [2, 3])  # only 3 is new
        assert [op.slices for op in lib.history("k")] == [(3,), (1, 2)]
        assert lib.undo("k").slices == (3,)
        assert lib.marks("k") == [1, 2]
        assert lib.unmark("k", [2, 9]) == [2]
        assert lib.marks("k") == [1]
        op = lib.undo()
        assert op.kind == "unmark" and lib.marks("k") == [1, 2]
        assert lib.undo().slices == (1, 2) and lib.marks("k") == []
        assert lib.undo() is None
        assert lib.all_marked() == []


def test_redo_applies_again_what_undo_took_back_until_a_new_change(tmp_path):
    with CaseLibrary(tmp_path / "c.sqlite") as lib:
        lib.mark_normal("k", [1, 2], source="range")
        lib.mark_normal("k", [5], source="lasso", patches=[(5, 10.5, 3.0)])
        lib.unmark("k", [1])
        assert lib.redo("k") is None and not lib.can_redo("k") and lib.can_undo("k")  # nothing undone yet
        assert lib.undo("k").kind == "unmark" and lib.undo("k").slices == (5,)
        assert lib.marks("k") == [1, 2] and lib.patches("k") == []
        op = lib.redo("k")  # the change undone last comes back first
        assert op.kind == "mark" and op.slices == (5,) and not op.undone
        assert lib.marks("k") == [1, 2, 5] and lib.patches("k") == [(5, 10.5, 3.0)]
        assert lib._read("SELECT source FROM marks WHERE key='k' AND slice=5") == [("lasso",)]
        assert lib.can_redo("k") and lib.redo("k").kind == "unmark" and lib.marks("k") == [2, 5]
        assert lib.redo("k") is None and not lib.can_redo("k")
        # undo and redo again, then a new change: what was undone before it cannot be redone any more
        lib.undo("k")
        lib.undo("k")
        lib.mark_normal("k", [9])
        assert lib.redo("k") is None and not lib.can_redo("k") and lib.marks("k") == [1, 2, 9]
        assert lib.undo("k").slices == (9,) and lib.redo("k").slices == (9,)
        # another study's changes are its own
        lib.mark_normal("other", [0])
        lib.undo("other")
        assert lib.redo("k") is None and lib.redo("other").slices == (0,)


def test_bad_source_and_negative_slices_are_refused(tmp_path):
    with CaseLibrary(tmp_path / "c.sqlite") as lib:
        with pytest.raises(ConfigError, match="source"):
            lib.mark_normal("k", [1], source="guess")
        with pytest.raises(ConfigError, match="negative"):
            lib.mark_normal("k", [-1])
        assert lib.marks("k") == []


def test_two_connections_and_threads_see_each_others_marks(tmp_path):
    path = tmp_path / "c.sqlite"
    a, b = CaseLibrary(path), CaseLibrary(path)
    a.mark_normal("k", [1])
    b.mark_normal("k", [2])
    assert a.marks("k") == b.marks("k") == [1, 2]

    def worker(lib: CaseLibrary, base: int) -> None:
        for i in range(20):
            lib.mark_normal("t", [base + i])

    threads = [threading.Thread(target=worker, args=(lib, base)) for lib, base in ((a, 100), (b, 200), (a, 300))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert a.marks("t") == sorted([*range(100, 120), *range(200, 220), *range(300, 320)])
    a.close()
    b.close()


def test_a_killed_writer_loses_nothing_committed(tmp_path):
    path = tmp_path / "c.sqlite"
    script = f"""
import os, sqlite3
from anomalens.engine.caselib import CaseLibrary
lib = CaseLibrary({str(path)!r})
lib.mark_normal("k", [1, 2])
db = sqlite3.connect({str(path)!r}, isolation_level=None)
db.execute("BEGIN IMMEDIATE")
db.execute("INSERT INTO marks VALUES ('k', 99, 'slice', 'now')")
os._exit(9)  # killed before COMMIT
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 9, proc.stderr
    lib = CaseLibrary(path)
    assert lib.marks("k") == [1, 2]
    assert lib.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    lib.mark_normal("k", [3])  # the dead writer's lock is gone
    assert lib.marks("k") == [1, 2, 3]
    lib.close()


def test_an_open_uncommitted_transaction_does_not_hide_committed_marks(tmp_path):
    path = tmp_path / "c.sqlite"
    lib = CaseLibrary(path)
    lib.mark_normal("k", [5])
    raw = sqlite3.connect(str(path), isolation_level=None)
    raw.execute("BEGIN IMMEDIATE")
    raw.execute("INSERT INTO marks VALUES ('k', 6, 'slice', 'now')")
    assert lib.marks("k") == [5]  # WAL: readers are not blocked and see only committed rows
    raw.execute("ROLLBACK")
    raw.close()
    lib.close()


def test_study_keys_hide_identity_and_ignore_slice_selection(tmp_path):
    v = _volume(series_uid="1.2.840.99")
    k = study_key(v)
    assert k.startswith("s-") and "1.2.840" not in k
    assert study_key(v.select_slices([1, 3])) == k
    assert study_key(_volume(series_uid="1.2.840.98")) != k

    f = tmp_path / "scan.nii"
    f.write_bytes(b"header-bytes" * 100)
    a = _volume(seed=1)
    a.source = f
    b = _volume(seed=2)
    b.source = f
    assert study_key(a) == study_key(b)  # same file
    f2 = tmp_path / "other.nii"
    f2.write_bytes(b"other-bytes" * 100)
    b.source = f2
    assert study_key(a) != study_key(b)
    assert study_key(_volume(seed=1)) != study_key(_volume(seed=2))  # no file: the voxels decide


def test_two_scans_alike_in_their_first_64_kib_are_two_studies(tmp_path):
    """Uncompressed NIfTIs of one template space (the same header, background first) shared a key: a slice
    marked normal on one patient showed as marked on another's scan, and a model fitted on one saw the other."""
    from anomalens.engine.caselib import HEADER_BYTES, legacy_study_key

    head = b"\x5c\x01" + b"\0" * (HEADER_BYTES + 20_000)
    rng = np.random.default_rng(0)
    scans = []
    for name in ("patientA.nii", "patientB.nii"):
        path = tmp_path / name
        path.write_bytes(head + rng.bytes(200_000) + b"\0" * 100_000)  # the brains differ in the middle
        vol = _volume()
        vol.source = path
        scans.append(vol)
    a, b = scans
    assert legacy_study_key(a) == legacy_study_key(b)  # what the old key could not tell apart
    assert study_key(a) != study_key(b) and study_key(a).startswith("g-")
    assert study_key(a) == study_key(a.select_slices([1, 2]))

    # marks made under the old key come along once (copied, the old rows kept)
    with CaseLibrary(tmp_path / "lib.sqlite") as lib:
        with lib._write() as db:
            db.execute("INSERT INTO marks VALUES (?, 3, 'slice', '2026-12-01T00:00:00+00:00')", (legacy_study_key(a),))
        assert lib.carry_over(a) and lib.marks(study_key(a)) == [3]
        assert not lib.carry_over(a)  # once
        assert lib.marks(legacy_study_key(a)) == [3]

    # the old key was recorded at patient A's path: patient B's scan, alike in its head, does not get A's marks
    with CaseLibrary(tmp_path / "lib2.sqlite") as lib:
        with lib._write() as db:
            db.execute("INSERT INTO studies(key, source, n_slices, modality, created) VALUES (?, ?, 4, 'MR', "
                       "'2026-12-01T00:00:00+00:00')", (legacy_study_key(a), str(a.source)))
            db.execute("INSERT INTO marks VALUES (?, 3, 'slice', '2026-12-01T00:00:00+00:00')", (legacy_study_key(a),))
        assert not lib.carry_over(b) and lib.marks(study_key(b)) == []
        lib.register(b)
        assert lib.marks(study_key(b)) == []
        assert lib.carry_over(a) and lib.marks(study_key(a)) == [3]
    # recorded at a path that is gone (the file was moved): the scan now found there takes them
    with CaseLibrary(tmp_path / "lib3.sqlite") as lib:
        with lib._write() as db:
            db.execute("INSERT INTO studies(key, source, n_slices, modality, created) VALUES (?, ?, 4, 'MR', "
                       "'2026-12-01T00:00:00+00:00')", (legacy_study_key(a), str(tmp_path / "moved-away.nii")))
            db.execute("INSERT INTO marks VALUES (?, 5, 'slice', '2026-12-01T00:00:00+00:00')", (legacy_study_key(a),))
        assert lib.carry_over(b) and lib.marks(study_key(b)) == [5]


def test_selection_numbering_round_trips():
    v = _volume().select_slices([1, 3, 4])
    assert original_slices(v, [0, 2]) == [1, 4]
    assert array_slices(v, [4, 1, 0, 5]) == [0, 2]
    w = _volume()
    assert original_slices(w, [2]) == [2] and array_slices(w, [2, 7]) == [2]


def test_default_path_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("ANOMALENS_DATA_DIR", str(tmp_path / "data"))
    assert default_path() == Path(tmp_path / "data" / "cases.sqlite")
    lib = CaseLibrary()
    assert lib.path.exists()
    lib.close()


def test_a_damaged_file_raises_a_user_error(tmp_path):
    bad = tmp_path / "c.sqlite"
    bad.write_bytes(b"this is not a database" * 100)
    with pytest.raises(ConfigError, match="cannot be opened"):
        CaseLibrary(bad)
