"""What can go wrong talking to a PACS, each an ``AnomaLensError`` with a one-line message for the user.

They live here rather than in ``engine.errors`` because only PACS code raises them; callers that do not care
which PACS failure it was catch ``PacsError`` (or ``AnomaLensError``, as the CLI does: exit status 2).
"""

from __future__ import annotations

from ..errors import AnomaLensError


class PacsError(AnomaLensError):
    """A PACS could not be used: it answered with an error, or something unexpected.

    ``status`` is the HTTP status when the server answered with one (None: no answer, or not HTTP's fault).
    """

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class PacsUnreachableError(PacsError):
    """Nothing answered at the PACS's address (server down, wrong host or port, no network)."""


class PacsTimeoutError(PacsError):
    """The PACS accepted the connection but did not answer in time."""


class PacsAuthError(PacsError):
    """The PACS refused the credentials (HTTP 401) or the user's rights (HTTP 403)."""


class PacsNotFoundError(PacsError):
    """The study or series is not on the PACS (or not visible to this user)."""


class SeriesChangedError(PacsError):
    """The series on the PACS changed while it was being pulled: what was pulled is kept, pull again."""


class StowRejectedError(PacsError):
    """The PACS refused to store a result object (STOW-RS failure); the result itself is kept locally."""
