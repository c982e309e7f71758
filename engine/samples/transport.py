"""HTTP(S) and ``file://`` reads with pip's certificate, proxy and credential settings, stdlib only.

``urllib`` already honours the ``*_proxy`` variables; on top of that we apply pip's ``cert`` (sites that
inspect TLS install their own certificate authority for pip) and pip's ``proxy``, and we send the
credentials written into an index URL (or found in ``~/.netrc``) only to that index's host, never to a
host a redirect or a file link points at.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import mimetypes
import socket
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from ..errors import SampleError

log = logging.getLogger(__name__)

#: Seconds to wait for a connection or for the next block of data.
TIMEOUT_S = 60.0


@dataclass
class Response:
    """An open byte stream with what we need from its headers."""

    stream: BinaryIO
    url: str
    content_type: str
    length: int | None


def redact(url: str) -> str:
    """``url`` without any password, for messages and logs."""
    parts = urllib.parse.urlsplit(url)
    if "@" not in parts.netloc:
        return url
    netloc = "***@" + parts.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def file_url_to_path(url: str) -> Path:
    """The local path a ``file://`` URL names (``file://server/share`` becomes a UNC path)."""
    parts = urllib.parse.urlsplit(url)
    path = urllib.request.url2pathname(parts.path)
    if parts.netloc and parts.netloc != "localhost":
        path = f"//{parts.netloc}{path}"
    return Path(path)


def describe_error(exc: BaseException) -> str:
    """A one-line, user-readable reason for a failed request."""
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        if isinstance(exc.reason, BaseException):
            return describe_error(exc.reason)
        return f"network error: {exc.reason}"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return (f"certificate not trusted ({exc.verify_message}); if your network uses its own certificate "
                "authority, point PIP_CERT (or 'cert' in pip.conf) at its bundle")
    if isinstance(exc, ssl.SSLError):
        return f"TLS error: {exc}"
    if isinstance(exc, TimeoutError | socket.timeout):
        return f"no answer within {TIMEOUT_S:.0f} s"
    if isinstance(exc, OSError):
        return f"{type(exc).__name__}: {exc.strerror or exc}"
    return f"{type(exc).__name__}: {exc}"


class Transport:
    """Opens URLs the way pip would for the same settings.

    Args:
        cert: pip's ``cert`` setting, a CA bundle that replaces the system one.
        proxy: pip's ``proxy`` setting; when unset, urllib's ``*_proxy`` environment handling applies.
    """

    def __init__(self, cert: str | None = None, proxy: str | None = None) -> None:
        handlers: list[urllib.request.BaseHandler] = []
        if cert:
            try:
                context = ssl.create_default_context(cafile=cert)
            except (OSError, ssl.SSLError) as exc:
                raise SampleError(f"pip's 'cert' setting points to {cert}, which is not a readable "
                                  f"certificate bundle ({exc}); fix PIP_CERT or pip.conf") from exc
            handlers.append(urllib.request.HTTPSHandler(context=context))
        if proxy:
            handlers.append(urllib.request.ProxyHandler({"http": proxy, "https": proxy}))
        self._opener = urllib.request.build_opener(*handlers)
        self._auth: dict[str, str] = {}

    def add_credentials(self, url: str) -> str:
        """Keep the credentials in ``url`` (or in ``~/.netrc``) for its host; return ``url`` without them."""
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            return url
        host = _host_key(parts)
        user, password = parts.username, parts.password
        if user is None:
            user, password = _netrc_login(parts.hostname)
        if user is not None:
            token = f"{urllib.parse.unquote(user)}:{urllib.parse.unquote(password or '')}"
            self._auth[host] = "Basic " + base64.b64encode(token.encode("utf-8")).decode("ascii")
        netloc = parts.netloc.rpartition("@")[2]
        return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))

    @contextlib.contextmanager
    def open(self, url: str, accept: str | None = None) -> Iterator[Response]:
        """Open ``url`` for reading; ``file://`` folders resolve to their ``index.html`` as in pip."""
        if url.startswith("file:"):
            path = file_url_to_path(url)
            if path.is_dir():
                path = path / "index.html"
            ctype = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
            if path.suffix == ".json":
                ctype = "application/vnd.pypi.simple.v1+json"
            with path.open("rb") as fh:
                yield Response(fh, path.as_uri(), ctype, path.stat().st_size)
            return
        request = urllib.request.Request(urllib.parse.urldefrag(url).url)
        request.add_header("User-Agent", _user_agent())
        if accept:
            request.add_header("Accept", accept)
        auth = self._auth.get(_host_key(urllib.parse.urlsplit(url)))
        if auth:
            # Unredirected: urllib must not forward it to whatever host a redirect names.
            request.add_unredirected_header("Authorization", auth)
        with self._opener.open(request, timeout=TIMEOUT_S) as resp:
            length = resp.headers.get("Content-Length")
            yield Response(resp, resp.geturl(), resp.headers.get("Content-Type", ""),
                           int(length) if length and length.isdigit() else None)


def _host_key(parts: urllib.parse.SplitResult) -> str:
    """``host[:port]``, case-folded, so credentials match however a later link spells the host."""
    host = parts.hostname or ""
    return host + (f":{parts.port}" if parts.port else "")


def _netrc_login(host: str) -> tuple[str | None, str | None]:
    import netrc

    try:
        found = netrc.netrc().authenticators(host)
    except (OSError, netrc.NetrcParseError):
        return None, None
    if not found:
        return None, None
    return found[0], found[2]


def _user_agent() -> str:
    from .. import __version__

    return f"anomalens/{__version__} (sample download; urllib)"
