"""A DICOMweb session for one PACS profile: ``dicomweb_client`` underneath, AnomaLens errors on top.

Every request goes through ``PacsClient._call``, which turns what ``requests`` and the server say into one
of the ``engine.pacs.errors`` classes with a sentence for the user (server down, timeout, 401/403, 404, a
TLS certificate that does not verify). Credentials ride on the ``requests`` session (basic or bearer auth
objects), never in URLs, headers passed to ``dicomweb_client`` (which logs those), messages or logs.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from .errors import (
    PacsAuthError,
    PacsError,
    PacsNotFoundError,
    PacsTimeoutError,
    PacsUnreachableError,
)
from .profiles import PacsProfile, get_profile, resolve_secret

if TYPE_CHECKING:
    import requests
    from pydicom import Dataset

T = TypeVar("T")
#: Seconds to wait for a connection, at most (the profile's limit applies to each answer).
CONNECT_TIMEOUT_S = 10.0
#: Images are asked for uncompressed (Explicit VR Little Endian), which every reader here decodes; a server
#: that cannot transcode (406) is then asked for them as stored.
UNCOMPRESSED = (("application/dicom", "1.2.840.10008.1.2.1"),)
STORED = (("application/dicom", "*"),)


def _bearer(token: str) -> Any:
    import requests

    class BearerAuth(requests.auth.AuthBase):
        """``Authorization: Bearer …`` on each request (cloud DICOM stores), kept off ``repr`` and logs."""

        def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
            r.headers["Authorization"] = f"Bearer {token}"
            return r

        def __repr__(self) -> str:
            return "BearerAuth(<hidden>)"

    return BearerAuth()


class PacsClient:
    """QIDO-RS, WADO-RS and STOW-RS against one profile's DICOMweb service."""

    def __init__(self, profile: PacsProfile, secret: str | None = None, *, session: requests.Session | None = None):
        """Open a session (no request is made yet).

        Args:
            profile: where the service is and how to trust it.
            secret: its password or token (``profiles.resolve_secret``); None for a profile without credentials.
            session: a ready ``requests.Session`` (tests); credentials and TLS settings are applied to it.
        """
        import requests
        from dicomweb_client.api import DICOMwebClient

        self.profile = profile
        s = session or requests.Session()
        s.verify = profile.ca_bundle or not profile.insecure
        if profile.auth == "basic" and profile.user:
            s.auth = requests.auth.HTTPBasicAuth(profile.user, secret or "")
        elif profile.auth == "bearer" and secret:
            s.auth = _bearer(secret)
        # Retry once, briefly, what a busy server asks to be retried (429, 503, …), and nothing else: a request
        # that timed out is not sent again (dicomweb-client's own retry repeats any failure, so a hung server
        # with --timeout 5 kept the user 10 s for a message saying 5).
        adapter = _retry_adapter()
        s.mount("http://", adapter)
        s.mount("https://", adapter)
        self.session = s
        timeout = (min(CONNECT_TIMEOUT_S, profile.timeout), profile.timeout)
        try:
            self.web = DICOMwebClient(url=profile.url, session=s, timeout=timeout)
        except ValueError as exc:
            raise PacsError(f"the URL of the PACS {profile.name!r} is not usable: {exc}") from exc
        self._media = UNCOMPRESSED
        self.web.set_http_retry_params(retry=False)

    @classmethod
    def open(cls, name: str | None = None) -> PacsClient:
        """A client for a saved profile (the default one when ``name`` is None), its secret resolved."""
        profile = get_profile(name)
        return cls(profile, resolve_secret(profile))

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> PacsClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- requests ------------------------------------------------------------------------------------------

    def check(self) -> None:
        """Ask for one study: proves the address, the credentials and the DICOMweb root in one request."""
        self._call("checking the connection", self.web.search_for_studies, limit=1, fields=["StudyInstanceUID"])

    def search_studies(self, filters: dict[str, Any], fields: Sequence[str], limit: int | None = None) -> list[dict]:
        return self._search("searching for studies", self.web.search_for_studies, limit,
                            search_filters=dict(filters), fields=list(fields))

    def search_series(self, study_uid: str, filters: dict[str, Any] | None = None,
                      fields: Sequence[str] = ()) -> list[dict]:
        return self._search(f"listing the series of study {study_uid}", self.web.search_for_series, None,
                            study_instance_uid=study_uid, search_filters=dict(filters or {}), fields=list(fields))

    def search_instances(self, study_uid: str, series_uid: str | None = None, filters: dict[str, Any] | None = None,
                         fields: Sequence[str] = (), limit: int | None = None) -> list[dict]:
        what = f"listing the images of series {series_uid}" if series_uid else f"searching study {study_uid}"
        return self._search(what, self.web.search_for_instances, limit, study_instance_uid=study_uid,
                            series_instance_uid=series_uid, search_filters=dict(filters or {}), fields=list(fields))

    def _search(self, what: str, fn: Callable[..., list[dict]], limit: int | None, **kwargs: Any) -> list[dict]:
        """A QIDO search, every page of it (``limit``: the first ``limit`` matches only).

        Servers may cap an answer at their own maximum, so pages continue until one is empty or brings nothing
        new; the second test guards against servers that ignore ``offset`` for some filters (Orthanc 1.10 with
        ``ModalitiesInStudy`` answers every page alike, and a plain offset loop would never end).
        """
        if limit is not None:
            return list(self._call(what, fn, limit=limit, **kwargs))
        out: list[dict] = []
        seen: set[str] = set()
        while True:
            page = self._call(what, fn, offset=len(out) or None, **kwargs)
            new = []
            for item in page:
                key = json.dumps(item, sort_keys=True)
                if key not in seen:
                    seen.add(key)
                    new.append(item)
            if not new:
                return out
            out.extend(new)

    def retrieve_instance(self, study_uid: str, series_uid: str, sop_uid: str) -> Dataset:
        what = f"retrieving image {sop_uid}"
        try:
            return self._call(what, self.web.retrieve_instance, study_instance_uid=study_uid,
                              series_instance_uid=series_uid, sop_instance_uid=sop_uid, media_types=self._media)
        except PacsError as exc:
            if not self._fall_back(exc):
                raise
        return self.retrieve_instance(study_uid, series_uid, sop_uid)

    def iter_series(self, study_uid: str, series_uid: str) -> Iterator[Dataset]:
        """The series' instances as they arrive (one streamed WADO-RS request)."""
        what = f"retrieving series {series_uid}"
        try:
            it = self._call(what, self.web.iter_series, study_instance_uid=study_uid, series_instance_uid=series_uid,
                            media_types=self._media)
            first = self._call(what, next, it)
        except StopIteration:
            return
        except PacsError as exc:
            if not self._fall_back(exc):
                raise
            yield from self.iter_series(study_uid, series_uid)
            return
        yield first
        while True:
            try:
                ds = self._call(what, next, it)
            except StopIteration:
                return
            yield ds

    def _fall_back(self, exc: PacsError) -> bool:
        """After a server refused to transcode (406/415): ask for images as stored from now on."""
        if exc.status in (406, 415) and self._media != STORED:
            self._media = STORED
            return True
        return False

    def store(self, datasets: Sequence[Dataset], study_uid: str | None = None) -> Dataset | None:
        """STOW-RS; returns the server's answer (its ``FailedSOPSequence`` is the caller's to read)."""
        return self._call("storing results", self.web.store_instances, datasets=list(datasets),
                          study_instance_uid=study_uid)

    # -- errors --------------------------------------------------------------------------------------------

    def _call(self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        import requests

        try:
            with warnings.catch_warnings():
                if self.profile.insecure:  # said once by 'pacs add', not on every request
                    warnings.simplefilter("ignore")
                return fn(*args, **kwargs)
        except StopIteration:
            raise
        except requests.RequestException as exc:
            raise self.translate(exc, what) from None
        except (ValueError, KeyError, TypeError, IndexError) as exc:  # an answer dicomweb-client cannot parse
            raise PacsError(f"{self._where} sent an answer that is not valid DICOMweb while {what} "
                            f"({type(exc).__name__}: {str(exc)[:160]})") from None

    @property
    def _where(self) -> str:
        return f"the PACS {self.profile.name!r} at {self.profile.host}"

    def translate(self, exc: BaseException, what: str) -> PacsError:
        """The AnomaLens error for a ``requests`` failure (public: the STOW path and tests use it)."""
        import requests

        p, where = self.profile, self._where
        if isinstance(exc, requests.exceptions.SSLError):
            return PacsError(f"{where}: its TLS certificate could not be verified while {what} ({_reason(exc)}); "
                             f"if the site has its own certificate authority, add the profile again with "
                             f"--ca-bundle FILE")
        if isinstance(exc, requests.exceptions.ConnectTimeout):
            wait = min(CONNECT_TIMEOUT_S, p.timeout)
            return PacsTimeoutError(f"{where} did not accept a connection within {wait:g} s while {what}; check the "
                                    "address and that the server runs")
        if isinstance(exc, requests.exceptions.Timeout) or _read_timed_out(exc):
            return PacsTimeoutError(f"{where} did not answer within {p.timeout:g} s while {what}; it may be busy: "
                                    "try again later, or give it longer with 'anomalens pacs add … --timeout S'")
        if isinstance(exc, requests.exceptions.HTTPError) and exc.response is not None:
            err = self._http_error(exc.response.status_code, exc.response.reason or "", what)
            err.status = exc.response.status_code
            return err
        if isinstance(exc, requests.exceptions.ConnectionError):
            return PacsUnreachableError(f"cannot reach {where} while {what} ({_reason(exc)}); check that the server "
                                        "runs and that the URL is right")
        return PacsUnreachableError(f"the connection to {where} broke while {what} ({_reason(exc)}); what was received "
                                    "is kept: try again")

    def _http_error(self, code: int, reason: str, what: str) -> PacsError:
        p, where = self.profile, self._where
        if code == 401:
            own, _ = p.env_names()
            who = f" for the user {p.user!r}" if p.user else ""
            hint = (f"; check {own} or the keyring entry ('anomalens pacs login {p.name}')" if p.auth != "none"
                    else "; it needs credentials: add it again with --user or --token")
            return PacsAuthError(f"{where} refused the {p.secret_kind}{who} (HTTP 401) while {what}{hint}")
        if code == 403:
            return PacsAuthError(f"{where} does not allow this user to do that (HTTP 403) while {what}; ask its "
                                 "administrator for the right")
        if code == 404:
            return PacsNotFoundError(f"{where} has nothing there (HTTP 404) while {what}: the study or series is "
                                     "not on this PACS, or the URL is not its DICOMweb root")
        return PacsError(f"{where} answered HTTP {code} {reason}".rstrip() + f" while {what}")


#: Answers a busy server gives to say "ask again": retried once after a quarter of a second.
RETRY_STATUSES = (408, 429, 503, 504)


def _retry_adapter() -> Any:
    """A transport that repeats a request once on ``RETRY_STATUSES`` only (never after a timeout or a reset)."""
    from requests.adapters import HTTPAdapter
    from urllib3.util.retry import Retry

    retry = Retry(total=1, connect=0, read=False, other=0, status=1, status_forcelist=RETRY_STATUSES,
                  allowed_methods=None, backoff_factor=0.25, raise_on_status=False, respect_retry_after_header=False)
    return HTTPAdapter(max_retries=retry)


def _read_timed_out(exc: BaseException) -> bool:
    """Whether a ``requests`` failure is a read that timed out mid-answer.

    While a streamed answer (a series' images) is read, ``requests`` reports the timeout as a
    ``ConnectionError`` wrapping urllib3's ``ReadTimeoutError``, not as its own ``Timeout``: a server that
    stopped mid-pull read "cannot reach … (timed out)" where one that hung before answering read "did not
    answer within N s".
    """
    from urllib3.exceptions import ReadTimeoutError

    seen: set[int] = set()
    todo: list[Any] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, ReadTimeoutError | TimeoutError):
            return True
        if isinstance(e, BaseException):
            todo += [*e.args, e.__cause__, e.__context__, getattr(e, "reason", None)]
    return False


def _reason(exc: BaseException) -> str:
    """A few words from a ``requests``/``urllib3`` error chain (their texts repeat the URL and object reprs)."""
    text = str(exc)
    for needle, words in (("Connection refused", "connection refused"), ("Name or service not known", "unknown host"),
                          ("nodename nor servname", "unknown host"), ("getaddrinfo failed", "unknown host"),
                          ("No route to host", "no route to host"), ("Network is unreachable", "network unreachable"),
                          ("CERTIFICATE_VERIFY_FAILED", "certificate verify failed"),
                          ("hostname mismatch", "the certificate is for another host"),
                          ("Connection reset", "connection reset"), ("Connection aborted", "connection aborted"),
                          ("IncompleteRead", "the answer was cut short"), ("timed out", "timed out")):
        if needle in text:
            return words
    return type(exc).__name__
